"""Bi-level routing attention (BiFormer, arXiv 2303.08810) as a functional op.

The public function checks its arguments and calls ``torch.library`` ops, one node each
for ``torch.compile``, ``torch.jit.trace`` and the FLOP counter:

* the torch backend: the custom op ``mmsparse::bi_level_routing_attention`` (schema:
  ``q, k, v, num_heads, n_win, topk, scale``; returns ``(out, region_index)``; routing
  runs inside the op), or its implementation inline for an eager call
  (:func:`mmsparse.ops._dispatch.runs_inline`);
* the triton backend: the routing as plain aten ops, then the ``triton_op``
  ``mmsparse::bi_level_routing_attention_triton`` (``q, k, v, region_index, num_heads,
  n_win, scale``; :mod:`mmsparse.ops.bra.triton_kernels`).
"""
from typing import Tuple

import torch
from torch import Tensor

from .._checks import check_attention_tensors, check_positive_int, check_scale, check_topk
from .._dispatch import check_triton_device, recompute_gradients, resolve_backend, runs_inline
from ..probe import record_call, register_probabilities
from .reference import (bra_attention_reference, bra_attention_sdpa, bra_probabilities_reference, region_merge,
                        region_partition, route_regions, routed_key_index)

OP = 'bi_level_routing_attention'


def bi_level_routing_attention(q, k, v, num_heads, n_win, topk, scale=None,
                               return_routing=False, backend=None):
    """Bi-level routing attention on NHWC maps.

    Routes every one of the ``n_win**2`` query regions to its ``topk`` key
    regions by the detached region means of ``q`` and ``k`` (one routing graph
    for all heads), then runs softmax attention from each query token to all
    tokens of the routed regions.

    Args:
        q, k (Tensor): (N, H, W, Cqk) float; ``H`` and ``W`` divisible by ``n_win``.
        v (Tensor): (N, H, W, Cv).
        num_heads (int): heads; must divide ``Cqk`` and ``Cv``.
        n_win (int): regions per side.
        topk (int): routed regions per query region, ``1 <= topk <= n_win**2``.
        scale (float, optional): logit scale; default ``Cqk ** -0.5``, the full
            qk width as in the official op (not the head width).
        return_routing (bool): also return the (N, n_win**2, topk) int64 routing.
        backend (str, optional): ``'auto'``, ``'torch'`` or ``'triton'``; see
            :func:`mmsparse.ops._dispatch.resolve_backend`.

    Returns:
        Tensor: (N, H, W, Cv), or ``(out, region_index)`` with ``return_routing``.
    """
    _check_inputs(q, k, v, num_heads, n_win, topk, scale)  # before routing touches q, k
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    record_call(OP, q=q, k=k, v=v, num_heads=num_heads, n_win=n_win, topk=topk, scale=scale,
                return_routing=return_routing, backend=backend)
    resolved = resolve_backend(backend, q, k, v)
    if resolved == 'triton':  # here, since on meta tensors the custom op runs its fake
        for name, t in (('q', q), ('k', k), ('v', v)):
            check_triton_device(name, t)
    if resolved == 'triton':
        from . import triton_kernels
        region_index = route_regions(q, k, n_win, topk, scale)
        out = triton_kernels.bra_attention_triton(q, k, v, region_index, num_heads, n_win, scale)
    elif runs_inline(q, k, v):
        out, region_index = _implementation(q, k, v, num_heads, n_win, topk, scale)
    else:
        out, region_index = _bra_op(q, k, v, int(num_heads), int(n_win), int(topk), scale)
    return (out, region_index) if return_routing else out


def _implementation(q, k, v, num_heads, n_win, topk, scale):
    """Routing, then the torch backend's attention over the routed regions."""
    region_index = route_regions(q, k, n_win, topk, scale)
    return bra_attention_sdpa(q, k, v, region_index, num_heads, n_win, scale), region_index


@torch.library.custom_op(f'mmsparse::{OP}', mutates_args=())
def _bra_op(q: Tensor, k: Tensor, v: Tensor, num_heads: int, n_win: int, topk: int,
            scale: float) -> Tuple[Tensor, Tensor]:
    out, region_index = _implementation(q, k, v, num_heads, n_win, topk, scale)
    # Contiguous, as the fake implementation promises.
    return out.contiguous(), region_index.contiguous()


@_bra_op.register_fake
def _bra_fake(q, k, v, num_heads, n_win, topk, scale):
    return v.new_empty(v.shape), q.new_empty((q.shape[0], n_win * n_win, topk), dtype=torch.int64)


def _setup_context(ctx, inputs, output):
    q, k, v, num_heads, n_win, topk, scale = inputs
    ctx.save_for_backward(q, k, v, output[1])
    ctx.bra = (num_heads, n_win, scale)


def _backward(ctx, grad_out, grad_region_index):
    # The routing is a constant for autograd (detached region means, diff_routing=False).
    q, k, v, region_index = ctx.saved_tensors
    num_heads, n_win, scale = ctx.bra
    dq, dk, dv = recompute_gradients(
        lambda q, k, v: bra_attention_sdpa(q, k, v, region_index, num_heads, n_win, scale), (q, k, v),
        grad_out)
    return dq, dk, dv, None, None, None, None


_bra_op.register_autograd(_backward, setup_context=_setup_context)


@register_probabilities(OP)
def bra_probabilities(queries, q, k, v, num_heads, n_win, topk, scale=None, return_routing=False, backend=None):
    """Probe: the reference's softmax probabilities of ``queries`` over their routed keys.

    Routing and probabilities come from the op's own functions (:func:`route_regions`,
    :func:`bra_probabilities_reference`).

    Args:
        queries (Tensor): 1-D int64 flat row-major indices into the ``H x W`` map.
        q, k, v, num_heads, n_win, topk, scale: the arguments the op recorded
            (``v``, ``return_routing`` and ``backend`` do not change the probabilities).

    Returns:
        tuple[Tensor, Tensor]: ``probs`` (N, heads, Q, topk*h*w) and ``key_index``
        (N, heads, Q, topk*h*w), the flat row-major index of each key in the map.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    width = q.shape[2]
    h, w = q.shape[1] // n_win, width // n_win
    region_index = route_regions(q, k, n_win, topk, scale)
    probs, key_index = bra_probabilities_reference(q, k, region_index, num_heads, n_win, scale)
    row, col = queries // width, queries % width
    region, token = (row // h) * n_win + col // w, (row % h) * w + col % w
    probs = probs.transpose(1, 2)[:, :, region, token]  # (N, heads, R, T, K) -> (N, heads, Q, K)
    return probs, key_index[:, region].unsqueeze(1).expand(probs.shape)


def _check_inputs(q, k, v, num_heads, n_win, topk, scale):
    op = OP
    check_attention_tensors(op, {'q': q, 'k': k, 'v': v})
    check_positive_int(op, 'num_heads', num_heads)
    check_positive_int(op, 'n_win', n_win)
    check_positive_int(op, 'topk', topk)
    check_scale(op, scale)
    if q.dim() != 4 or q.shape != k.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f'q, k, v must be NHWC maps with q.shape == k.shape and matching '
                         f'(N, H, W); got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}')
    height, width = q.shape[1:3]
    if height % n_win or width % n_win:
        raise ValueError(f'the map size {height}x{width} must be divisible by n_win={n_win}; '
                         'pad it first (the BRA module does this with auto_pad=True)')
    check_topk(topk, n_win)
    for name, channels in (('Cqk', q.shape[-1]), ('Cv', v.shape[-1])):
        if channels % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide {name}={channels}')


__all__ = ['bi_level_routing_attention', 'bra_probabilities', 'bra_attention_reference', 'bra_attention_sdpa',
           'bra_probabilities_reference', 'route_regions', 'routed_key_index', 'region_partition', 'region_merge']
