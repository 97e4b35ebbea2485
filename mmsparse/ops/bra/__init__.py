"""Bi-level routing attention (BiFormer, arXiv 2303.08810) as a functional op."""
from .._checks import check_attention_tensors, check_positive_int, check_scale
from .._dispatch import resolve_backend
from .reference import bra_attention_reference, region_merge, region_partition, route_regions


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
    if scale is None:
        scale = q.shape[-1] ** -0.5
    region_index = route_regions(q, k, n_win, topk, scale)
    if resolve_backend(backend, q, k, v) == 'triton':
        from .triton_kernels import bra_attention_triton
        out = bra_attention_triton(q, k, v, region_index, num_heads, n_win, scale)
    else:
        out = bra_attention_reference(q, k, v, region_index, num_heads, n_win, scale)
    return (out, region_index) if return_routing else out


def _check_inputs(q, k, v, num_heads, n_win, topk, scale):
    op = 'bi_level_routing_attention'
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
    if not 1 <= topk <= n_win * n_win:
        raise ValueError(f'topk={topk} must be in [1, n_win**2 = {n_win * n_win}]')
    for name, channels in (('Cqk', q.shape[-1]), ('Cv', v.shape[-1])):
        if channels % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide {name}={channels}')


__all__ = ['bi_level_routing_attention', 'bra_attention_reference', 'route_regions',
           'region_partition', 'region_merge']
