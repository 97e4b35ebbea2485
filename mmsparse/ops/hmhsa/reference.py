"""Pure-PyTorch pieces of H-MHSA: the readable specification.

Hierarchical multi-head self-attention (Liu et al., "Vision Transformers with
Hierarchical Attention", MIR 2024, arXiv 2106.03180). Maps are NCHW with
head-major channels (``channel = head * head_dim + j``), as in the official model.

Local step: non-overlapping ``G x G`` windows (row-major blocks, tokens row-major
inside a window). Maps whose sides are not multiples of ``G`` are zero-padded at
the bottom/right; padded tokens are masked out as keys, and their query rows are
cropped away, so the padding has no effect on the valid output.
Global step: every query token against the tokens of a (pooled) key/value map.
"""
from functools import lru_cache

import torch
import torch.nn.functional as F


def split_heads(x, num_heads):
    """(B, C, H, W) -> (B, heads, H*W, C/heads), tokens row-major."""
    b, c, h, w = x.shape
    return x.reshape(b, num_heads, c // num_heads, h * w).transpose(-1, -2)


def merge_heads(x, height, width):
    """Inverse of :func:`split_heads`: (B, heads, H*W, d) -> (B, heads*d, H, W)."""
    b, num_heads, _, d = x.shape
    return x.transpose(-1, -2).reshape(b, num_heads * d, height, width)


def window_partition(x, num_heads, grid_size):
    """Pad and split a map into windows: (B, C, H, W) -> (B*nH*nW, heads, G*G, d).

    ``H`` and ``W`` are zero-padded up to multiples of ``G`` (``nH = ceil(H/G)``,
    ``nW = ceil(W/G)``); windows are ordered batch-major, then row-major.
    """
    b, c, h, w = x.shape
    g = grid_size
    x = F.pad(x, (0, -w % g, 0, -h % g))
    n_h, n_w = x.shape[2] // g, x.shape[3] // g
    x = x.reshape(b, num_heads, c // num_heads, n_h, g, n_w, g)
    return x.permute(0, 3, 5, 1, 4, 6, 2).reshape(b * n_h * n_w, num_heads, g * g, c // num_heads)


def window_merge(x, batch, height, width, grid_size):
    """Inverse of :func:`window_partition`, cropping the padding: -> (B, C, H, W)."""
    g = grid_size
    n_h, n_w = -(-height // g), -(-width // g)
    num_heads, d = x.shape[1], x.shape[3]
    x = x.reshape(batch, n_h, n_w, num_heads, g, g, d).permute(0, 3, 6, 1, 4, 2, 5)
    x = x.reshape(batch, num_heads * d, n_h * g, n_w * g)
    return x[:, :, :height, :width]


def window_key_mask(batch, height, width, grid_size, device):
    """Which keys of each padded window are real tokens.

    Returns:
        Tensor | None: (B*nH*nW, 1, 1, G*G) bool, True for tokens inside the
        ``H x W`` map; None when ``G`` divides both sides (nothing is padded).
    """
    per_window = _window_validity(height, width, grid_size, torch.device(device))
    return None if per_window is None else per_window.repeat(batch, 1, 1, 1)


@lru_cache(maxsize=64)
def _window_validity(height, width, grid_size, device):
    """(nH*nW, 1, 1, G*G) bool validity of every window's keys, built once per map size."""
    g = grid_size
    if height % g == 0 and width % g == 0:
        return None
    n_h, n_w = -(-height // g), -(-width // g)
    rows = torch.arange(n_h * g, device=device) < height
    cols = torch.arange(n_w * g, device=device) < width
    valid = (rows[:, None] & cols[None, :]).reshape(n_h, g, n_w, g).permute(0, 2, 1, 3)
    return valid.reshape(n_h * n_w, 1, 1, g * g)


def attention_reference(q, k, v, scale, key_mask=None):
    """softmax((q * scale) @ k^T) @ v, written out.

    Args:
        q (Tensor): (..., Lq, d).
        k, v (Tensor): (..., Lk, d).
        scale (float): multiplies q before the product, as the official model.
        key_mask (Tensor, optional): bool, broadcastable to (..., Lq, Lk);
            False keys get zero weight. Every row keeps at least one key.

    Returns:
        Tensor: (..., Lq, d).
    """
    logits = (q * scale) @ k.transpose(-1, -2)
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask, float('-inf'))
    return logits.softmax(dim=-1) @ v
