"""One hierarchical backbone for every registered token mixer: the attention is the only variable."""
import torch.utils.checkpoint as cp
from torch import nn

from mmsparse.registry import MODELS
from ..attentions import build_token_mixer, token_mixer_types
from ..layers import (DropPath, LayerNorm2d, Mlp, apply_layer_scale, conv_downsample, conv_stem, drop_path_rates,
                      layer_scale_pair)
from .base import SparseBackbone


class SparseTransformerBlock(nn.Module):
    """Pre-norm block: depthwise-conv position encoding, token mixer, MLP, each residual.

    ``x + cpe(x)``, then ``x + DropPath(gamma1 * attn(norm1(x)))`` and
    ``x + DropPath(gamma2 * mlp(norm2(x)))`` on channels-last maps; the layer
    scales ``gamma1/gamma2`` exist only with ``layer_scale_init_value``.

    Args:
        embed_dims (int): channels C.
        attn (TokenMixer): the token mixer, (N, H, W, C) -> (N, H, W, C).
        mlp_ratio (float): MLP hidden width over C.
        drop_path (float): stochastic-depth rate of both branches.
        layer_scale_init_value (float, optional): initial value of the layer
            scales; None for none.
        with_cp (bool): activation checkpointing.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """

    def __init__(self, embed_dims, attn, mlp_ratio, drop_path, layer_scale_init_value, with_cp):
        super().__init__()
        self.with_cp = with_cp
        self.cpe = nn.Conv2d(embed_dims, embed_dims, 3, padding=1, groups=embed_dims)
        self.norm1 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.attn = attn
        self.norm2 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.mlp = Mlp(embed_dims, int(mlp_ratio * embed_dims))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.gamma1, self.gamma2 = layer_scale_pair(embed_dims, layer_scale_init_value)

    def _forward(self, x):
        x = (x + self.cpe(x)).permute(0, 2, 3, 1)
        y = self.attn(self.norm1(x))
        x = x + self.drop_path(apply_layer_scale(self.gamma1, y))
        y = self.mlp(self.norm2(x))
        x = x + self.drop_path(apply_layer_scale(self.gamma2, y))
        return x.permute(0, 3, 1, 2)

    def forward(self, x):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


@MODELS.register_module()
class SparseTransformer(SparseBackbone):
    """A hierarchical vision transformer whose token mixer is any registered attention.

    The common ground of BiFormer, NAT and HAT-Net with the attention as the only
    variable, for matched ablations: a conv stem to stride 4 and stride-2 conv
    downsampling (conv + norm, as BiFormer), four stages of pre-norm blocks
    (depthwise 3x3 position encoding, token mixer, MLP, drop path, optional layer
    scale, see :class:`SparseTransformerBlock`) and a LayerNorm2d per output map.
    The mixer of each stage is built from ``attn_cfg`` with the stage width as
    ``embed_dims`` and the stage heads as ``num_heads`` (unless the config sets
    them), ``backend`` where the mixer takes one and, for Fibottention, the global
    block index as ``layer_id`` (the per-layer head shuffle), and to mixers that take
    it the block's index in its stage as ``block_index`` (window attention's
    ``shift='alternate'``). Maps a mixer cannot
    take are padded by the mixer, as its family does (BRA to a multiple of
    ``n_win``, NA up to ``kernel_size * dilation``, window attention to a multiple
    of ``window_size``); a mixer that refuses (BRA with ``auto_pad=False``) raises
    with the stage and the map size.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'`` or a dict with ``embed_dims``
            (4 ints), ``depths`` (4 ints), ``mlp_ratio`` (float) and one of
            ``num_heads`` (4 ints) or ``head_dim`` (int). Defaults to ``'tiny'``.
        attn_cfg (dict | Sequence[dict]): the token mixer, ``dict(type='mmsparse.X',
            **args)`` for all stages or a list of four, one per stage; the types are
            the registered token mixers (:func:`~mmsparse.models.attentions.
            token_mixer_types`). Defaults to
            ``dict(type='mmsparse.NeighborhoodAttention2d', kernel_size=7)``.
        in_channels (int): image channels. Defaults to 3.
        out_indices (Sequence[int]): stages whose maps are returned.
            Defaults to ``(0, 1, 2, 3)``.
        frozen_stages (int): as in mmdet's ResNet and SwinTransformer: -1 freezes
            nothing, 0 the stem (``downsample_layers[0]``) only, ``k >= 1`` the stem
            and stages ``0..k-1`` (their downsampling layer, blocks and output
            norm); 4 freezes everything. Defaults to -1.
        norm_eval (bool): keep BatchNorm layers (stem, downsampling) in eval mode
            while training. Defaults to False.
        norm_cfg (dict): norm of the stem and downsampling convs.
            Defaults to ``dict(type='BN')``.
        with_cp (bool): activation checkpointing per block. Defaults to False.
        drop_path_rate (float): stochastic depth, linear over blocks. Defaults to 0.
        layer_scale_init_value (float, optional): initial layer scale of both
            residual branches; None for no layer scale. Defaults to None.
        backend (str, optional): op backend passed to every mixer that takes one,
            see :mod:`mmsparse.ops._dispatch`. Defaults to None.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH)``
            loads an mmsparse checkpoint. Defaults to None.

    Shape:
        (N, in_channels, H, W) -> tuple of (N, embed_dims[i], H_i, W_i) for i in
        ``out_indices``, with ``H_0 = ceil(ceil(H / 2) / 2)`` and
        ``H_{i+1} = ceil(H_i / 2)`` (likewise W).
    """

    arch_zoo = {
        'tiny': dict(embed_dims=(64, 128, 256, 512), depths=(2, 2, 8, 2), head_dim=32, mlp_ratio=3.),
        'small': dict(embed_dims=(64, 128, 256, 512), depths=(4, 4, 18, 4), head_dim=32, mlp_ratio=3.),
    }
    arch_keys = ('embed_dims', 'depths', 'mlp_ratio')
    # A custom arch has exactly one of these on top of ``arch_keys``.
    head_keys = ('num_heads', 'head_dim')
    per_stage_arch_keys = ('embed_dims', 'depths')
    num_stages = 4

    def __init__(self,
                 arch='tiny',
                 attn_cfg=dict(type='mmsparse.NeighborhoodAttention2d', kernel_size=7),
                 in_channels=3,
                 out_indices=(0, 1, 2, 3),
                 frozen_stages=-1,
                 norm_eval=False,
                 norm_cfg=dict(type='BN'),
                 with_cp=False,
                 drop_path_rate=0.,
                 layer_scale_init_value=None,
                 backend=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        self.embed_dims = tuple(arch['embed_dims'])
        self.depths = tuple(arch['depths'])
        self.num_heads = self._stage_heads(arch)
        attn_cfgs = self._parse_attn_cfg(attn_cfg)
        self._set_output_and_freeze_options(out_indices, frozen_stages, norm_eval, self.num_stages)

        dims = self.embed_dims
        self.downsample_layers = nn.ModuleList(
            [conv_stem(in_channels, dims[0], norm_cfg)] +
            [conv_downsample(dims[i - 1], dims[i], norm_cfg) for i in range(1, self.num_stages)])
        rates = drop_path_rates(drop_path_rate, self.depths)
        self.stages = nn.ModuleList()
        layer_id = 0
        for i in range(self.num_stages):
            blocks = []
            for b in range(self.depths[i]):
                where, cfg = attn_cfgs[i]
                attn = build_token_mixer(cfg, dims[i], self.num_heads[i], where=where, backend=backend,
                                         layer_id=layer_id, block_index=b)
                blocks.append(SparseTransformerBlock(dims[i], attn, arch['mlp_ratio'], rates[i][b],
                                                     layer_scale_init_value, with_cp))
                layer_id += 1
            self.stages.append(nn.Sequential(*blocks))
        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(dims[i]))
        self._freeze_stages()

    def _parse_arch(self, arch):
        if not isinstance(arch, dict):
            return super()._parse_arch(arch)
        heads = [k for k in self.head_keys if k in arch]
        if len(heads) != 1 or set(arch) - set(heads) != set(self.arch_keys):
            raise ValueError(f'arch={arch} must have exactly the keys {sorted(self.arch_keys)} and one of '
                             f'{self.head_keys}')
        super()._parse_arch({k: v for k, v in arch.items() if k not in self.head_keys})
        return arch

    def _stage_heads(self, arch):
        """Heads per stage, from ``num_heads`` (4 ints) or ``head_dim`` (one int)."""
        widths = arch['embed_dims']
        if 'num_heads' in arch:
            heads = arch['num_heads']
            if not isinstance(heads, (list, tuple)) or len(heads) != self.num_stages:
                raise ValueError(f"arch['num_heads']={heads!r} must have {self.num_stages} entries")
            self._check_heads_fit("arch['num_heads']", tuple(heads), widths)
            return tuple(heads)
        self._check_heads_fit("arch['head_dim']", arch['head_dim'], widths)
        return tuple(w // arch['head_dim'] for w in widths)

    def _parse_attn_cfg(self, attn_cfg):
        """``attn_cfg`` as ``(key, config)`` per stage; the key (``'attn_cfg[2]'``) is named in errors."""
        if isinstance(attn_cfg, dict):
            return [('attn_cfg', attn_cfg)] * self.num_stages
        if not isinstance(attn_cfg, (list, tuple)) or len(attn_cfg) != self.num_stages:
            raise ValueError(f'attn_cfg={attn_cfg!r} must be one dict or a list of {self.num_stages} dicts '
                             f'(one per stage), each with a type in {token_mixer_types()}')
        return [(f'attn_cfg[{i}]', cfg) for i, cfg in enumerate(attn_cfg)]

    def forward(self, x):
        outs = []
        for i in range(self.num_stages):
            x = self.downsample_layers[i](x)
            try:
                x = self.stages[i](x)
            except ValueError as error:
                raise ValueError(f'{type(self).__name__} stage {i} ({x.shape[-2]}x{x.shape[-1]} map, '
                                 f'{self.stages[i][0].attn.extra_repr()}): {error}') from error
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x).contiguous())
        return tuple(outs)
