"""Convert an official NAT/DiNAT checkpoint to mmsparse keys.

    python tools/model_converters/nat2mmsparse.py dinat_tiny_in1k_224.pth pretrain/dinat-t_mmsparse.pth

Accepts the ImageNet checkpoints (a flat state dict, or one under ``'model'`` /
``'state_dict'``) and the official mmdet/mmseg NAT/DiNAT checkpoints
(``'state_dict'``, keys under ``backbone.``). Writes ``{'state_dict': {name: tensor}}``,
loadable with ``torch.load(..., weights_only=True)`` and by
``init_cfg=dict(type='Pretrained')``.
"""
import argparse
import os
import os.path as osp

import torch

from mmsparse.models.utils import nat_official_to_mmsparse
from mmsparse.utils import load_state_dict_from_checkpoint


def convert(src, dst):
    state_dict = load_state_dict_from_checkpoint(src)
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items() if k.startswith('backbone.')}
    converted = nat_official_to_mmsparse(state_dict)
    if osp.dirname(dst):
        os.makedirs(osp.dirname(dst), exist_ok=True)
    torch.save({'state_dict': converted}, dst)
    dropped = len(state_dict) - len(converted)
    print(f'converted {len(converted)} tensors ({dropped} classifier tensors dropped) -> {dst}')


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='official NAT or DiNAT checkpoint')
    parser.add_argument('dst', help='output path')
    args = parser.parse_args()
    convert(args.src, args.dst)


if __name__ == '__main__':
    main()
