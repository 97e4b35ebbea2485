"""Convert an official HAT-Net checkpoint to mmsparse keys.

    python tools/model_converters/hatnet2mmsparse.py HAT-Net_Small.pth pretrain/hat-net-s.pth

Accepts the ImageNet checkpoints of ``yun-liu/HAT-Net`` (a raw state dict, or one
under ``'model'`` / ``'state_dict'``, with or without a ``module.`` prefix) and
mmdet/mmseg checkpoints whose backbone keys are under ``backbone.``. Drops the
classifier and the unused ``attn.proj_norm`` tensors; writes
``{'state_dict': {name: tensor}}``, loadable with ``torch.load(..., weights_only=True)``
and by ``init_cfg=dict(type='Pretrained')``.
"""
import argparse

from mmsparse.models.utils import convert_checkpoint_file, hatnet_official_to_mmsparse


def convert(src, dst):
    convert_checkpoint_file(src, dst, hatnet_official_to_mmsparse)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official HAT-Net checkpoint')
    parser.add_argument('dst', help='output path')
    args = parser.parse_args()
    convert(args.src, args.dst)


if __name__ == '__main__':
    main()
