import torch.nn.functional as F
from torch import nn

from mmsparse.ops._checks import check_num_heads
from mmsparse.registry import MODELS
from .base import TokenMixer


@MODELS.register_module()
class DenseAttention(TokenMixer):
    """Dense multi-head self-attention over all tokens of the map.

    Softmax attention through ``F.scaled_dot_product_attention`` (fused flash /
    memory-efficient kernels on GPUs). Parameter names (``qkv``, ``proj``) follow
    timm, whose fused qkv rows are ``[q; k; v]`` and head-major inside each, so the
    dense ViT baseline loads timm checkpoints. Subclasses change only
    :meth:`attend` (see :class:`Fibottention2d`). Registered as
    ``mmsparse.DenseAttention``.

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads; must divide C.
        qkv_bias (bool): bias of the qkv projection. Defaults to True.

    Shape:
        (N, H, W, C) -> (N, H, W, C); :meth:`forward_tokens` takes token sequences.
    """

    def __init__(self, embed_dims, num_heads, qkv_bias=True):
        super().__init__()
        check_num_heads(num_heads, embed_dims)
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)

    def forward(self, x):
        n, height, width, channels = x.shape
        out = self.forward_tokens(x.reshape(n, height * width, channels), (height, width))
        return out.reshape(n, height, width, channels)

    def forward_tokens(self, x, grid_size, with_cls=False):
        """Attention over a token sequence.

        Args:
            x (Tensor): (B, T, C), ``T = with_cls + gh * gw``: the CLS token first
                if ``with_cls``, then the patch tokens row-major.
            grid_size (tuple[int, int]): the patch grid ``(gh, gw)``.
            with_cls (bool): token 0 is a CLS token. Defaults to False.

        Returns:
            Tensor: (B, T, C).
        """
        bsz, n_tokens, channels = x.shape
        qkv = self.qkv(x).reshape(bsz, n_tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        out = self.attend(q, k, v, grid_size, with_cls)
        return self.proj(out.transpose(1, 2).reshape(bsz, n_tokens, channels))

    def attend(self, q, k, v, grid_size, with_cls):
        """The attention itself: (B, heads, T, D) q, k, v -> (B, heads, T, D)."""
        return F.scaled_dot_product_attention(q, k, v)

    def extra_repr(self):
        return f'embed_dims={self.embed_dims}, num_heads={self.num_heads}'
