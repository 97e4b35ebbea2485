import torch.utils.checkpoint as cp
from torch import nn

from mmsparse.registry import MODELS
from ..attentions import NeighborhoodAttention2d
from ..layers import DropPath, Mlp, apply_layer_scale, drop_path_rates, layer_scale_pair
from ..utils import is_official_nat, nat_official_to_mmsparse
from .base import SparseBackbone


class ConvEmbed(nn.Module):
    """Strided convs (no activation between them) then a channels-last LayerNorm.

    NAT's ``ConvTokenizer`` (two 3x3 stride-2 convs with bias) and
    ``ConvDownsampler`` (one 3x3 stride-2 conv without bias) share this shape.

    Args:
        proj (nn.Module): the conv(s), NCHW in and out.
        out_channels (int): channels of the LayerNorm.

    Shape:
        (N, H, W, C_in) -> (N, H', W', out_channels), ``H' = ceil(H / stride)``.
    """

    def __init__(self, proj, out_channels):
        super().__init__()
        self.proj = proj
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x):
        return self.norm(self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))


class NATBlock(nn.Module):
    """Pre-norm NAT layer: neighborhood attention and MLP, each residual, optional layer scale.

    Shape:
        (N, H, W, C) -> (N, H, W, C)
    """

    def __init__(self, embed_dims, num_heads, kernel_size, dilation, mlp_ratio, drop_path, layer_scale,
                 with_cp, backend):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(embed_dims)
        self.attn = NeighborhoodAttention2d(embed_dims, num_heads, kernel_size, dilation, backend=backend)
        self.norm2 = nn.LayerNorm(embed_dims)
        self.mlp = Mlp(embed_dims, int(mlp_ratio * embed_dims))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.gamma1, self.gamma2 = layer_scale_pair(embed_dims, layer_scale)

    def _forward(self, x):
        y = self.attn(self.norm1(x))
        x = x + self.drop_path(apply_layer_scale(self.gamma1, y))
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(apply_layer_scale(self.gamma2, y))

    def forward(self, x):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


@MODELS.register_module()
class NAT(SparseBackbone):
    """Neighborhood Attention Transformer (NAT) and Dilated NAT (DiNAT) backbone.

    Hassani et al., "Neighborhood Attention Transformer", CVPR 2023,
    https://arxiv.org/abs/2204.07143, and Hassani & Shi, "Dilated Neighborhood
    Attention Transformer", https://arxiv.org/abs/2209.15001. DiNAT is this backbone
    with per-layer ``dilations``. Layout and numerics follow the official dense
    wrapper: a two-conv stem (stride 4), four stages of NAT layers on channels-last
    maps, stride-2 conv downsampling between stages, and a LayerNorm per output map
    (the un-normalised map feeds the next stage). Any input size works: the stride-2
    convs round up, and an attention layer whose map is smaller than
    ``kernel_size * dilation`` pads it (see :class:`NeighborhoodAttention2d`), as
    NATTEN 0.14 did for the released checkpoints.

    Args:
        arch (str | dict): ``'mini'``, ``'tiny'``, ``'small'``, ``'base'``,
            ``'large'`` or a dict with keys ``embed_dims`` (int, stage-1 width C;
            stage i has ``C * 2**i``), ``depths`` (4 ints), ``num_heads`` (4 ints)
            and ``mlp_ratio`` (float).
        in_channels (int): image channels.
        kernel_size (int): odd neighbourhood size of every layer (7 in all
            official models but DiNAT-L 11x11).
        dilations (Sequence[Sequence[int]], optional): per stage, one dilation per
            layer (DiNAT); None means 1 everywhere (NAT).
        layer_scale (float, optional): init value of the per-channel residual
            scales ``gamma1/gamma2``; None (default) means none (NAT-M/T, DiNAT-M/T/S/L).
        out_indices (Sequence[int]): stages whose maps are returned.
        frozen_stages (int): as in mmdet's ResNet and SwinTransformer: -1 freezes
            nothing, 0 the stem (``downsample_layers[0]``) only, ``k >= 1`` the stem
            and stages ``0..k-1`` (their downsampling layer, blocks and output
            norm); 4 freezes everything.
        norm_eval (bool): keep BatchNorm layers in eval mode while training (NAT
            itself has only LayerNorms; kept for a uniform backbone interface).
        with_cp (bool): activation checkpointing per block.
        drop_path_rate (float): stochastic depth, linear over blocks.
        backend (str, optional): op backend of every neighborhood attention, see
            :mod:`mmsparse.ops._dispatch`.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH)``
            loads an official ImageNet/dense checkpoint or an mmsparse one; add
            ``strict=False`` to tolerate mismatched keys (they are still logged).

    Shape:
        (N, in_channels, H, W) -> tuple of (N, C * 2**i, H_i, W_i) for i in
        ``out_indices``, with ``H_0 = ceil(ceil(H / 2) / 2)`` and
        ``H_{i+1} = ceil(H_i / 2)`` (likewise W).
    """

    arch_zoo = {
        'mini': dict(embed_dims=64, depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.),
        'tiny': dict(embed_dims=64, depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), mlp_ratio=3.),
        'small': dict(embed_dims=96, depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), mlp_ratio=2.),
        'base': dict(embed_dims=128, depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), mlp_ratio=2.),
        'large': dict(embed_dims=192, depths=(3, 4, 18, 5), num_heads=(6, 12, 24, 48), mlp_ratio=2.),
    }
    arch_keys = ('embed_dims', 'depths', 'num_heads', 'mlp_ratio')
    per_stage_arch_keys = ('depths', 'num_heads')
    num_stages = 4

    def __init__(self,
                 arch='tiny',
                 in_channels=3,
                 kernel_size=7,
                 dilations=None,
                 layer_scale=None,
                 out_indices=(0, 1, 2, 3),
                 frozen_stages=-1,
                 norm_eval=False,
                 with_cp=False,
                 drop_path_rate=0.2,
                 backend=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        self.depths = tuple(arch['depths'])
        self.embed_dims = tuple(arch['embed_dims'] * 2**i for i in range(self.num_stages))
        self.dilations = self._parse_dilations(dilations)
        self._set_output_and_freeze_options(out_indices, frozen_stages, norm_eval, self.num_stages)

        dims = self.embed_dims
        stem = nn.Sequential(
            nn.Conv2d(in_channels, dims[0] // 2, 3, stride=2, padding=1),
            nn.Conv2d(dims[0] // 2, dims[0], 3, stride=2, padding=1))
        self.downsample_layers = nn.ModuleList([ConvEmbed(stem, dims[0])])
        for i in range(1, self.num_stages):
            conv = nn.Conv2d(dims[i - 1], dims[i], 3, stride=2, padding=1, bias=False)
            self.downsample_layers.append(ConvEmbed(conv, dims[i]))

        rates = drop_path_rates(drop_path_rate, self.depths)
        self.stages = nn.ModuleList()
        for i in range(self.num_stages):
            self.stages.append(
                nn.Sequential(*[
                    NATBlock(dims[i], arch['num_heads'][i], kernel_size, self.dilations[i][b],
                             arch['mlp_ratio'], rates[i][b], layer_scale, with_cp, backend)
                    for b in range(self.depths[i])
                ]))
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(dims[i]))

        self._freeze_stages()

    def _parse_arch(self, arch):
        arch = super()._parse_arch(arch)
        widths = [arch['embed_dims'] * 2**i for i in range(self.num_stages)]
        self._check_heads_fit("arch['num_heads']", arch['num_heads'], widths)
        return arch

    def _parse_dilations(self, dilations):
        if dilations is None:
            return [[1] * depth for depth in self.depths]
        if len(dilations) != self.num_stages or any(
                len(stage) != depth for stage, depth in zip(dilations, self.depths)):
            raise ValueError(f'dilations={dilations} must hold one list per stage with one entry per '
                             f'layer, i.e. lengths {self.depths}')

        def checked(i, j, dilation):
            # The official model reads a missing (None) dilation as 1.
            dilation = 1 if dilation is None else dilation
            if not isinstance(dilation, int) or isinstance(dilation, bool) or dilation < 1:
                raise ValueError(f'dilations[{i}][{j}]={dilation!r} must be an int >= 1 or None')
            return dilation

        return [[checked(i, j, d) for j, d in enumerate(stage)] for i, stage in enumerate(dilations)]

    def _is_official(self, state_dict):
        return is_official_nat(state_dict)

    def _convert_official(self, state_dict):
        return nat_official_to_mmsparse(state_dict)

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        outs = []
        for i in range(self.num_stages):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)
