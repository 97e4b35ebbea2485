"""Convert an official HAT-Net checkpoint to mmsparse keys.

    python tools/model_converters/hatnet2mmsparse.py HAT-Net_Small.pth pretrain/hat-net-s.pth

Accepts the ImageNet checkpoints of ``yun-liu/HAT-Net`` (a raw state dict, or one
under ``'model'`` / ``'state_dict'``, with or without a ``module.`` prefix) and
mmdet/mmseg checkpoints whose backbone keys are under ``backbone.``. Drops the
classifier and the unused ``attn.proj_norm`` tensors; writes
``{'state_dict': {name: tensor}}``, loadable with ``torch.load(..., weights_only=True)``
and by ``init_cfg=dict(type='Pretrained')``.
A progress bar over the tensors goes to stderr; ``--no-progress`` turns it off.
"""
import os.path as osp
import sys

# the shared command line and progress bar of this folder, also when a test imports the file by path
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _converter import key_mapping_converter  # noqa: E402

from mmsparse.models.utils import hatnet_official_to_mmsparse  # noqa: E402

convert, main = key_mapping_converter(hatnet_official_to_mmsparse, __doc__, 'official HAT-Net checkpoint')

if __name__ == '__main__':
    main()
