import torch.nn.functional as F
from torch import nn

from mmsparse.ops.fibottention import (LAYOUTS, MODES, SHUFFLES, fibottention_attention,
                                       fibottention_pattern)


class FibottentionAttention(nn.Module):
    """Multi-head self-attention of a ViT block with Fibottention (arXiv 2406.19391).

    The layer's head-shuffled Wythoff/Fibonacci pattern (:mod:`mmsparse.ops.fibottention`)
    is built per token grid and cached per device; the mask itself is never
    materialised. ``attention='dense'`` swaps in plain softmax attention
    (``F.scaled_dot_product_attention``) with the same parameters, for dense
    baselines. Parameter names (``qkv``, ``proj``) follow timm, whose fused qkv
    rows are ``[q; k; v]`` and head-major inside each.

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads; must divide C.
        layer_id (int): block index (head-shuffle seed with ``shuffle='per_layer'``).
        attention (str): ``'fibottention'`` or ``'dense'``.
        mode (str): ``'sparse'`` (masked logits -inf) or ``'official'`` (masked
            logits 0, the official code's multiplicative mask).
        shuffle (str): ``'per_layer'``, ``'shared'`` or ``'none'``.
        offset_layout (str): ``'1d'`` (official) or ``'2d'`` (axial ablation).
        qkv_bias (bool): bias of the qkv projection.
        backend (str, optional): op backend, see :func:`mmsparse.ops.fibottention_attention`.

    Shape:
        x: (B, 1 + gh*gw, C), CLS first, patch tokens row-major;
        grid_size: (gh, gw) -> (B, 1 + gh*gw, C).
    """

    ATTENTIONS = ('fibottention', 'dense')

    def __init__(self, embed_dims, num_heads, layer_id=0, attention='fibottention', mode='sparse',
                 shuffle='per_layer', offset_layout='1d', qkv_bias=True, backend=None):
        super().__init__()
        for name, value, allowed in (('attention', attention, self.ATTENTIONS), ('mode', mode, MODES),
                                     ('shuffle', shuffle, SHUFFLES),
                                     ('offset_layout', offset_layout, LAYOUTS)):
            if value not in allowed:
                raise ValueError(f'{name}={value!r} is not supported; expected one of {allowed}')
        if embed_dims % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide embed_dims={embed_dims}')
        self.num_heads = num_heads
        self.layer_id = layer_id
        self.attention = attention
        self.mode = mode
        self.shuffle = shuffle
        self.offset_layout = offset_layout
        self.backend = backend
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self._patterns = {}

    def pattern(self, grid_size, device):
        """This layer's :class:`~mmsparse.ops.fibottention.FibPattern` on ``device`` (cached)."""
        key = (tuple(grid_size), str(device))
        if key not in self._patterns:
            self._patterns[key] = fibottention_pattern(tuple(grid_size), self.num_heads, self.layer_id,
                                                       self.offset_layout, self.shuffle).to(device)
        return self._patterns[key]

    def forward(self, x, grid_size):
        bsz, n_tokens, channels = x.shape
        qkv = self.qkv(x).reshape(bsz, n_tokens, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        if self.attention == 'dense':
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = fibottention_attention(q, k, v, self.pattern(grid_size, x.device), mode=self.mode,
                               backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(bsz, n_tokens, channels))

    def extra_repr(self):
        return (f'num_heads={self.num_heads}, layer_id={self.layer_id}, attention={self.attention}, '
                f'mode={self.mode}, shuffle={self.shuffle}, offset_layout={self.offset_layout}')
