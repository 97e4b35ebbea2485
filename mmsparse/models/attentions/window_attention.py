import torch
import torch.nn.functional as F
from mmengine.model.weight_init import trunc_normal_
from torch import nn

from mmsparse.ops._checks import check_num_heads
from mmsparse.registry import MODELS
from ..layers import pad_nhwc_to_multiple
from .base import TokenMixer

# Logit added between tokens of different regions of a shifted window (Swin's value).
_SHIFT_MASK_VALUE = -100.


def window_partition(x, window_size):
    """(N, H, W, C) with sides divisible by ``window_size`` -> (N * nW, window_size**2, C)."""
    n, height, width, channels = x.shape
    x = x.view(n, height // window_size, window_size, width // window_size, window_size, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, channels)


def window_merge(windows, n, height, width, window_size):
    """Inverse of :func:`window_partition`: -> (N, H, W, C)."""
    x = windows.view(n, height // window_size, width // window_size, window_size, window_size, -1)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(n, height, width, -1)


@MODELS.register_module()
class WindowAttention(TokenMixer):
    """Swin window attention (Liu et al., ICCV 2021, arXiv 2103.14030) with relative position bias.

    Multi-head self-attention inside non-overlapping ``window_size`` windows. With
    ``shift=True`` the map is rolled by ``window_size // 2`` first and tokens of
    different regions of a wrapped window are masked (logit -100, as in Swin), so
    alternating ``shift=False``/``True`` layers make Swin's shifted windows;
    ``shift='alternate'`` does that from one config: the block at ``block_index``
    ``1, 3, 5, ...`` of its stage shifts (the backbone passes the index). Maps not
    divisible by the window are zero-padded at the bottom/right before the qkv
    projection and cropped after, as Swin does (padded tokens are attended as
    ordinary keys). Registered as ``mmsparse.WindowAttention``.

    Args:
        embed_dims (int): channels C.
        num_heads (int): heads; must divide C.
        window_size (int): window side. Defaults to 7.
        shift (bool | str): shifted windows: False, True, or ``'alternate'`` (Swin:
            odd blocks of a stage shift). Defaults to False.
        qkv_bias (bool): bias of the qkv projection. Defaults to True.
        block_index (int): index of the block within its stage, read only with
            ``shift='alternate'``. Defaults to 0.

    Shape:
        (N, H, W, C) -> (N, H, W, C)
    """

    SHIFTS = (False, True, 'alternate')

    def __init__(self, embed_dims, num_heads, window_size=7, shift=False, qkv_bias=True, block_index=0):
        super().__init__()
        check_num_heads(num_heads, embed_dims)
        if not isinstance(window_size, int) or isinstance(window_size, bool) or window_size < 1:
            raise ValueError(f'window_size={window_size!r} must be a positive int')
        if not (isinstance(shift, bool) or shift == 'alternate'):
            raise ValueError(f'shift={shift!r} is not allowed; expected one of {self.SHIFTS}')
        if not isinstance(block_index, int) or isinstance(block_index, bool) or block_index < 0:
            raise ValueError(f'block_index={block_index!r} must be a non-negative int')
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.window_size = window_size
        # Resolved per block: whether this block's windows are shifted.
        self.shift = block_index % 2 == 1 if shift == 'alternate' else shift
        self.qkv = nn.Linear(embed_dims, 3 * embed_dims, bias=qkv_bias)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1)**2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size),
                                            indexing='ij')).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :] + window_size - 1
        self.register_buffer('relative_position_index', rel[0] * (2 * window_size - 1) + rel[1],
                             persistent=False)

    def init_weights(self):
        """Swin's init of the bias table: trunc-normal, std 0.02."""
        trunc_normal_(self.relative_position_bias_table, std=.02)

    def _shift_mask(self, height, width, device):
        """(nW, L, L) additive mask of the shifted windows of a padded ``height x width`` map."""
        size, shift = self.window_size, self.window_size // 2
        labels = torch.zeros(1, height, width, 1, device=device)
        bounds = (slice(0, -size), slice(-size, -shift), slice(-shift, None))
        for i, rows in enumerate(bounds):
            for j, cols in enumerate(bounds):
                labels[:, rows, cols] = 3 * i + j
        labels = window_partition(labels, size).squeeze(-1)
        return (labels[:, :, None] != labels[:, None, :]).float() * _SHIFT_MASK_VALUE

    def forward(self, x):
        n, height, width, channels = x.shape
        size = self.window_size
        x = pad_nhwc_to_multiple(x, size)
        pad_h, pad_w = x.shape[1:3]
        shift = size // 2 if self.shift else 0
        if shift:
            x = torch.roll(x, (-shift, -shift), dims=(1, 2))
        windows = window_partition(x, size)
        length = size * size
        qkv = self.qkv(windows).reshape(-1, length, 3, self.num_heads, channels // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(length, length, self.num_heads).permute(2, 0, 1).to(q.dtype)
        if shift:
            mask = self._shift_mask(pad_h, pad_w, x.device).to(q.dtype)
            bias = (mask[None, :, None] + bias[None, None]).expand(n, -1, -1, -1, -1)
            bias = bias.reshape(-1, self.num_heads, length, length)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.proj(out.transpose(1, 2).reshape(-1, length, channels))
        out = window_merge(out, n, pad_h, pad_w, size)
        if shift:
            out = torch.roll(out, (shift, shift), dims=(1, 2))
        return out[:, :height, :width]

    def extra_repr(self):
        return (f'embed_dims={self.embed_dims}, num_heads={self.num_heads}, '
                f'window_size={self.window_size}, shift={self.shift}')
