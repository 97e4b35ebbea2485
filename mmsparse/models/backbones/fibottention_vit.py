import torch
import torch.utils.checkpoint as cp
from mmengine.model.weight_init import trunc_normal_
from torch import nn

from mmsparse.registry import MODELS
from ..attentions import DenseAttention, Fibottention2d
from ..attentions.fibottention import check_fibottention_options
from ..layers import DropPath, FeatureRescale, Mlp, PatchEmbed, drop_path_rates, resize_pos_embed
from ..utils import vit_official_to_mmsparse
from .base import SparseBackbone


class FibottentionBlock(nn.Module):
    """Pre-norm ViT block, ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``.

    Shape:
        (B, 1 + gh*gw, C), grid (gh, gw) -> (B, 1 + gh*gw, C)
    """

    def __init__(self, embed_dims, num_heads, mlp_ratio, drop_path, with_cp, attention='fibottention',
                 **attn_kwargs):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = nn.LayerNorm(embed_dims, eps=1e-6)
        if attention == 'dense':
            # The dense baseline has the same parameters (qkv, proj) and nothing else.
            self.attn = DenseAttention(embed_dims, num_heads, qkv_bias=attn_kwargs['qkv_bias'])
        else:
            self.attn = Fibottention2d(embed_dims, num_heads, **attn_kwargs)
        self.norm2 = nn.LayerNorm(embed_dims, eps=1e-6)
        self.mlp = Mlp(embed_dims, int(mlp_ratio * embed_dims))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _forward(self, x, grid_size):
        x = x + self.drop_path(self.attn.forward_tokens(self.norm1(x), grid_size, with_cls=True))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward(self, x, grid_size):
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, grid_size, use_reentrant=False)
        return self._forward(x, grid_size)


@MODELS.register_module()
class FibottentionViT(SparseBackbone):
    """Plain ViT with Fibottention in every block, for dense prediction.

    Rahimian et al., "Fibottention: Inceptive Visual Representation Learning with
    Diverse Attention Across Heads", arXiv 2406.19391. The encoder is the
    official model (timm 0.9.7 ViT: CLS token, learned absolute position
    embedding, pre-norm blocks, LayerNorm eps 1e-6, qkv bias, GELU MLP) with the
    same parameter names, so timm/DeiT/official checkpoints load as they are.
    Block ``i`` uses layer seed ``i`` for the head shuffle. The CLS token stays in
    the sequence, so the official mask semantics hold at every input size; the
    position embedding is resized bicubically to the patch grid (CLS apart), and
    inputs are zero-padded at the bottom/right to a multiple of the patch size.

    Multi-scale outputs follow the simple feature pyramid of ViTDet / BEiT
    segmentation: the patch tokens of the blocks in ``out_indices`` are reshaped
    to stride-``patch_size`` maps and resampled by ``out_scales`` (4, 2, 1, 0.5
    give strides 4/8/16/32 with 16x16 patches), so stock FPN / UperNet heads
    apply unchanged.

    Args:
        arch (str | dict): ``'tiny'``, ``'small'``, ``'base'``, ``'large'`` (DeiT-T/S,
            ViT-B/L) or a dict with ``embed_dims``, ``num_layers``, ``num_heads``,
            ``mlp_ratio``.
        img_size (int | tuple[int, int]): pretraining size; sets the stored
            position-embedding grid (``img_size // patch_size``).
        patch_size (int): patch side.
        in_channels (int): image channels.
        attention (str): ``'fibottention'`` or ``'dense'`` (the dense ViT baseline:
            the only change is the attention).
        attn_mode (str): ``'sparse'`` (masked logits -inf; for new training) or
            ``'official'`` (masked logits 0, reproduces the official model).
        shuffle (str): ``'per_layer'`` (seed = block index, the paper and the
            official evaluation), ``'shared'`` (every block uses the layer-0
            shuffle, the official training path) or ``'none'``.
        offset_layout (str): ``'1d'`` (official offsets on the flattened patch
            index) or ``'2d'`` (axial offsets along rows and columns; ablation).
        qkv_bias (bool): bias of the qkv projections.
        out_indices (Sequence[int], optional): blocks whose patch tokens are
            returned; default the ends of the four quarters of the depth.
        out_scales (Sequence[float]): resampling per output, each in
            ``(4, 2, 1, 0.5)``; same length as ``out_indices``.
        final_norm (bool): apply the final LayerNorm (``norm``) after the last block.
        frozen_stages (int): as in mmdet's ResNet and SwinTransformer, with the
            blocks as stages: -1 freezes nothing, 0 the stem (patch embedding, CLS
            token and position embedding) only, ``k >= 1`` the stem and blocks
            ``0..k-1``; ``num_layers`` freezes everything.
        norm_eval (bool): keep BatchNorm layers (if any) in eval mode in training.
        with_cp (bool): activation checkpointing per block.
        drop_path_rate (float): stochastic depth, linear over blocks.
        backend (str, optional): Fibottention op backend (``'auto'``, ``'torch'``,
            ``'triton'``).
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH)`` loads
            a timm/DeiT/official/mmsparse checkpoint: the classifier is dropped,
            ``pos_embed`` resized, and any other missing or unexpected key is an
            error (the pyramid layers are new and keep their init).

    Shape:
        (B, in_channels, H, W) -> tuple of (B, C, s*gh, s*gw) for each
        ``(i, s)`` in ``zip(out_indices, out_scales)``, with gh = ceil(H / patch_size),
        gw = ceil(W / patch_size) (ceil for s = 0.5).
    """

    arch_zoo = {
        'tiny': dict(embed_dims=192, num_layers=12, num_heads=3, mlp_ratio=4),
        'small': dict(embed_dims=384, num_layers=12, num_heads=6, mlp_ratio=4),
        'base': dict(embed_dims=768, num_layers=12, num_heads=12, mlp_ratio=4),
        'large': dict(embed_dims=1024, num_layers=24, num_heads=16, mlp_ratio=4),
    }
    arch_keys = ('embed_dims', 'num_layers', 'num_heads', 'mlp_ratio')
    ATTENTIONS = ('fibottention', 'dense')
    # The pyramid layers do not exist in classification checkpoints.
    tolerated_checkpoint_keys = (r'^rescales\.', )

    def __init__(self,
                 arch='base',
                 img_size=224,
                 patch_size=16,
                 in_channels=3,
                 attention='fibottention',
                 attn_mode='sparse',
                 shuffle='per_layer',
                 offset_layout='1d',
                 qkv_bias=True,
                 out_indices=None,
                 out_scales=(4, 2, 1, 0.5),
                 final_norm=True,
                 frozen_stages=-1,
                 norm_eval=False,
                 with_cp=False,
                 drop_path_rate=0.,
                 backend=None,
                 init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        if attention not in self.ATTENTIONS:
            raise ValueError(f'attention={attention!r} is not supported; expected one of {self.ATTENTIONS}')
        # Checked for the dense baseline too, which does not use them: a typo must not pass silently.
        check_fibottention_options(mode=attn_mode, shuffle=shuffle, offset_layout=offset_layout)
        arch = self._parse_arch(arch)
        dims, depth = arch['embed_dims'], arch['num_layers']
        self.embed_dims, self.num_layers = dims, depth
        # Default: the last block of each quarter, as ViTDet and BEiT take them.
        if out_indices is None:
            out_indices = tuple(depth * q // 4 - 1 for q in range(1, 5))
        self._set_output_and_freeze_options(out_indices, frozen_stages, norm_eval, depth)
        if len(out_scales) != len(self.out_indices):
            raise ValueError(f'out_scales={out_scales} must have one entry per out_indices='
                             f'{self.out_indices}')
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.pos_grid = (img_size[0] // patch_size, img_size[1] // patch_size)

        self.patch_embed = PatchEmbed(in_channels, dims, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dims))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.pos_grid[0] * self.pos_grid[1], dims))
        rates = drop_path_rates(drop_path_rate, [depth])[0]
        self.blocks = nn.ModuleList([
            FibottentionBlock(dims, arch['num_heads'], arch['mlp_ratio'], rates[i], with_cp,
                              layer_id=i, attention=attention, mode=attn_mode, shuffle=shuffle,
                              offset_layout=offset_layout, qkv_bias=qkv_bias, backend=backend)
            for i in range(depth)
        ])
        self.norm = nn.LayerNorm(dims, eps=1e-6) if final_norm else nn.Identity()
        self.rescales = nn.ModuleList([FeatureRescale(dims, s) for s in out_scales])

        self._freeze_stages()

    def _init_random(self):
        """timm's ViT init: trunc-normal position embedding and CLS token, then the layer-wise init."""
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)
        super()._init_random()

    def _parse_arch(self, arch):
        arch = super()._parse_arch(arch)
        self._check_heads_fit("arch['num_heads']", arch['num_heads'], [arch['embed_dims']])
        return arch

    def _is_official(self, state_dict):
        # The conversion is idempotent, so every checkpoint goes through it: it drops
        # a classifier if there is one and resizes pos_embed to this model's grid.
        return True

    def _convert_official(self, state_dict):
        return vit_official_to_mmsparse(state_dict, pos_grid=self.pos_grid)

    def _stem_modules(self):
        return [self.patch_embed]

    def _stage_modules(self, i):
        return [self.blocks[i]]

    def _freeze_stages(self):
        super()._freeze_stages()
        if self.frozen_stages >= 0:
            self.cls_token.requires_grad = False
            self.pos_embed.requires_grad = False

    def forward_tokens(self, x):
        """All tokens after the last block (and ``norm``): (B, 1 + gh*gw, C), CLS first."""
        return self._encode(x)[0]

    def _encode(self, x):
        """Run the encoder: final tokens, patch grid, tokens of each ``out_indices`` block."""
        x, grid = self.patch_embed(x)
        pos = resize_pos_embed(self.pos_embed, self.pos_grid, grid)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        taken = {}
        for i, block in enumerate(self.blocks):
            x = block(x, grid)
            if i == self.num_layers - 1:
                x = self.norm(x)
            if i in self.out_indices:
                taken[i] = x
        return x, grid, [taken[i] for i in self.out_indices]

    def forward(self, x):
        _, (gh, gw), taken = self._encode(x)
        outs = []
        for tokens, rescale in zip(taken, self.rescales):
            patch_map = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], self.embed_dims, gh, gw)
            outs.append(rescale(patch_map).contiguous())
        return tuple(outs)
