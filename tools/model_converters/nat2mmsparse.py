"""Convert an official NAT/DiNAT checkpoint to mmsparse keys.

    python tools/model_converters/nat2mmsparse.py dinat_tiny_in1k_224.pth pretrain/dinat-t_mmsparse.pth

Accepts the ImageNet checkpoints (a flat state dict, or one under ``'model'`` /
``'state_dict'``) and the official mmdet/mmseg NAT/DiNAT checkpoints
(``'state_dict'``, keys under ``backbone.``). Writes ``{'state_dict': {name: tensor}}``,
loadable with ``torch.load(..., weights_only=True)`` and by
``init_cfg=dict(type='Pretrained')``.
"""
import argparse

from mmsparse.models.utils import convert_checkpoint_file, nat_official_to_mmsparse


def convert(src, dst):
    convert_checkpoint_file(src, dst, nat_official_to_mmsparse)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official NAT or DiNAT checkpoint')
    parser.add_argument('dst', help='output path')
    args = parser.parse_args()
    convert(args.src, args.dst)


if __name__ == '__main__':
    main()
