"""Convert an official BiFormer checkpoint to mmsparse keys.

    python tools/model_converters/biformer2mmsparse.py biformer_small_in1k.pth pretrain/biformer-s.pth

Accepts the ImageNet checkpoints (weights under ``'model'``) and the official
mmdet/mmseg ``BiFormer_mm`` checkpoints (``'state_dict'``, keys under
``backbone.``). Writes ``{'state_dict': {name: tensor}}``, loadable with
``torch.load(..., weights_only=True)`` and by ``init_cfg=dict(type='Pretrained')``.
Checkpoints made with any LePE kernel size are accepted; the one found (the
official ``side_dwconv``, 5 in every released model) is printed, and the
backbone must be built with the same ``side_dwconv`` to load the result.
A progress bar over the tensors goes to stderr; ``--no-progress`` turns it off.
"""
import os.path as osp
import sys

# the shared command line and progress bar of this folder, also when a test imports the file by path
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _converter import key_mapping_converter  # noqa: E402

from mmsparse.models.utils import biformer_official_to_mmsparse  # noqa: E402
from mmsparse.models.utils.ckpt_convert import biformer_side_dwconv  # noqa: E402


def convert_and_report_side_dwconv(state_dict):
    """:func:`biformer_official_to_mmsparse`, printing the ``side_dwconv`` of the weights."""
    converted = biformer_official_to_mmsparse(state_dict)
    side_dwconv = biformer_side_dwconv(converted)
    if side_dwconv is None:
        print('no LePE weight (stages.i.j.attn.lepe.weight) found: side_dwconv unknown')
    else:
        print(f'LePE kernels are {side_dwconv}x{side_dwconv}: build mmsparse.BiFormer with '
              f'side_dwconv={side_dwconv}')
    return converted


convert, main = key_mapping_converter(convert_and_report_side_dwconv, __doc__, 'official BiFormer checkpoint')

if __name__ == '__main__':
    main()
