import torch
import torch.nn.functional as F
from mmengine.model.weight_init import trunc_normal_
from torch import nn

from mmsparse.ops import neighborhood_attention_2d
from mmsparse.ops._checks import check_dilation, check_kernel_size, check_num_heads
from mmsparse.registry import MODELS
from .base import TokenMixer


@MODELS.register_module()
class NeighborhoodAttention2d(TokenMixer):
    """(Dilated) neighborhood attention with relative positional bias.

    NAT (Hassani et al., CVPR 2023, arXiv 2204.07143) and DiNAT (Hassani & Shi,
    arXiv 2209.15001), reproducing NATTEN 0.14.4's ``NeighborhoodAttention2D``, the
    module of the released checkpoints. Maps smaller than ``kernel_size * dilation``
    on a side are zero-padded at the bottom/right up to ``kernel_size * dilation``
    BEFORE the qkv projection, so padded tokens carry ``q = k = v = qkv.bias`` and
    are attended as ordinary keys (no mask); the output is cropped before ``proj``
    (here only the kept queries are computed, which gives the same numbers).
    Registered as ``mmsparse.NeighborhoodAttention2d``.

    Args:
        embed_dims (int): channels C of the input and output.
        num_heads (int): heads; must divide C.
        kernel_size (int): odd neighbourhood size k. Defaults to 7.
        dilation (int): dilation d. Defaults to 1.
        rel_pos_bias (bool): learn the relative positional bias ``rpb``
            (``(heads, 2k-1, 2k-1)``, trunc-normal std 0.02 in
            :meth:`init_weights`); False for none. Defaults to True.
        qkv_bias (bool): bias of the fused qkv projection. Defaults to True.
        qk_scale (float, optional): logit scale. Defaults to None
            (``head_dim ** -0.5``).
        backend (str, optional): op backend, see :mod:`mmsparse.ops._dispatch`.
            Defaults to None.

    Shape:
        (N, H, W, C) -> (N, H, W, C), any ``H, W >= 1``.
    """

    def __init__(self, embed_dims, num_heads, kernel_size=7, dilation=1, rel_pos_bias=True, qkv_bias=True,
                 qk_scale=None, backend=None):
        super().__init__()
        check_num_heads(num_heads, embed_dims)
        check_kernel_size(kernel_size)
        check_dilation(dilation)
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.backend = backend
        self.scale = qk_scale or (embed_dims // num_heads)**-0.5
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        table = 2 * kernel_size - 1
        self.rpb = nn.Parameter(torch.zeros(num_heads, table, table)) if rel_pos_bias else None
        self.proj = nn.Linear(embed_dims, embed_dims)

    def init_weights(self):
        """NATTEN's init of the bias table: trunc-normal, std 0.02, cut at +-2."""
        if self.rpb is not None:
            trunc_normal_(self.rpb, std=.02, a=-2., b=2.)

    def forward(self, x):
        height, width = x.shape[1:3]
        window = self.kernel_size * self.dilation
        if height < window or width < window:
            x = F.pad(x, (0, 0, 0, max(window - width, 0), 0, max(window - height, 0)))
        n, pad_h, pad_w, c = x.shape
        qkv = self.qkv(x).reshape(n, pad_h, pad_w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 4, 1, 2, 5)
        # Only the queries kept by the crop are computed; padded tokens stay keys/values.
        out = neighborhood_attention_2d(q[:, :, :height, :width], k, v, self.kernel_size, self.dilation,
                                        rpb=self.rpb, scale=self.scale, backend=self.backend)
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(n, height, width, c))

    def extra_repr(self):
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'kernel_size={self.kernel_size}, dilation={self.dilation}, '
                f'rel_pos_bias={self.rpb is not None}')
