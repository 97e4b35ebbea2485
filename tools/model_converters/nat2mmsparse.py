"""Convert an official NAT/DiNAT checkpoint to mmsparse keys.

    python tools/model_converters/nat2mmsparse.py dinat_tiny_in1k_224.pth pretrain/dinat-t_mmsparse.pth

Accepts the ImageNet checkpoints (a flat state dict, or one under ``'model'`` /
``'state_dict'``) and the official mmdet/mmseg NAT/DiNAT checkpoints
(``'state_dict'``, keys under ``backbone.``). Writes ``{'state_dict': {name: tensor}}``,
loadable with ``torch.load(..., weights_only=True)`` and by
``init_cfg=dict(type='Pretrained')``.
A progress bar over the tensors goes to stderr; ``--no-progress`` turns it off.
"""
import os.path as osp
import sys

# the shared command line and progress bar of this folder, also when a test imports the file by path
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _converter import key_mapping_converter  # noqa: E402

from mmsparse.models.utils import nat_official_to_mmsparse  # noqa: E402

convert, main = key_mapping_converter(nat_official_to_mmsparse, __doc__, 'official NAT or DiNAT checkpoint')

if __name__ == '__main__':
    main()
