"""Convert an official NAT/DiNAT checkpoint to mmsparse keys.

    python tools/model_converters/nat2mmsparse.py dinat_tiny_in1k_224.pth pretrain/dinat-t_mmsparse.pth

Accepts the ImageNet checkpoints (a flat state dict, or one under ``'model'`` /
``'state_dict'``) and the official mmdet/mmseg NAT/DiNAT checkpoints
(``'state_dict'``, keys under ``backbone.``). Writes ``{'state_dict': {name: tensor}}``,
loadable with ``torch.load(..., weights_only=True)`` and by
``init_cfg=dict(type='Pretrained')``.
A progress bar over the tensors goes to stderr; ``--no-progress`` turns it off.
"""
import argparse
import os.path as osp
import sys

# the shared progress bar of this folder, also when a test imports the file by path
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from _progress import add_progress_argument, with_progress  # noqa: E402

from mmsparse.models.utils import convert_checkpoint_file, nat_official_to_mmsparse


def convert(src, dst, progress=True):
    """Convert checkpoint ``src`` and write the result to ``dst``.

    Args:
        src (str): The official checkpoint.
        dst (str): The output path; its folder is created.
        progress (bool): Show a progress bar over the tensors on stderr. Defaults to True.
    """
    convert_checkpoint_file(src, dst, with_progress(nat_official_to_mmsparse, progress))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official NAT or DiNAT checkpoint')
    parser.add_argument('dst', help='output path')
    add_progress_argument(parser)
    args = parser.parse_args()
    convert(args.src, args.dst, args.progress)


if __name__ == '__main__':
    main()
