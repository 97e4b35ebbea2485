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


def num_windows(size, grid_size):
    """``ceil(size / grid_size)``, the windows along one side.

    Written with non-negative operands only: under ``torch.export`` the sizes are
    symbolic and the arithmetic lands in the ONNX graph, whose integer division
    truncates toward zero, so ``-(-size // grid_size)`` would floor there instead.
    """
    return (size + grid_size - 1) // grid_size


def _padded(height, width, grid_size):
    """Whether the windows pad the map; always for symbolic sizes, whose divisibility is not
    known when the graph is traced (the pad and crop are then by zero rows when they divide)."""
    concrete = isinstance(height, int) and isinstance(width, int)
    return not (concrete and height % grid_size == 0 and width % grid_size == 0)


def window_partition(x, num_heads, grid_size):
    """Split a map into windows: (B, C, H, W) -> (B*nH*nW, heads, G*G, d), one copy.

    ``H`` and ``W`` are zero-padded up to multiples of ``G`` (``nH = ceil(H/G)``,
    ``nW = ceil(W/G)``) only when ``G`` does not divide them: the permute is the one copy
    the official reshape makes too, and a pad by zero would be a second. Windows are
    ordered batch-major, then row-major. q, k and v are partitioned one by one: stacking
    them first would copy them once more.
    """
    b, c, h, w = x.shape
    g = grid_size
    n_h, n_w = num_windows(h, g), num_windows(w, g)
    if _padded(h, w, g):
        x = F.pad(x, (0, n_w * g - w, 0, n_h * g - h))
    x = x.reshape(b, num_heads, c // num_heads, n_h, g, n_w, g)
    return x.permute(0, 3, 5, 1, 4, 6, 2).reshape(b * n_h * n_w, num_heads, g * g, c // num_heads)


def window_merge(x, batch, height, width, grid_size):
    """Inverse of :func:`window_partition`, cropping the padding: -> (B, C, H, W).

    Unpadded maps are not sliced: the backward of even a full-size slice writes the gradient
    into a zero-filled copy.
    """
    g = grid_size
    n_h, n_w = num_windows(height, g), num_windows(width, g)
    num_heads, d = x.shape[1], x.shape[3]
    x = x.reshape(batch, n_h, n_w, num_heads, g, g, d).permute(0, 3, 6, 1, 4, 2, 5)
    x = x.reshape(batch, num_heads * d, n_h * g, n_w * g)
    return x[:, :, :height, :width] if _padded(height, width, g) else x


def window_key_mask(batch, height, width, grid_size, device):
    """Which keys of each padded window are real tokens.

    Returns:
        Tensor | None: (B*nH*nW, 1, 1, G*G) bool, True for tokens inside the
        ``H x W`` map; None when ``G`` divides both (concrete) sides, as nothing is padded.
    """
    per_window = window_validity(height, width, grid_size, torch.device(device))
    return None if per_window is None else per_window.repeat(batch, 1, 1, 1)


def window_validity(height, width, grid_size, device):
    """(nH*nW, 1, 1, G*G) bool validity of every window's keys, or None when nothing is padded.

    Built per call (a few hundred booleans): a cached tensor would be a real tensor
    inside the fake-tensor traces of ``torch.compile``. Symbolic sizes (``torch.export``,
    dynamic ``torch.compile``) always get the mask, computed from the runtime sizes: a
    branch on them would bake the traced size's window count into the graph.
    """
    g = grid_size
    if not _padded(height, width, g):
        return None
    n_h, n_w = num_windows(height, g), num_windows(width, g)
    rows = torch.arange(n_h * g, device=device) < height
    cols = torch.arange(n_w * g, device=device) < width
    valid = (rows[:, None] & cols[None, :]).reshape(n_h, g, n_w, g).permute(0, 2, 1, 3)
    return valid.reshape(n_h * n_w, 1, 1, g * g)


def attention_probabilities(q, k, scale, key_mask=None):
    """softmax((q * scale) @ k^T): the attention weights of :func:`attention_reference`.

    Args:
        q (Tensor): (..., Lq, d).
        k (Tensor): (..., Lk, d).
        scale (float): multiplies q before the product, as the official model.
        key_mask (Tensor, optional): bool, broadcastable to (..., Lq, Lk);
            False keys get zero weight. Every row keeps at least one key.

    Returns:
        Tensor: (..., Lq, Lk); every row sums to 1.
    """
    logits = (q * scale) @ k.transpose(-1, -2)
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask, float('-inf'))
    return logits.softmax(dim=-1)


def attention_reference(q, k, v, scale, key_mask=None):
    """softmax((q * scale) @ k^T) @ v, written out.

    Args:
        q (Tensor): (..., Lq, d).
        k, v (Tensor): (..., Lk, d).
        scale (float): multiplies q before the product, as the official model.
        key_mask (Tensor, optional): see :func:`attention_probabilities`.

    Returns:
        Tensor: (..., Lq, d).
    """
    return attention_probabilities(q, k, scale, key_mask) @ v
