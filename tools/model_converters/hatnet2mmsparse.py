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
import argparse
import os.path as osp
import sys

# the shared progress bar of this folder, also when a test imports the file by path
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _progress import add_progress_argument, with_progress  # noqa: E402

from mmsparse.models.utils import convert_checkpoint_file, hatnet_official_to_mmsparse


def convert(src, dst, progress=True):
    """Convert checkpoint ``src`` and write the result to ``dst``.

    Args:
        src (str): The official checkpoint.
        dst (str): The output path; its folder is created.
        progress (bool): Show a progress bar over the tensors on stderr. Defaults to True.
    """
    convert_checkpoint_file(src, dst, with_progress(hatnet_official_to_mmsparse, progress))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official HAT-Net checkpoint')
    parser.add_argument('dst', help='output path')
    add_progress_argument(parser)
    args = parser.parse_args()
    convert(args.src, args.dst, args.progress)


if __name__ == '__main__':
    main()
