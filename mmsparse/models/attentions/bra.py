from torch import nn

from mmsparse.ops import bi_level_routing_attention
from mmsparse.ops._checks import check_topk
from mmsparse.registry import MODELS
from ..layers import pad_nhwc_to_multiple
from .base import TokenMixer


def check_lepe_kernel(name, value):
    """Refuse a LePE kernel size that is not a positive odd int.

    The depthwise LePE conv is padded by ``kernel // 2``; only an odd kernel keeps
    the map size. ``name`` is the argument reported in the error.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ValueError(f'{name}={value!r} is not allowed: the LePE kernel size must be a '
                         'positive odd int (3, 5, 7, ...)')


def build_lepe(embed_dims, kernel_size, name='lepe_kernel'):
    """Depthwise ``kernel_size`` conv that keeps the map size: LePE (CSWin, arXiv 2107.00652).

    Args:
        embed_dims (int): channels in and out.
        kernel_size (int): a positive odd int.
        name (str): the argument named if ``kernel_size`` is refused.
            Defaults to ``'lepe_kernel'``.
    """
    check_lepe_kernel(name, kernel_size)
    return nn.Conv2d(embed_dims, embed_dims, kernel_size, padding=kernel_size // 2, groups=embed_dims)


@MODELS.register_module()
class BiLevelRoutingAttention(TokenMixer):
    """Bi-level routing attention with LePE (BiFormer, arXiv 2303.08810).

    Reproduces the legacy op of the released checkpoints (``ops/bra_legacy.py`` of
    https://github.com/rayleizhu/BiFormer): the input is zero-padded
    at the bottom/right to a multiple of ``n_win`` BEFORE the qkv projection, so
    padded tokens carry ``q = k = v = bias`` and are attended as ordinary keys; the
    depthwise LePE conv runs on ``v`` over the padded map; the output is cropped.

    Registered as ``mmsparse.BiLevelRoutingAttention``.

    Args:
        embed_dims (int): channels C of the input and output.
        num_heads (int): heads of the token-to-token attention.
        n_win (int): regions per side. Defaults to 7.
        topk (int): routed regions per query region. Defaults to 4.
        qk_dims (int, optional): channels of q and k. Defaults to ``embed_dims``.
        lepe_kernel (int): kernel size of the depthwise LePE conv on ``v``, a
            positive odd int (the official ``side_dwconv``). Defaults to 5.
        auto_pad (bool): pad inputs whose sides are not multiples of ``n_win``;
            if False such inputs raise ValueError. Defaults to True.
        backend (str, optional): op backend, see :mod:`mmsparse.ops._dispatch`.
            Defaults to None (``MMSPARSE_ATTN_BACKEND``, else by device).

    Shape:
        (N, H, W, C) -> (N, H, W, C)
    """

    def __init__(self, embed_dims, num_heads, n_win=7, topk=4, qk_dims=None, lepe_kernel=5,
                 auto_pad=True, backend=None):
        super().__init__()
        check_topk(topk, n_win)
        self.embed_dims = embed_dims
        self.qk_dims = qk_dims or embed_dims
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.auto_pad = auto_pad
        self.backend = backend
        # Full qk width, not the head width: the released checkpoints were trained so.
        self.scale = self.qk_dims**-0.5
        self.qkv = nn.Linear(embed_dims, 2 * self.qk_dims + embed_dims)
        self.lepe = build_lepe(embed_dims, lepe_kernel)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, x):
        height, width = x.shape[1:3]
        if self.auto_pad:
            x = pad_nhwc_to_multiple(x, self.n_win)
        elif height % self.n_win or width % self.n_win:
            raise ValueError(f'input size {height}x{width} is not divisible by n_win={self.n_win}; '
                             'set auto_pad=True or use a map size divisible by n_win')
        q, k, v = self.qkv(x).split([self.qk_dims, self.qk_dims, self.embed_dims], dim=-1)
        lepe = self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        out = bi_level_routing_attention(q, k, v, self.num_heads, self.n_win, self.topk,
                                         scale=self.scale, backend=self.backend)
        out = self.proj(out + lepe)
        return out[:, :height, :width]

    def extra_repr(self):
        return (f'embed_dims={self.embed_dims}, qk_dims={self.qk_dims}, num_heads={self.num_heads}, '
                f'n_win={self.n_win}, topk={self.topk}, auto_pad={self.auto_pad}')
