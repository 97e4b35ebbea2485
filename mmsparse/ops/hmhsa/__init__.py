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

Each step is a ``torch.library`` custom op (``mmsparse::grid_attention``,
``mmsparse::global_attention``, ``mmsparse::cell_average_pool``): one node for
``torch.compile``, ``torch.jit.trace`` and the FLOP counter, with q, k, v (or x) first,
then the ints, the resolved scale and backend; backward reruns the implementation and
differentiates it. Under ONNX export the reference runs inline. The attention steps
report their calls to :mod:`mmsparse.ops.probe` and register their probabilities.
"""
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._checks import check_attention_tensors, check_positive_int, check_scale
from .._dispatch import recompute_gradients, resolve_backend, runs_inline
from ..probe import record_call, register_probabilities
from .reference import (attention_probabilities, attention_reference, merge_heads,
                        split_heads, window_key_mask, window_merge, window_partition,
                        window_validity)
from .sdpa import attention_sdpa


def _attention_core(backend):
    """The attention of a resolved backend; looked up at call time, so tests can spy on it."""
    return attention_sdpa if backend == 'triton' else attention_reference


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

    Runs as the custom op ``mmsparse::grid_attention(q, k, v, num_heads, grid_size, scale,
    backend)`` (scale and backend resolved), or inline under ONNX export.

    Args:
        q, k, v (Tensor): (B, C, H, W), channels head-major.
        num_heads (int): heads; must divide C.
        grid_size (int): window side G.
        scale (float, optional): logit scale; default ``(C/num_heads) ** -0.5``.
        backend (str, optional): ``'auto'``, ``'torch'`` or ``'triton'`` (SDPA).

    Returns:
        Tensor: (B, C, H, W); contiguous from the custom op, while an eager call on a padded
            map returns the crop, a strided view, instead of copying it.
    """
    _check_maps('grid_attention', {'q': q, 'k': k, 'v': v}, num_heads, scale)
    if not q.shape == k.shape == v.shape:
        raise ValueError(f'q, k, v must have the same shape; got {tuple(q.shape)}, '
                         f'{tuple(k.shape)}, {tuple(v.shape)}')
    _check_positive_int('grid_size', grid_size)
    scale = float((q.shape[1] // num_heads)**-0.5 if scale is None else scale)
    record_call('grid_attention', q=q, k=k, v=v, num_heads=num_heads, grid_size=grid_size, scale=scale,
                backend=backend)
    resolved = resolve_backend(backend, q, k, v, needs_triton=False)
    if runs_inline(q, k, v):
        return _grid_implementation(q, k, v, num_heads, grid_size, scale, resolved)
    return _grid_op(q, k, v, int(num_heads), int(grid_size), scale, resolved)


def _grid_implementation(q, k, v, num_heads, grid_size, scale, backend):
    b, _, h, w = q.shape
    windows = (window_partition(t, num_heads, grid_size) for t in (q, k, v))
    out = _attention_core(backend)(*windows, scale, window_key_mask(b, h, w, grid_size, q.device))
    return window_merge(out, b, h, w, grid_size)


# The custom ops return contiguous maps, as their fake implementations promise; inline calls
# return the implementation's layout (the crop of a padded map, or for one head the global
# step's (B, C, H, W) view of its token-major output), so that nothing is copied for it.
@torch.library.custom_op('mmsparse::grid_attention', mutates_args=())
def _grid_op(q: Tensor, k: Tensor, v: Tensor, num_heads: int, grid_size: int, scale: float,
             backend: str) -> Tensor:
    return _grid_implementation(q, k, v, num_heads, grid_size, scale, backend).contiguous()


@_grid_op.register_fake
def _grid_fake(q, k, v, num_heads, grid_size, scale, backend):
    return q.new_empty(q.shape)


def global_attention(q, k, v, num_heads, scale=None, backend=None):
    """Every query token against every key token (the H-MHSA global step; plain MHSA).

    Runs as the custom op ``mmsparse::global_attention(q, k, v, num_heads, scale, backend)``
    (scale and backend resolved), or inline under ONNX export.

    Args:
        q (Tensor): (B, C, H, W) queries.
        k, v (Tensor): (B, C, Hk, Wk) keys and values, e.g. pooled by
            :func:`cell_average_pool`; ``Hk x Wk`` may differ from ``H x W``.
        num_heads (int): heads; must divide C.
        scale (float, optional): logit scale; default ``(C/num_heads) ** -0.5``.
        backend (str, optional): ``'auto'``, ``'torch'`` or ``'triton'`` (SDPA).

    Returns:
        Tensor: (B, C, H, W); contiguous from the custom op, while an eager call with one
            head returns the map as a view of the token-major output, instead of copying it.
    """
    _check_maps('global_attention', {'q': q, 'k': k, 'v': v}, num_heads, scale)
    if k.shape != v.shape or k.shape[:2] != q.shape[:2]:
        raise ValueError(f'k and v must have the same shape and share (B, C) with q; got q '
                         f'{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}')
    scale = float((q.shape[1] // num_heads)**-0.5 if scale is None else scale)
    record_call('global_attention', q=q, k=k, v=v, num_heads=num_heads, scale=scale, backend=backend)
    resolved = resolve_backend(backend, q, k, v, needs_triton=False)
    if runs_inline(q, k, v):
        return _global_implementation(q, k, v, num_heads, scale, resolved)
    return _global_op(q, k, v, int(num_heads), scale, resolved)


def _global_implementation(q, k, v, num_heads, scale, backend):
    out = _attention_core(backend)(*(split_heads(t, num_heads) for t in (q, k, v)), scale)
    return merge_heads(out, *q.shape[2:])


@torch.library.custom_op('mmsparse::global_attention', mutates_args=())
def _global_op(q: Tensor, k: Tensor, v: Tensor, num_heads: int, scale: float, backend: str) -> Tensor:
    return _global_implementation(q, k, v, num_heads, scale, backend).contiguous()


@_global_op.register_fake
def _global_fake(q, k, v, num_heads, scale, backend):
    return q.new_empty(q.shape)


def _register_recomputed_autograd(op, implementation):
    """Backward of ``op(q, k, v, *rest)``: rerun ``implementation`` (plain aten ops) and differentiate."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:3])
        ctx.rest = inputs[3:]

    def backward(ctx, grad):
        grads = recompute_gradients(lambda q, k, v: implementation(q, k, v, *ctx.rest), ctx.saved_tensors, grad)
        return (*grads, *(None for _ in ctx.rest))

    op.register_autograd(backward, setup_context=setup_context)


_register_recomputed_autograd(_grid_op, _grid_implementation)
_register_recomputed_autograd(_global_op, _global_implementation)


@register_probabilities('grid_attention')
def grid_attention_probabilities(queries, q, k, v, num_heads, grid_size, scale, backend=None):
    """Probe: the reference's softmax probabilities of ``queries`` over the keys of their window.

    Args:
        queries (Tensor): 1-D int64 flat row-major indices into the ``H x W`` map.
        q, k, v, num_heads, grid_size, scale: the arguments the op recorded (``v`` and
            ``backend`` do not change the probabilities).

    Returns:
        tuple[Tensor, Tensor]: ``probs`` (B, heads, Q, G*G) and ``key_index`` (B, heads,
        Q, G*G), the flat row-major index of each key in the map; -1 (probability 0) for
        the padding of border windows.
    """
    b, c, h, w = q.shape
    g, n_w = grid_size, math.ceil(w / grid_size)
    y, x = queries // w, queries % w
    window, row = (y // g) * n_w + x // g, (y % g) * g + x % g
    # Only the windows of the queries: (B, heads, Q, G*G, d) keys, (B, heads, Q, 1, d) queries.
    q_win, k_win = (window_partition(t, num_heads, g).reshape(b, -1, num_heads, g * g, c // num_heads)
                    .transpose(1, 2)[:, :, window] for t in (q, k))
    q_row = q_win[:, :, torch.arange(len(queries), device=q.device), row].unsqueeze(-2)
    validity = window_validity(h, w, g, q.device)
    key_mask = None if validity is None else validity.reshape(-1, 1, g * g)[window]
    probs = attention_probabilities(q_row, k_win, scale, key_mask).squeeze(-2)
    slot = torch.arange(g * g, device=q.device)
    ky, kx = (window // n_w)[:, None] * g + slot // g, (window % n_w)[:, None] * g + slot % g
    key_index = torch.where((ky < h) & (kx < w), ky * w + kx, -1)
    return probs, key_index.expand(probs.shape)


@register_probabilities('global_attention')
def global_attention_probabilities(queries, q, k, v, num_heads, scale, backend=None):
    """Probe: the reference's softmax probabilities of ``queries`` over all (pooled) key cells.

    Args:
        queries (Tensor): 1-D int64 flat row-major indices into the ``H x W`` query map.
        q, k, v, num_heads, scale: the arguments the op recorded (``v`` and ``backend``
            do not change the probabilities).

    Returns:
        tuple[Tensor, Tensor]: ``probs`` (B, heads, Q, Hk*Wk) and ``key_index``, the flat
        row-major index of each cell in the ``Hk x Wk`` key map.
    """
    probs = attention_probabilities(split_heads(q, num_heads)[:, :, queries], split_heads(k, num_heads), scale)
    return probs, torch.arange(probs.shape[-1], device=q.device).expand(probs.shape)


def cell_average_pool(x, ratio):
    """Mean over ``r x r`` cells, keeping partial cells at the bottom/right border.

    Cell ``(i, j)`` covers rows ``[i*r, min(i*r+r, H))`` and columns
    ``[j*r, min(j*r+r, W))`` and is divided by its clipped size, i.e. padded
    positions never enter the mean. Equals ``AvgPool2d(r, r)`` (the official
    merge step) when ``r`` divides both sides. Runs as the custom op
    ``mmsparse::cell_average_pool(x, ratio)`` (inline under ONNX export); ``ratio=1``
    returns ``x`` itself.

    Args:
        x (Tensor): (B, C, H, W).
        ratio (int): cell side r (kernel = stride).

    Returns:
        Tensor: (B, C, ceil(H/r), ceil(W/r)).
    """
    _check_positive_int('ratio', ratio)
    if ratio == 1:
        return x
    if runs_inline(x):
        return _pool_implementation(x, ratio)
    return _pool_op(x, int(ratio))


def _pool_implementation(x, ratio):
    # ceil_mode keeps the partial border cells; without padding, avg_pool2d divides each
    # cell by the pixels it holds.
    return F.avg_pool2d(x, ratio, ratio, ceil_mode=True).contiguous()


@torch.library.custom_op('mmsparse::cell_average_pool', mutates_args=())
def _pool_op(x: Tensor, ratio: int) -> Tensor:
    return _pool_implementation(x, ratio)


@_pool_op.register_fake
def _pool_fake(x, ratio):
    return x.new_empty((*x.shape[:2], -(-x.shape[2] // ratio), -(-x.shape[3] // ratio)))


def _pool_setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0])
    ctx.ratio = inputs[1]


def _pool_backward(ctx, grad):
    (x, ) = ctx.saved_tensors
    return recompute_gradients(lambda x: _pool_implementation(x, ctx.ratio), (x, ), grad)[0], None


_pool_op.register_autograd(_pool_backward, setup_context=_pool_setup_context)


__all__ = ['grid_attention', 'global_attention', 'cell_average_pool', 'grid_attention_probabilities',
           'global_attention_probabilities', 'attention_reference', 'attention_probabilities', 'attention_sdpa']
