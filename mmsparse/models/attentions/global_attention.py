import torch.nn.functional as F
from torch import nn

from mmsparse.ops._checks import check_num_heads
from mmsparse.registry import MODELS
from .base import TokenMixer
from .bra import build_lepe


@MODELS.register_module()
class GlobalAttentionLePE(TokenMixer):
    """Global multi-head self-attention plus LePE on the attention input.

    BiFormer's last stage (``AttentionLePE`` in ``models/_common.py`` of
    https://github.com/rayleizhu/BiFormer): qkv without bias, scale
    ``head_dim ** -0.5``, and the depthwise LePE conv applied to the input ``x``
    (not to ``v``). Attention runs through ``F.scaled_dot_product_attention``, so
    GPUs use fused flash / memory-efficient kernels. Registered as
    ``mmsparse.GlobalAttentionLePE``.

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads; the released models use 8 whatever C is.
            Defaults to 8.
        lepe_kernel (int): kernel size of the depthwise LePE conv, a positive
            odd int (the official ``side_dwconv``). Defaults to 5.

    Shape:
        (N, H, W, C) -> (N, H, W, C)
    """

    def __init__(self, embed_dims, num_heads=8, lepe_kernel=5):
        super().__init__()
        check_num_heads(num_heads, embed_dims)
        self.num_heads = num_heads
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=False)
        self.lepe = build_lepe(embed_dims, lepe_kernel)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, x):
        n, height, width, c = x.shape
        qkv = self.qkv(x).reshape(n, height * width, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(n, height, width, c)
        out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out)
