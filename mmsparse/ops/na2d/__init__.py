"""2-D (dilated) neighborhood attention (NAT arXiv 2204.07143, DiNAT arXiv 2209.15001) as a functional op.

The public function checks its arguments and calls one ``torch.library`` op, one node
for ``torch.compile``, ``torch.jit.trace`` and the FLOP counter:

* the torch backend: the custom op ``mmsparse::neighborhood_attention_2d`` (schema:
  ``q, k, v, kernel_size, dilation, rpb, scale``), or its implementation inline for an
  eager call (:func:`mmsparse.ops._dispatch.runs_inline`);
* the triton backend: the ``triton_op`` ``mmsparse::neighborhood_attention_2d_triton``
  (same arguments; :mod:`mmsparse.ops.na2d.triton_kernels`).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._checks import check_attention_tensors, check_dilation, check_kernel_size, check_scale
from .._dispatch import check_triton_device, resolve_backend, runs_inline
from ..probe import record_call, register_probabilities
from .reference import (na2d_dense, na2d_logits_reference, na2d_probabilities_reference, na2d_reference,
                        na2d_torch, na2d_torch_algorithm, neighbor_key_index, neighborhood_indices)

OP = 'neighborhood_attention_2d'


def neighborhood_attention_2d(q, k, v, kernel_size, dilation=1, rpb=None, scale=None, backend=None):
    """2-D neighborhood attention with NATTEN 0.14 semantics.

    Every query at ``(i, j)`` attends to ``kernel_size**2`` keys: along each axis
    the ``k`` positions ``start + t*d`` of its residue class ``i mod d``, with the
    window centred where it fits and shifted inward at the borders (never
    zero-padded). ``logit = scale * q.k + rpb[head, k-1 + di, k-1 + dj]``, where
    ``(di, dj)`` is the key-query offset in dilated steps; softmax over the
    neighbours; output ``sum_t p_t v_t``. Maps smaller than ``k*d`` must be padded
    by the caller (:class:`mmsparse.models.attentions.NeighborhoodAttention2d`
    does it the way the checkpoints were trained).

    Args:
        q (Tensor): (B, heads, Hq, Wq, hd) float: the queries at the top-left
            ``Hq x Wq`` corner of the map (``Hq <= H``, ``Wq <= W``; usually the whole
            map). Only these outputs are computed, e.g. the un-padded part of a
            padded map. Any ``hd`` (the Triton kernels are tuned for 16/32/64/128).
        k, v (Tensor): (B, heads, H, W, hd), same dtype and device;
            ``H, W >= kernel_size * dilation``.
        kernel_size (int): odd window size ``k > 1``.
        dilation (int): dilation ``d >= 1``, the same on both axes.
        rpb (Tensor, optional): (heads, 2k-1, 2k-1) relative positional bias,
            shared by all queries; differentiable.
        scale (float, optional): multiplies ``q``; default ``hd ** -0.5``.
        backend (str, optional): ``'auto'``, ``'torch'`` or ``'triton'``; see
            :func:`mmsparse.ops._dispatch.resolve_backend`.

    Returns:
        Tensor: (B, heads, Hq, Wq, hd), dtype of ``v``.
    """
    _check_inputs(q, k, v, kernel_size, dilation, rpb, scale)
    scale = float(q.shape[-1]**-0.5 if scale is None else scale)
    record_call(OP, q=q, k=k, v=v, kernel_size=kernel_size, dilation=dilation, rpb=rpb, scale=scale,
                backend=backend)
    if rpb is not None and rpb.dtype != q.dtype:
        rpb = rpb.to(q.dtype)  # e.g. fp32 parameter under autocast, as NATTEN's cast_inputs
    resolved = resolve_backend(backend, q, k, v)
    if resolved == 'triton':  # here, since on meta tensors the custom op runs its fake
        for name, t in (('q', q), ('k', k), ('v', v), ('rpb', rpb)):
            if t is not None:
                check_triton_device(name, t)
    if resolved == 'triton':
        from . import triton_kernels
        return triton_kernels.na2d_triton(q, k, v, kernel_size, dilation, rpb, scale)
    if runs_inline(q, k, v, rpb):
        return na2d_torch(q, k, v, kernel_size, dilation, rpb, scale)
    return _na2d_op(q, k, v, kernel_size, dilation, rpb, scale)


@torch.library.custom_op(f'mmsparse::{OP}', mutates_args=())
def _na2d_op(q: Tensor, k: Tensor, v: Tensor, kernel_size: int, dilation: int, rpb: Optional[Tensor],
             scale: float) -> Tensor:
    # Contiguous, as the fake implementation promises.
    return na2d_torch(q, k, v, kernel_size, dilation, rpb, scale).contiguous()


@_na2d_op.register_fake
def _na2d_fake(q, k, v, kernel_size, dilation, rpb, scale):
    return q.new_empty(q.shape[:4] + v.shape[4:])


def _setup_context(ctx, inputs, output):
    q, k, v, kernel_size, dilation, rpb, scale = inputs
    ctx.save_for_backward(q, k, v, rpb)
    ctx.na = (kernel_size, dilation, scale)


def _backward(ctx, grad_out):
    q, k, v, rpb = ctx.saved_tensors
    kernel_size, dilation, scale = ctx.na
    dq, dk, dv, d_rpb = _na2d_backward_op(grad_out, q, k, v, kernel_size, dilation, rpb, scale)
    return dq, dk, dv, None, None, d_rpb if rpb is not None else None, None


_na2d_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op(f'mmsparse::{OP}_backward', mutates_args=())
def _na2d_backward_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, kernel_size: int, dilation: int,
                      rpb: Optional[Tensor], scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(dq, dk, dv, d_rpb)`` of ``mmsparse::neighborhood_attention_2d``; ``d_rpb`` is empty without rpb.

    Its own op, so that a compiled graph calls it on real tensors: recomputed there, the
    forward takes the algorithm of an eager call (:func:`na2d_torch`: tiled on large maps).
    Traced into the backward graph as aten ops, it would recompute with the traced algorithm
    (dense or gather; the gather on NAT-T's 56x56 first stage at 224).
    """
    # torch.func.vjp, not torch.autograd: a custom op runs below the autograd dispatch key,
    # where only a functorch transform can differentiate. The algorithm is picked outside it,
    # on the real tensors (it may read rpb's values).
    algorithm = na2d_torch_algorithm(q, k, kernel_size, rpb)
    primals = (q, k, v) if rpb is None else (q, k, v, rpb)
    _, vjp = torch.func.vjp(
        lambda q, k, v, *bias: algorithm(q, k, v, kernel_size, dilation, bias[0] if bias else None, scale), *primals)
    grads = vjp(grad_out) + ((None, ) if rpb is None else ())
    # Contiguous (and an empty d_rpb without rpb), as the fake implementation promises.
    return tuple(q.new_empty(0) if g is None else g.contiguous() for g in grads)


@_na2d_backward_op.register_fake
def _na2d_backward_fake(grad_out, q, k, v, kernel_size, dilation, rpb, scale):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            q.new_empty(0) if rpb is None else rpb.new_empty(rpb.shape))


@register_probabilities(OP)
def na2d_probabilities(queries, q, k, v, kernel_size, dilation=1, rpb=None, scale=None, backend=None):
    """Probe: the reference's softmax probabilities of ``queries`` over their ``k*k`` neighbours.

    Args:
        queries (Tensor): 1-D int64 flat row-major indices into the ``Hq x Wq`` query map.
        q, k, v, kernel_size, dilation, rpb, scale: the arguments the op recorded (``v`` and
            ``backend`` are not needed: the probabilities do not depend on them).

    Returns:
        tuple[Tensor, Tensor]: ``probs`` (B, heads, Q, k*k) and ``key_index`` (B, heads,
        Q, k*k), the flat row-major index of each neighbour in the ``H x W`` key map.
    """
    scale = q.shape[-1]**-0.5 if scale is None else scale
    rpb = None if rpb is None else rpb.to(q.dtype)
    probs = na2d_probabilities_reference(q, k, kernel_size, dilation, rpb, scale).flatten(2, 3)[:, :, queries]
    key_index = neighbor_key_index(q, k, kernel_size, dilation)[queries]
    return probs, key_index.expand(probs.shape)


def _check_inputs(q, k, v, kernel_size, dilation, rpb, scale):
    op = OP
    check_attention_tensors(op, {'q': q, 'k': k, 'v': v})
    if rpb is not None:  # any floating dtype: cast to q.dtype below (autocast)
        check_attention_tensors(op, {'q': q, 'rpb': rpb}, same_dtype=False)
    check_scale(op, scale)
    if (q.dim() != 5 or k.shape != v.shape or k.dim() != 5 or q.shape[:2] != k.shape[:2]
            or q.shape[4] != k.shape[4] or q.shape[2] > k.shape[2] or q.shape[3] > k.shape[3]):
        raise ValueError(f'k and v must be (B, heads, H, W, hd) maps of the same shape and q a '
                         f'(B, heads, Hq, Wq, hd) map with Hq <= H, Wq <= W; got q {tuple(q.shape)}, '
                         f'k {tuple(k.shape)}, v {tuple(v.shape)}')
    check_kernel_size(kernel_size)
    check_dilation(dilation)
    height, width = k.shape[2:4]
    window = kernel_size * dilation
    if height < window or width < window:
        raise ValueError(f'the map size {height}x{width} must be at least kernel_size * dilation = '
                         f'{kernel_size} * {dilation} = {window} on both sides; pad the input first')
    if rpb is not None:
        expected = (q.shape[1], 2 * kernel_size - 1, 2 * kernel_size - 1)
        if tuple(rpb.shape) != expected:
            raise ValueError(f'rpb.shape={tuple(rpb.shape)} must be (heads, 2k-1, 2k-1) = {expected} '
                             f'for kernel_size={kernel_size}')


__all__ = ['neighborhood_attention_2d', 'na2d_probabilities', 'na2d_reference', 'na2d_dense', 'na2d_torch',
           'na2d_logits_reference', 'na2d_probabilities_reference', 'neighbor_key_index', 'neighborhood_indices']
