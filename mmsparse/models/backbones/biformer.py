import torch.utils.checkpoint as cp
from torch import nn

from mmsparse.registry import MODELS
from ..attentions import BiLevelRoutingAttention, GlobalAttentionLePE
from ..attentions.bra import check_lepe_kernel
from ..layers import DropPath, LayerNorm2d, Mlp, conv_downsample, conv_stem, drop_path_rates
from ..utils import biformer_official_to_mmsparse, is_official_biformer
from ..utils.ckpt_convert import biformer_side_dwconv
from .base import SparseBackbone


class BiFormerBlock(nn.Module):
    """Pre-norm BiFormer block: CPE conv, attention, MLP, each residual.

    ``topk > 0`` selects bi-level routing attention; ``topk == -1`` selects
    global MHSA with LePE (the official code's ``topk=-2``, used by stage 4).
    Both attentions carry a depthwise LePE conv of kernel ``lepe_kernel``.

    Shape:
        (N, C, H, W) -> (N, C, H, W)
    """

    def __init__(self, embed_dims, num_heads, n_win, topk, mlp_ratio, drop_path, auto_pad,
                 global_heads, lepe_kernel, with_cp, backend):
        super().__init__()
        self.with_cp = with_cp
        self.cpe = nn.Conv2d(embed_dims, embed_dims, 3, padding=1, groups=embed_dims)
        self.norm1 = nn.LayerNorm(embed_dims, eps=1e-6)
        if topk > 0:
            self.attn = BiLevelRoutingAttention(embed_dims, num_heads, n_win, topk, lepe_kernel=lepe_kernel,
                                                auto_pad=auto_pad, backend=backend)
        elif topk == -1:
            self.attn = GlobalAttentionLePE(embed_dims, global_heads, lepe_kernel=lepe_kernel)
        else:
            raise ValueError(f'topk={topk} is not supported: use a positive top-k for routing '
                             'attention or -1 for global attention')
        self.norm2 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.mlp = Mlp(embed_dims, int(mlp_ratio * embed_dims))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _forward(self, x):
        x = x + self.cpe(x)
        x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x.permute(0, 3, 1, 2)

    def forward(self, x):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)


@MODELS.register_module()
class BiFormer(SparseBackbone):
    """BiFormer backbone with bi-level routing attention.

    Zhu et al., "BiFormer: Vision Transformer with Bi-Level Routing Attention",
    CVPR 2023, https://arxiv.org/abs/2303.08810. Layout and numerics follow the
    official dense-prediction wrapper (``BiFormer_mm`` in
    ``semantic_segmentation/models_mm/biformer_mm.py`` of
    https://github.com/rayleizhu/BiFormer): a conv stem and stride-2 conv
    downsampling, BRA in stages 1-3, global MHSA in stage 4, and a LayerNorm2d per output map
    (the un-normalised map feeds the next stage). Any input size works: stride-2
    convs round up and every BRA layer pads to a multiple of ``n_win``.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'`` or a dict with keys
            ``depths`` (4 ints), ``embed_dims`` (4 ints) and ``head_dim`` (int).
            Defaults to ``'small'``.
        in_channels (int): image channels. Defaults to 3.
        n_win (int): regions per side in every BRA layer (7 ImageNet, 8 ADE20K,
            16 COCO in the official recipes). Defaults to 7.
        topks (Sequence[int]): routed regions per stage; -1 = global attention.
            Defaults to ``(1, 4, 16, -1)``.
        mlp_ratios (Sequence[float]): MLP expansion per stage.
            Defaults to ``(3, 3, 3, 3)``.
        global_heads (int): heads of the global stage (8 in the released models).
            Defaults to 8.
        side_dwconv (int): kernel size of every depthwise LePE conv, in the BRA
            layers and in the global attention of stage 4 alike; a positive odd
            int, named as in the official code. Checkpoints hold it in the shape
            of their ``attn.lepe.weight`` tensors, and loading one made with
            another value raises. Defaults to 5 (all released models).
        auto_pad (bool): pad BRA inputs to multiples of ``n_win``.
            Defaults to True.
        out_indices (Sequence[int]): stages whose maps are returned.
            Defaults to ``(0, 1, 2, 3)``.
        frozen_stages (int): as in mmdet's ResNet and SwinTransformer: -1 freezes
            nothing, 0 the stem (``downsample_layers[0]``) only, ``k >= 1`` the stem and
            stages ``0..k-1`` (their downsampling layer, blocks and output norm); 4
            freezes everything. Defaults to -1.
        norm_eval (bool): keep BatchNorm layers in eval mode while training.
            Defaults to False.
        norm_cfg (dict): norm of the stem and downsampling convs.
            Defaults to ``dict(type='BN')``.
        with_cp (bool): activation checkpointing per block. Defaults to False.
        drop_path_rate (float): stochastic depth, linear over blocks.
            Defaults to 0.
        backend (str, optional): op backend of the routing attention, see
            :mod:`mmsparse.ops._dispatch` (the global stage always uses
            ``F.scaled_dot_product_attention``). Defaults to None.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH)``
            loads an official ImageNet checkpoint or an mmsparse one; add
            ``strict=False`` to tolerate mismatched keys (they are still logged;
            a ``side_dwconv`` mismatch raises all the same). Defaults to None.

    Shape:
        (N, in_channels, H, W) -> tuple of (N, embed_dims[i], ceil(H / 2**(i+2)),
        ceil(W / 2**(i+2))) for i in ``out_indices``.
    """

    arch_zoo = {
        'tiny': dict(depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512), head_dim=32),
        'small': dict(depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512), head_dim=32),
        'base': dict(depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768), head_dim=32),
    }
    arch_keys = ('depths', 'embed_dims', 'head_dim')
    per_stage_arch_keys = ('depths', 'embed_dims')
    num_stages = 4

    def __init__(self,
                 arch='small',
                 in_channels=3,
                 n_win=7,
                 topks=(1, 4, 16, -1),
                 mlp_ratios=(3, 3, 3, 3),
                 global_heads=8,
                 side_dwconv=5,
                 auto_pad=True,
                 out_indices=(0, 1, 2, 3),
                 frozen_stages=-1,
                 norm_eval=False,
                 norm_cfg=dict(type='BN'),
                 with_cp=False,
                 drop_path_rate=0.,
                 backend=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        arch = self._parse_arch(arch)
        self.depths = tuple(arch['depths'])
        self.embed_dims = tuple(arch['embed_dims'])
        for name, value in (('topks', topks), ('mlp_ratios', mlp_ratios)):
            if len(value) != self.num_stages:
                raise ValueError(f'{name}={value} must have {self.num_stages} entries')
        check_lepe_kernel('side_dwconv', side_dwconv)
        self.side_dwconv = side_dwconv
        self._set_output_and_freeze_options(out_indices, frozen_stages, norm_eval, self.num_stages)

        dims = self.embed_dims
        self.downsample_layers = nn.ModuleList(
            [conv_stem(in_channels, dims[0], norm_cfg)] +
            [conv_downsample(dims[i - 1], dims[i], norm_cfg) for i in range(1, self.num_stages)])

        rates = drop_path_rates(drop_path_rate, self.depths)
        self.stages = nn.ModuleList()
        for i in range(self.num_stages):
            self.stages.append(
                nn.Sequential(*[
                    BiFormerBlock(dims[i], dims[i] // arch['head_dim'], n_win, topks[i], mlp_ratios[i],
                                  rates[i][b], auto_pad, global_heads, side_dwconv, with_cp, backend)
                    for b in range(self.depths[i])
                ]))
        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(dims[i]))

        self._freeze_stages()

    def _parse_arch(self, arch):
        arch = super()._parse_arch(arch)
        self._check_heads_fit("arch['head_dim']", arch['head_dim'], arch['embed_dims'])
        return arch

    def _check_state_dict(self, state_dict):
        """Refuse a state dict whose LePE kernels are not ``side_dwconv`` wide.

        The LePE keys are the same in official and mmsparse layouts, so this reads
        either; a state dict without LePE weights passes.
        """
        found = biformer_side_dwconv(state_dict)
        if found is not None and found != self.side_dwconv:
            raise RuntimeError(f'{type(self).__name__}: the checkpoint was made with side_dwconv={found} '
                               f'({found}x{found} LePE kernels) but the model has '
                               f'side_dwconv={self.side_dwconv}; build the backbone with '
                               f'side_dwconv={found} to load it')

    def _is_official(self, state_dict):
        return is_official_biformer(state_dict)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # ``load_state_dict`` and MMEngine's ``load_checkpoint`` visit this module
        # before its children, so a mismatch raises before any tensor is copied.
        self._check_state_dict({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _convert_official(self, state_dict):
        return biformer_official_to_mmsparse(state_dict)

    def forward(self, x):
        outs = []
        for i in range(self.num_stages):
            x = self.stages[i](self.downsample_layers[i](x))
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x).contiguous())
        return tuple(outs)
