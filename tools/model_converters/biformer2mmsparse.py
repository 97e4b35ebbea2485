"""Convert an official BiFormer checkpoint to mmsparse keys.

    python tools/model_converters/biformer2mmsparse.py biformer_small_in1k.pth pretrain/biformer-s.pth

Accepts the ImageNet checkpoints (weights under ``'model'``) and the official
mmdet/mmseg ``BiFormer_mm`` checkpoints (``'state_dict'``, keys under
``backbone.``). Writes ``{'state_dict': {name: tensor}}``, loadable with
``torch.load(..., weights_only=True)`` and by ``init_cfg=dict(type='Pretrained')``.
"""
import argparse

from mmsparse.models.utils import convert_checkpoint_file, biformer_official_to_mmsparse


def convert(src, dst):
    convert_checkpoint_file(src, dst, biformer_official_to_mmsparse)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official BiFormer checkpoint')
    parser.add_argument('dst', help='output path')
    args = parser.parse_args()
    convert(args.src, args.dst)


if __name__ == '__main__':
    main()
