from torch import nn

from mmsparse.ops import cell_average_pool, global_attention, grid_attention
from mmsparse.ops._checks import check_num_heads
from mmsparse.registry import MODELS
from .base import TokenMixer


def group_norm1(num_channels):
    """HAT-Net's only norm: GroupNorm with one group (stats over C, H, W per sample), eps 1e-6."""
    return nn.GroupNorm(1, num_channels, eps=1e-6)


@MODELS.register_module()
class HierarchicalMHSA(TokenMixer):
    """Hierarchical multi-head self-attention, H-MHSA (HAT-Net, arXiv 2106.03180).

    With ``grid_size > 1``, on the (already normalised) input ``x``::

        local  = GridAttention(qkv(x))                       # G x G windows
        grid_x = GN_grid(identity + local)
        kv     = kv(GN_ds(CellAvgPool_r(grid_x)))
        out    = proj(GlobalAttention(q(grid_x), kv) + grid_x)

    With ``grid_size == 1`` it is plain MHSA: ``proj(Attention(qkv(x)))``. Local and
    global steps have separate projections, as in the official model.

    The official block's pre-norm is not part of this mixer (a backbone block
    applies its own norm first, as for every mixer), but the official residual
    inside the local step adds the un-normalised block input: pass it as
    ``identity`` (HAT-Net does); by default the mixer input is used.

    Any ``H x W`` works: the local step pads to multiples of ``G`` and masks padded
    keys; pooling keeps partial border cells, averaging only real pixels. All norms
    and 1x1 convs run on the true ``H x W`` map, so padding never enters a norm's
    statistics. When ``G`` and ``r`` divide ``H`` and ``W`` the output equals the
    official module's. Parameter names are the official ones, except the official
    ``norm`` (HAT-Net's block holds it) and ``proj_norm``, which its forward never
    uses and which is not created here. Registered as ``mmsparse.HierarchicalMHSA``.

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads; must divide C.
        grid_size (int): local window side G; 1 = global MHSA only. Defaults to 1.
        ds_ratio (int): pooling cell side r of the keys/values of the global step
            (ignored when ``grid_size == 1``). Defaults to 1.
        drop (float): ``Dropout2d`` rate on the output. Defaults to 0.
        backend (str, optional): op backend, see :mod:`mmsparse.ops.hmhsa`.
            Defaults to None.

    Shape:
        x, identity: (N, H, W, C) -> (N, H, W, C)
    """

    def __init__(self, embed_dims, num_heads, grid_size=1, ds_ratio=1, drop=0., backend=None):
        super().__init__()
        check_num_heads(num_heads, embed_dims)
        for name, value in (('grid_size', grid_size), ('ds_ratio', ds_ratio)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name}={value!r} must be a positive int')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.grid_size = grid_size
        self.ds_ratio = ds_ratio
        self.scale = (embed_dims // num_heads)**-0.5
        self.backend = backend
        self.qkv = nn.Conv2d(embed_dims, 3 * embed_dims, 1)
        self.proj = nn.Conv2d(embed_dims, embed_dims, 1)
        self.drop = nn.Dropout2d(drop)
        if grid_size > 1:
            self.grid_norm = group_norm1(embed_dims)
            self.ds_norm = group_norm1(embed_dims)
            self.q = nn.Conv2d(embed_dims, embed_dims, 1)
            self.kv = nn.Conv2d(embed_dims, 2 * embed_dims, 1)

    def forward(self, x, identity=None):
        # The ops and the official 1x1 convs / GroupNorms are NCHW; the permutes are views.
        out = self.forward_nchw(x.permute(0, 3, 1, 2), None if identity is None else identity.permute(0, 3, 1, 2))
        return out.permute(0, 2, 3, 1)

    def forward_nchw(self, x, identity=None):
        """:meth:`forward` on NCHW maps: (N, C, H, W) -> (N, C, H, W)."""
        q, k, v = self.qkv(x).chunk(3, dim=1)
        attn_kwargs = dict(num_heads=self.num_heads, scale=self.scale, backend=self.backend)
        if self.grid_size == 1:
            return self.drop(self.proj(global_attention(q, k, v, **attn_kwargs)))
        local = grid_attention(q, k, v, grid_size=self.grid_size, **attn_kwargs)
        grid_x = self.grid_norm((x if identity is None else identity) + local)
        k, v = self.kv(self.ds_norm(cell_average_pool(grid_x, self.ds_ratio))).chunk(2, dim=1)
        out = global_attention(self.q(grid_x), k, v, **attn_kwargs)
        return self.drop(self.proj(out + grid_x))

    def extra_repr(self):
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'grid_size={self.grid_size}, ds_ratio={self.ds_ratio}')
