"""Hierarchical multi-head self-attention (HAT-Net, arXiv 2106.03180) as functional ops.

H-MHSA interleaves attention with norms and projections that own parameters, so
the op is its three parameter-free steps; :class:`mmsparse.models.attentions.
HierarchicalMHSA` composes them with its norms and 1x1 convs:

* :func:`grid_attention` - local attention inside ``G x G`` windows, any ``H x W``;
* :func:`cell_average_pool` - average pooling that keeps partial border cells;
* :func:`global_attention` - full-resolution queries against (pooled) keys/values.

Backends (resolved by :func:`mmsparse.ops._dispatch.resolve_backend`, so the
``backend=`` argument beats ``MMSPARSE_ATTN_BACKEND``, which beats the device):
``'torch'`` is the plain matmul-softmax reference; ``'triton'`` selects the fast
path, which for H-MHSA is ``F.scaled_dot_product_attention`` (fused FlashAttention /
memory-efficient kernels on CUDA; it also runs on CPU); ``'auto'`` takes the fast
path for CUDA tensors and the reference elsewhere. No Triton kernel is involved:
both attention steps are dense attention over small key sets, which SDPA serves.
"""
import torch.nn.functional as F

from .._checks import check_attention_tensors, check_positive_int, check_scale
from .._dispatch import resolve_backend
from .reference import (attention_reference, merge_heads, split_heads, window_key_mask,
                        window_merge, window_partition)
from .sdpa import attention_sdpa


def _attention_core(backend, *tensors):
    fast = resolve_backend(backend, *tensors, needs_triton=False) == 'triton'
    return attention_sdpa if fast else attention_reference


def _check_maps(op, name_to_map, num_heads, scale):
    check_attention_tensors(op, name_to_map)
    check_positive_int(op, 'num_heads', num_heads)
    check_scale(op, scale)
    for name, x in name_to_map.items():
        if x.dim() != 4:
            raise ValueError(f'{name} must be an NCHW map (B, C, H, W); got shape {tuple(x.shape)}')
        if x.shape[1] % num_heads:
            raise ValueError(f'num_heads={num_heads!r} must be a positive int dividing the '
                             f'channels of {name} ({x.shape[1]})')


def _check_positive_int(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name}={value!r} must be a positive int')


def grid_attention(q, k, v, num_heads, grid_size, scale=None, backend=None):
    """Local multi-head attention inside non-overlapping ``G x G`` windows (the H-MHSA local step).

    Window ``(i, j)`` covers rows ``[i*G, i*G+G)`` and columns ``[j*G, j*G+G)``. If
    ``G`` does not divide ``H`` or ``W``, the maps are padded at the bottom/right to
    ``ceil(H/G)*G x ceil(W/G)*G`` and padded tokens are masked out of every
    softmax; the padded output rows are cropped. The valid output is therefore
    independent of the padding, and identical to the official reshape when ``G``
    divides both sides. Every window contains its top-left (valid) token, so no
    softmax row is empty.

    Args:
        q, k, v (Tensor): (B, C, H, W), channels head-major.
        num_heads (int): heads; must divide C.
        grid_size (int): window side G.
        scale (float, optional): logit scale; default ``(C/num_heads) ** -0.5``.
        backend (str, optional): ``'auto'``, ``'torch'`` or ``'triton'`` (SDPA).

    Returns:
        Tensor: (B, C, H, W).
    """
    _check_maps('grid_attention', {'q': q, 'k': k, 'v': v}, num_heads, scale)
    if not q.shape == k.shape == v.shape:
        raise ValueError(f'q, k, v must have the same shape; got {tuple(q.shape)}, '
                         f'{tuple(k.shape)}, {tuple(v.shape)}')
    _check_positive_int('grid_size', grid_size)
    b, c, h, w = q.shape
    scale = (c // num_heads)**-0.5 if scale is None else scale
    attend = _attention_core(backend, q, k, v)
    mask = window_key_mask(b, h, w, grid_size, q.device)
    out = attend(*(window_partition(t, num_heads, grid_size) for t in (q, k, v)), scale, mask)
    return window_merge(out, b, h, w, grid_size)


def global_attention(q, k, v, num_heads, scale=None, backend=None):
    """Every query token against every key token (the H-MHSA global step; plain MHSA).

    Args:
        q (Tensor): (B, C, H, W) queries.
        k, v (Tensor): (B, C, Hk, Wk) keys and values, e.g. pooled by
            :func:`cell_average_pool`; ``Hk x Wk`` may differ from ``H x W``.
        num_heads (int): heads; must divide C.
        scale (float, optional): logit scale; default ``(C/num_heads) ** -0.5``.
        backend (str, optional): ``'auto'``, ``'torch'`` or ``'triton'`` (SDPA).

    Returns:
        Tensor: (B, C, H, W).
    """
    _check_maps('global_attention', {'q': q, 'k': k, 'v': v}, num_heads, scale)
    if k.shape != v.shape or k.shape[:2] != q.shape[:2]:
        raise ValueError(f'k and v must have the same shape and share (B, C) with q; got q '
                         f'{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}')
    h, w = q.shape[2:]
    scale = (q.shape[1] // num_heads)**-0.5 if scale is None else scale
    attend = _attention_core(backend, q, k, v)
    out = attend(*(split_heads(t, num_heads) for t in (q, k, v)), scale)
    return merge_heads(out, h, w)


def cell_average_pool(x, ratio):
    """Mean over ``r x r`` cells, keeping partial cells at the bottom/right border.

    Cell ``(i, j)`` covers rows ``[i*r, min(i*r+r, H))`` and columns
    ``[j*r, min(j*r+r, W))`` and is divided by its clipped size, i.e. padded
    positions never enter the mean. Equals ``AvgPool2d(r, r)`` (the official
    merge step) when ``r`` divides both sides.

    Args:
        x (Tensor): (B, C, H, W).
        ratio (int): cell side r (kernel = stride).

    Returns:
        Tensor: (B, C, ceil(H/r), ceil(W/r)).
    """
    _check_positive_int('ratio', ratio)
    if ratio == 1:
        return x
    return F.avg_pool2d(x, ratio, ratio, ceil_mode=True)


__all__ = ['grid_attention', 'global_attention', 'cell_average_pool', 'attention_reference',
           'attention_sdpa']
