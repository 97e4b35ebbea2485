"""2-D (dilated) neighborhood attention (NAT arXiv 2204.07143, DiNAT arXiv 2209.15001) as a functional op."""
from .._checks import check_attention_tensors, check_scale
from .._dispatch import resolve_backend
from .reference import na2d_logits_reference, na2d_reference, neighborhood_indices


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
    if scale is None:
        scale = q.shape[-1]**-0.5
    if rpb is not None and rpb.dtype != q.dtype:
        rpb = rpb.to(q.dtype)  # e.g. fp32 parameter under autocast, as NATTEN's cast_inputs
    if resolve_backend(backend, q, k, v) == 'triton':
        from .triton_kernels import na2d_triton
        return na2d_triton(q, k, v, kernel_size, dilation, rpb, scale)
    return na2d_reference(q, k, v, kernel_size, dilation, rpb, scale)


def _check_inputs(q, k, v, kernel_size, dilation, rpb, scale):
    op = 'neighborhood_attention_2d'
    check_attention_tensors(op, {'q': q, 'k': k, 'v': v})
    if rpb is not None:  # any floating dtype: cast to q.dtype below (autocast)
        check_attention_tensors(op, {'q': q, 'rpb': rpb}, same_dtype=False)
    check_scale(op, scale)
    if (q.dim() != 5 or k.shape != v.shape or k.dim() != 5 or q.shape[:2] != k.shape[:2]
            or q.shape[4] != k.shape[4] or q.shape[2] > k.shape[2] or q.shape[3] > k.shape[3]):
        raise ValueError(f'k and v must be (B, heads, H, W, hd) maps of the same shape and q a '
                         f'(B, heads, Hq, Wq, hd) map with Hq <= H, Wq <= W; got q {tuple(q.shape)}, '
                         f'k {tuple(k.shape)}, v {tuple(v.shape)}')
    if not isinstance(kernel_size, int) or kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError(f'kernel_size={kernel_size!r} must be an odd int >= 3')
    if not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f'dilation={dilation!r} must be an int >= 1')
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


__all__ = ['neighborhood_attention_2d', 'na2d_reference', 'na2d_logits_reference', 'neighborhood_indices']
