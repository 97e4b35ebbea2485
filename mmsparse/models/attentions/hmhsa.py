from torch import nn

from mmsparse.ops import cell_average_pool, global_attention, grid_attention


def group_norm1(num_channels):
    """HAT-Net's only norm: GroupNorm with one group (stats over C, H, W per sample), eps 1e-6."""
    return nn.GroupNorm(1, num_channels, eps=1e-6)


class HierarchicalMHSA(nn.Module):
    """Hierarchical multi-head self-attention, H-MHSA (HAT-Net, arXiv 2106.03180).

    With ``grid_size > 1``::

        local  = GridAttention(qkv(GN_norm(x)))             # G x G windows
        grid_x = GN_grid(x + local)
        kv     = kv(GN_ds(CellAvgPool_r(grid_x)))
        out    = proj(GlobalAttention(q(grid_x), kv) + grid_x)

    With ``grid_size == 1`` it is plain MHSA: ``proj(Attention(qkv(GN_norm(x))))``.
    Local and global steps have separate projections, as in the official model.

    Any ``H x W`` works: the local step pads to multiples of ``G`` and masks padded
    keys; pooling keeps partial border cells, averaging only real pixels. All norms
    and 1x1 convs run on the true ``H x W`` map, so padding never enters a norm's
    statistics. When ``G`` and ``r`` divide ``H`` and ``W`` the output equals the
    official module's. Parameter names are the official ones, except the official
    ``proj_norm``, which its forward never uses and which is not created here.

    Args:
        embed_dims (int): channels C.
        head_dim (int): channels per head; must divide C.
        grid_size (int): local window side G; 1 = global MHSA only.
        ds_ratio (int): pooling cell side r of the keys/values of the global step
            (ignored when ``grid_size == 1``).
        drop (float): ``Dropout2d`` rate on the output.
        backend (str, optional): op backend, see :mod:`mmsparse.ops.hmhsa`.

    Shape:
        (B, C, H, W) -> (B, C, H, W)
    """

    def __init__(self, embed_dims, head_dim, grid_size=1, ds_ratio=1, drop=0., backend=None):
        super().__init__()
        if head_dim < 1 or embed_dims % head_dim:
            raise ValueError(f'head_dim={head_dim} must be a positive divisor of embed_dims={embed_dims}')
        for name, value in (('grid_size', grid_size), ('ds_ratio', ds_ratio)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f'{name}={value!r} must be a positive int')
        self.embed_dims = embed_dims
        self.num_heads = embed_dims // head_dim
        self.grid_size = grid_size
        self.ds_ratio = ds_ratio
        self.scale = head_dim**-0.5
        self.backend = backend
        self.norm = group_norm1(embed_dims)
        self.qkv = nn.Conv2d(embed_dims, 3 * embed_dims, 1)
        self.proj = nn.Conv2d(embed_dims, embed_dims, 1)
        self.drop = nn.Dropout2d(drop)
        if grid_size > 1:
            self.grid_norm = group_norm1(embed_dims)
            self.ds_norm = group_norm1(embed_dims)
            self.q = nn.Conv2d(embed_dims, embed_dims, 1)
            self.kv = nn.Conv2d(embed_dims, 2 * embed_dims, 1)

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        attn_kwargs = dict(num_heads=self.num_heads, scale=self.scale, backend=self.backend)
        if self.grid_size == 1:
            return self.drop(self.proj(global_attention(q, k, v, **attn_kwargs)))
        local = grid_attention(q, k, v, grid_size=self.grid_size, **attn_kwargs)
        grid_x = self.grid_norm(x + local)
        k, v = self.kv(self.ds_norm(cell_average_pool(grid_x, self.ds_ratio))).chunk(2, dim=1)
        out = global_attention(self.q(grid_x), k, v, **attn_kwargs)
        return self.drop(self.proj(out + grid_x))

    def extra_repr(self):
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'grid_size={self.grid_size}, ds_ratio={self.ds_ratio}')
