import torch.utils.checkpoint as cp
from mmengine.model.weight_init import trunc_normal_
from torch import nn

from mmsparse.registry import MODELS
from ..attentions import HierarchicalMHSA
from ..attentions.hmhsa import group_norm1
from ..layers import DropPath, LayerNorm2d, drop_path_rates
from ..utils import hatnet_official_to_mmsparse, is_official_hatnet
from .base import SparseBackbone


class InvertedResidual(nn.Module):
    """HAT-Net's convolutional feed-forward branch (official key prefix ``conv.``).

    ``GN -> 1x1 (C -> C*e) -> SiLU -> depthwise kxk -> SiLU -> Dropout2d ->
    1x1 (C*e -> C) -> GN -> Dropout2d``; no conv has a bias. Note the GN at
    the end of the branch. The SiLUs run in place, as in the official model: the
    convs before them do not keep their outputs for backward.

    Shape:
        (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, embed_dims, expansion, kernel_size, drop=0.):
        super().__init__()
        hidden = embed_dims * expansion
        self.conv1 = nn.Sequential(group_norm1(embed_dims), nn.Conv2d(embed_dims, hidden, 1, bias=False),
                                   nn.SiLU(inplace=True))
        self.conv2 = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel_size, padding=(kernel_size - 1) // 2, groups=hidden, bias=False),
            nn.SiLU(inplace=True), nn.Dropout2d(drop))
        self.conv3 = nn.Sequential(nn.Conv2d(hidden, embed_dims, 1, bias=False), group_norm1(embed_dims),
                                   nn.Dropout2d(drop))

    def forward(self, x):
        return self.conv3(self.conv2(self.conv1(x)))


class HATAttention(HierarchicalMHSA):
    """H-MHSA with the official block's pre-norm (GroupNorm), on NCHW maps.

    The official model keeps the pre-norm inside its attention (key ``attn.norm``),
    and the residual inside the local step adds the un-normalised input; this
    subclass holds the norm under the same key and passes the raw input as the
    ``identity`` of :class:`HierarchicalMHSA`.

    Shape:
        (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, embed_dims, num_heads, grid_size, ds_ratio, drop, backend):
        super().__init__(embed_dims, num_heads, grid_size, ds_ratio, drop, backend)
        self.norm = group_norm1(embed_dims)

    def forward(self, x):
        return self.forward_nchw(self.norm(x), identity=x)


class HATBlock(nn.Module):
    """``x + DropPath(H-MHSA(x))``, then ``x + DropPath(InvertedResidual(x))``.

    One DropPath module serves both branches (independent masks per call), as in
    the official block. Each branch starts with its own GroupNorm.

    Shape:
        (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, embed_dims, head_dim, grid_size, ds_ratio, expansion, kernel_size, drop,
                 drop_path, with_cp, backend):
        super().__init__()
        self.with_cp = with_cp
        self.attn = HATAttention(embed_dims, embed_dims // head_dim, grid_size, ds_ratio, drop, backend)
        self.conv = InvertedResidual(embed_dims, expansion, kernel_size, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _forward(self, x):
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.conv(x))

    def forward(self, x):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


class Downsample(nn.Sequential):
    """Conv3x3 stride 2 then GroupNorm (official ``ds{2,3,4}``): (B, Cin, H, W) -> (B, Cout, ceil(H/2), ceil(W/2))."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.norm = group_norm1(out_channels)


# Shared by the four official presets (HAT_Net_tiny/small/medium/large factories).
_PRESET_COMMON = dict(head_dim=64, expansions=(8, 8, 4, 4), grid_sizes=(8, 7, 7, 1), ds_ratios=(8, 4, 2, 1))


@MODELS.register_module()
class HATNet(SparseBackbone):
    """HAT-Net backbone with hierarchical multi-head self-attention (H-MHSA).

    Liu et al., "Vision Transformers with Hierarchical Attention", Machine
    Intelligence Research 21:670-683 (2024), https://arxiv.org/abs/2106.03180.
    A conv stem (stride 4) and stride-2 conv + GroupNorm downsampling; every block
    is H-MHSA (local ``G x G`` windows, then global attention against keys pooled
    by ``r``; plain MHSA where ``G == 1``) plus a convolutional inverted residual.
    Module names follow the official model, so official ImageNet checkpoints load
    after dropping the classifier and the unused ``attn.proj_norm``.

    Any input size works (the official code needs sides in ``224k-3 .. 224k``): stride-2
    convs round up, and H-MHSA pads its local windows and pooling cells inside the
    op, masking the padding out (see :class:`~mmsparse.models.attentions.HierarchicalMHSA`).
    At officially accepted sizes the outputs equal the official model's.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'medium'``, ``'large'`` or a dict
            with the keys ``embed_dims``, ``head_dim``, ``depths``, ``expansions``,
            ``grid_sizes``, ``ds_ratios`` and ``kernel_sizes`` (per-stage tuples of 4
            ints, except ``head_dim``, one int shared by all stages).
        in_channels (int): image channels (the official stem hard-codes 3).
        out_indices (Sequence[int]): stages whose maps are returned.
        out_norms (bool): add a LayerNorm2d per returned map. The official model
            has none (the outputs are the stage residual streams, as PVT's), so
            the default is False; ImageNet checkpoints leave them at their init.
        frozen_stages (int): as in mmdet's ResNet and SwinTransformer: -1 freezes
            nothing, 0 the stem (``patch_embed``) only, ``k >= 1`` the stem and
            stages ``0..k-1`` (their downsampling ``ds{i+1}``, blocks and output
            norm); 4 freezes everything.
        norm_eval (bool): keep BatchNorm layers in eval mode while training. Kept
            for interface parity: HAT-Net uses GroupNorm only, which has no running
            statistics, so it changes nothing here.
        with_cp (bool): activation checkpointing per block.
        drop_rate (float): ``Dropout2d`` rate inside attention and feed-forward.
        drop_path_rate (float): stochastic depth, linear from 0 over all blocks.
        backend (str, optional): H-MHSA op backend, see :mod:`mmsparse.ops.hmhsa`.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH)``
            loads an official ImageNet checkpoint or an mmsparse one; missing or
            unexpected keys are errors unless ``strict=False`` (then logged).

    Shape:
        (B, in_channels, H, W) -> tuple of (B, embed_dims[i], ceil(H / 2**(i+2)),
        ceil(W / 2**(i+2))) for i in ``out_indices``.
    """

    arch_zoo = {
        'tiny': dict(_PRESET_COMMON, embed_dims=(48, 96, 240, 384), head_dim=48, depths=(2, 2, 6, 3),
                     kernel_sizes=(3, 3, 3, 3)),
        'small': dict(_PRESET_COMMON, embed_dims=(64, 128, 320, 512), depths=(2, 3, 8, 3), kernel_sizes=(3, 3, 3, 3)),
        'medium': dict(_PRESET_COMMON, embed_dims=(64, 128, 320, 512), depths=(3, 6, 18, 3), kernel_sizes=(5, 3, 5, 3)),
        'large': dict(_PRESET_COMMON, embed_dims=(64, 128, 320, 640), depths=(3, 8, 27, 3), kernel_sizes=(3, 3, 3, 3)),
    }
    num_stages = 4
    per_stage_arch_keys = ('embed_dims', 'depths', 'expansions', 'grid_sizes', 'ds_ratios', 'kernel_sizes')
    arch_keys = per_stage_arch_keys + ('head_dim', )

    def __init__(self,
                 arch='small',
                 in_channels=3,
                 out_indices=(0, 1, 2, 3),
                 out_norms=False,
                 frozen_stages=-1,
                 norm_eval=False,
                 with_cp=False,
                 drop_rate=0.,
                 drop_path_rate=0.,
                 backend=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        self.embed_dims = tuple(arch['embed_dims'])
        self.depths = tuple(arch['depths'])
        self._set_output_and_freeze_options(out_indices, frozen_stages, norm_eval, self.num_stages)

        dims = self.embed_dims
        self.patch_embed = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, stride=2, padding=1), group_norm1(16), nn.SiLU(),
            nn.Conv2d(16, dims[0], 3, stride=2, padding=1))
        for i in range(1, self.num_stages):
            self.add_module(f'ds{i + 1}', Downsample(dims[i - 1], dims[i]))
        rates = drop_path_rates(drop_path_rate, self.depths)
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                HATBlock(dims[i], arch['head_dim'], arch['grid_sizes'][i], arch['ds_ratios'][i],
                         arch['expansions'][i], arch['kernel_sizes'][i], drop_rate, rates[i][b], with_cp,
                         backend)
                for b in range(self.depths[i])) for i in range(self.num_stages))
        if out_norms:
            for i in self.out_indices:
                self.add_module(f'norm{i}', LayerNorm2d(dims[i]))
        self.out_norms = out_norms

        self._freeze_stages()

    def _parse_arch(self, arch):
        arch = super()._parse_arch(arch)
        self._check_heads_fit("arch['head_dim']", arch['head_dim'], arch['embed_dims'])
        return arch

    @staticmethod
    def _init_layer(m):
        """Official init: trunc-normal(0.02) conv/linear weights, zero biases, GN (1, 0)."""
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _is_official(self, state_dict):
        return is_official_hatnet(state_dict)

    def _convert_official(self, state_dict):
        return hatnet_official_to_mmsparse(state_dict)

    def _entry(self, i):
        """The layer that starts stage ``i``: the stem (stride 4) or a downsampling (stride 2)."""
        return self.patch_embed if i == 0 else getattr(self, f'ds{i + 1}')

    def _stem_modules(self):
        return [self.patch_embed]

    def _stage_modules(self, i):
        modules = [self._entry(i)] if i > 0 else []
        modules.append(self.blocks[i])
        if self.out_norms and i in self.out_indices:
            modules.append(getattr(self, f'norm{i}'))
        return modules

    def forward(self, x):
        outs = []
        for i in range(self.num_stages):
            x = self._entry(i)(x)
            for block in self.blocks[i]:
                x = block(x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x) if self.out_norms else x)
        return tuple(outs)
