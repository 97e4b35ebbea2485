"""Official-key to mmsparse-key maps, one function per family, and the file converter."""
import math
import os
import os.path as osp
import re
from collections import OrderedDict

import torch

from mmsparse.utils import load_state_dict_from_checkpoint
from ..layers import resize_pos_embed

# (pattern, replacement) applied in order to every official BiFormer key.
_BIFORMER_RENAMES = (
    (r'^(stages\.\d+\.\d+)\.pos_embed\.', r'\1.cpe.'),
    (r'^(stages\.\d+\.\d+\.attn)\.qkv\.qkv\.', r'\1.qkv.'),
    (r'^(stages\.\d+\.\d+\.attn)\.wo\.', r'\1.proj.'),
    (r'^(stages\.\d+\.\d+\.mlp)\.0\.', r'\1.fc1.'),
    (r'^(stages\.\d+\.\d+\.mlp)\.3\.', r'\1.fc2.'),
    (r'^extra_norms\.(\d+)\.', r'norm\1.'),
)
# The ImageNet classifier (final BatchNorm2d + Linear) has no place in a backbone.
_BIFORMER_CLASSIFIER = re.compile(r'^(norm|head)\.')


def is_official_biformer(state_dict):
    """True if ``state_dict`` uses the official BiFormer key names."""
    official = re.compile(r'^(extra_norms\.|head\.|norm\.)|\.(pos_embed|attn\.qkv\.qkv|attn\.wo|mlp\.[03])\.')
    return any(official.search(key) for key in state_dict)


def biformer_official_to_mmsparse(state_dict):
    """Map an official BiFormer state dict (classifier or ``BiFormer_mm``) to mmsparse keys.

    Drops the classifier's ``norm.*`` and ``head.*``; renames ``pos_embed`` ->
    ``cpe``, ``attn.qkv.qkv`` -> ``attn.qkv``, ``attn.wo`` -> ``attn.proj``,
    ``mlp.0/3`` -> ``mlp.fc1/fc2`` and ``extra_norms.i`` -> ``norm{i}``. Every
    other key (stem, downsampling, LayerNorms, LePE, stage-4 MHSA) is kept.
    """
    converted = OrderedDict()
    for key, value in state_dict.items():
        if _BIFORMER_CLASSIFIER.match(key):
            continue
        for pattern, replacement in _BIFORMER_RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = value
    return converted


# The depthwise LePE convs, named alike in the official and the mmsparse layout.
_BIFORMER_LEPE = re.compile(r'^stages\.\d+\.\d+\.attn\.lepe\.weight$')


def biformer_side_dwconv(state_dict):
    """The LePE kernel size (official ``side_dwconv``) a BiFormer state dict was made with.

    Read from the (C, 1, k, k) ``stages.i.j.attn.lepe.weight`` tensors, which keep
    their names in :func:`biformer_official_to_mmsparse`, so official and mmsparse
    state dicts both work.

    Args:
        state_dict (dict): BiFormer weights, without any ``backbone.`` prefix.

    Returns:
        int | None: ``k``, or None when ``state_dict`` holds no LePE weight.

    Raises:
        ValueError: if the LePE kernels are not square or not all of one size.
    """
    keys_by_size = {}
    for key, value in state_dict.items():
        if _BIFORMER_LEPE.match(key):
            keys_by_size.setdefault(tuple(value.shape[-2:]), []).append(key)
    if not keys_by_size:
        return None
    (height, width), *others = keys_by_size
    if others or height != width:
        found = '; '.join(f'{h}x{w} in {keys[0]}' + (f' and {len(keys) - 1} more' if len(keys) > 1 else '')
                          for (h, w), keys in keys_by_size.items())
        raise ValueError(f'the LePE kernels of this BiFormer checkpoint must be square and of one size '
                         f'(side_dwconv); found {found}')
    return height


# HAT-Net keys are kept verbatim; the ImageNet classifier and the never-used
# ``attn.proj_norm`` (dead parameters of the official Attention) are dropped.
_HATNET_DROPPED = re.compile(r'^classifier\.|\.attn\.proj_norm\.')


def is_official_hatnet(state_dict):
    """True if ``state_dict`` holds keys that only an official HAT-Net checkpoint has."""
    return any(_HATNET_DROPPED.search(key) for key in state_dict)


def hatnet_official_to_mmsparse(state_dict):
    """Map an official HAT-Net state dict (``yun-liu/HAT-Net``) to mmsparse keys.

    Drops ``classifier.*`` and every ``blocks.s.i.attn.proj_norm.*``; all other
    keys (``patch_embed``, ``blocks``, ``ds2/3/4``) are the mmsparse names already.
    """
    return OrderedDict((k, v) for k, v in state_dict.items() if not _HATNET_DROPPED.search(k))


# Official NAT/DiNAT (classifier or dense wrapper) -> mmsparse.NAT. The stem and the
# downsamplers become ``downsample_layers.0..3`` (stem first, level i's downsampler
# feeds stage i+1), ``levels.i.blocks.j`` become ``stages.i.j``.
_NAT_LEVEL_DOWNSAMPLE = re.compile(r'^levels\.(\d+)\.downsample\.(reduction|norm)\.')


def is_official_nat(state_dict):
    """True if ``state_dict`` uses the official NAT/DiNAT key names."""
    return any(re.match(r'(patch_embed|levels)\.', key) for key in state_dict)


def nat_official_to_mmsparse(state_dict):
    """Map an official NAT/DiNAT state dict (ImageNet classifier or dense wrapper) to mmsparse keys.

    ``patch_embed.{proj,norm}`` -> ``downsample_layers.0.{proj,norm}``,
    ``levels.i.downsample.{reduction,norm}`` -> ``downsample_layers.{i+1}.{proj,norm}``,
    ``levels.i.blocks.j`` -> ``stages.i.j``; block internals (``norm1``, ``attn.qkv``
    fused q/k/v rows, ``attn.rpb`` (heads, 2k-1, 2k-1), ``attn.proj``, ``norm2``,
    ``mlp.fc1/fc2``, ``gamma1/2``) and the dense output norms ``norm0..3`` keep their
    names. The classifier's ``norm.*`` and ``head.*`` are dropped.
    """
    converted = OrderedDict()
    for key, value in state_dict.items():
        if _BIFORMER_CLASSIFIER.match(key):  # the same classifier keys as BiFormer's
            continue
        key = re.sub(r'^patch_embed\.', 'downsample_layers.0.', key)
        key = _NAT_LEVEL_DOWNSAMPLE.sub(
            lambda m: f"downsample_layers.{int(m.group(1)) + 1}."
            f"{'proj' if m.group(2) == 'reduction' else 'norm'}.", key)
        key = re.sub(r'^levels\.(\d+)\.blocks\.(\d+)\.', r'stages.\1.\2.', key)
        converted[key] = value
    return converted


# timm / DeiT / official Fibottention ViT -> mmsparse.FibottentionViT. The backbone keeps the
# timm names (the official model is timm 0.9.7's ViT); only the classifier goes, and
# ``pos_embed`` is resized to the backbone's patch grid.
_VIT_CLASSIFIER = re.compile(r'^(head|head_dist|fc_norm|pre_logits)\.|^dist_token$')


def vit_official_to_mmsparse(state_dict, pos_grid=None):
    """Map a timm, DeiT or official Fibottention ViT state dict to mmsparse keys.

    Drops ``head.*``, ``head_dist.*``, ``fc_norm.*``, ``pre_logits.*`` and DeiT's
    ``dist_token`` (and its ``pos_embed`` slot). Idempotent on mmsparse state dicts.

    Args:
        state_dict (dict): official weights; ``pos_embed`` is (1, 1 + s*s, C) on a
            square grid unless it already has ``1 + gh*gw`` entries.
        pos_grid (tuple[int, int], optional): resize ``pos_embed`` bicubically to
            this (gh, gw) patch grid, the CLS entry kept apart.
    """
    converted = OrderedDict((k, v) for k, v in state_dict.items() if not _VIT_CLASSIFIER.match(k))
    pos = converted.get('pos_embed')
    if pos is None:
        return converted
    if 'dist_token' in state_dict:
        pos = torch.cat([pos[:, :1], pos[:, 2:]], dim=1)
    if pos_grid is not None and pos.shape[1] != 1 + pos_grid[0] * pos_grid[1]:
        side = math.isqrt(pos.shape[1] - 1)
        if side * side != pos.shape[1] - 1:
            raise ValueError(f'pos_embed.shape={tuple(pos.shape)} is not a square grid plus CLS; '
                             f'cannot resize it to pos_grid={tuple(pos_grid)}')
        pos = resize_pos_embed(pos, (side, side), pos_grid)
    converted['pos_embed'] = pos
    return converted


def convert_checkpoint_file(src, dst, convert, prefix='backbone.'):
    """Convert the weights of checkpoint ``src`` with ``convert`` and write them to ``dst``.

    ``src`` may be any checkpoint layout (``state_dict``/``model``/``module`` entry or a
    bare dict); when it is a full mmdet/mmseg model, only the keys under ``prefix`` are
    taken, without it. ``dst`` holds ``{'state_dict': {name: tensor}}``, loadable with
    ``torch.load(..., weights_only=True)`` and by ``init_cfg=dict(type='Pretrained')``.

    Returns:
        tuple[int, int]: the number of tensors read and written.
    """
    state_dict = load_state_dict_from_checkpoint(src)
    if prefix and any(k.startswith(prefix) for k in state_dict):
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    converted = convert(state_dict)
    if osp.dirname(dst):
        os.makedirs(osp.dirname(dst), exist_ok=True)
    torch.save({'state_dict': dict(converted)}, dst)
    print(f'converted {len(converted)} of {len(state_dict)} tensors '
          f'({len(state_dict) - len(converted)} dropped) -> {dst}')
    return len(state_dict), len(converted)
