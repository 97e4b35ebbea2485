"""Pure-PyTorch 2-D neighborhood attention: the readable specification.

Exact semantics of NATTEN 0.14.4 (``natten2dqkrpb`` -> softmax -> ``natten2dav``),
the op the NAT (Hassani et al., CVPR 2023, arXiv 2204.07143) and DiNAT (Hassani &
Shi, arXiv 2209.15001) checkpoints were trained with:

* every query attends to exactly ``k x k`` keys; near a border the window shifts
  inward instead of being zero-padded;
* dilation ``d`` splits each axis into ``d`` interleaved residue classes and the
  (clamped) window lives inside the query's class, with stride ``d``;
* the relative positional bias table ``rpb`` (heads, 2k-1, 2k-1) is indexed by the
  key-query offset counted in dilated steps, plus ``k - 1``, and is added
  (unscaled) after ``q`` is scaled.

Two exact algorithms compute it (:func:`na2d_torch` picks by cost):

* :func:`na2d_reference`, the specification: the ``k*k`` neighbours of every query are
  gathered; memory and work linear in the number of tokens.
* :func:`na2d_dense`: scaled dot-product attention over all query-key pairs with the
  window and the bias as an additive mask (``-inf`` outside the window); quadratic, but
  a few large matmuls beat the gathers on small maps.
"""
from functools import lru_cache

import torch
import torch.nn.functional as F

from .._dispatch import torch_algorithm


def neighborhood_indices(length, kernel_size, dilation, device=None):
    """Neighbour and bias indices of every position along one axis.

    Args:
        length (int): axis length ``L``, at least ``kernel_size * dilation``.
        kernel_size (int): odd window size ``k``.
        dilation (int): dilation ``d``.
        device (torch.device, optional): device of the returned tensors.

    Returns:
        tuple[Tensor, Tensor]: ``(neighbors, bias)``, both (L, k) int64:
        ``neighbors[i, t]`` is the position of the ``t``-th neighbour of ``i``
        and ``bias[i, t]`` its row (or column) in the ``2k-1`` wide bias table.
    """
    pos = torch.arange(length, device=device)
    residue, group = pos % dilation, pos // dilation
    class_len = (length - residue + dilation - 1) // dilation
    start = torch.minimum((group - kernel_size // 2).clamp(min=0), class_len - kernel_size)
    steps = torch.arange(kernel_size, device=device)
    neighbors = (residue + start * dilation)[:, None] + steps * dilation
    bias = (kernel_size - 1 - (group - start))[:, None] + steps
    return neighbors, bias


def _gather_neighbors(x, rows, cols):
    """(B, heads, H, W, C) -> (B, heads, Hq, k, Wq, k, C): the neighbours of every query.

    ``rows`` (Hq, k) and ``cols`` (Wq, k) come from :func:`neighborhood_indices`. Two
    ``index_select`` calls (their backward is a fast ``index_add``) instead of one
    broadcast advanced index.
    """
    (num_rows, kernel_size), num_cols = rows.shape, cols.shape[0]
    x = x.index_select(2, rows.flatten()).index_select(3, cols.flatten())
    return x.unflatten(3, (num_cols, kernel_size)).unflatten(2, (num_rows, kernel_size))


def _query_indices(q, k, kernel_size, dilation):
    """Neighbour and bias indices of the ``Hq x Wq`` queries on the ``H x W`` key map."""
    (num_rows, num_cols), (height, width) = q.shape[2:4], k.shape[2:4]
    rows, bias_rows = neighborhood_indices(height, kernel_size, dilation, q.device)
    cols, bias_cols = neighborhood_indices(width, kernel_size, dilation, q.device)
    return rows[:num_rows], bias_rows[:num_rows], cols[:num_cols], bias_cols[:num_cols]


def na2d_logits_reference(q, k, kernel_size, dilation, rpb, scale):
    """The pre-softmax logits ``scale * q.k + rpb`` of every query and neighbour.

    Args:
        q (Tensor): (B, heads, Hq, Wq, hd): the queries at the top-left ``Hq x Wq``
            corner of the map (``Hq = H``, ``Wq = W`` for all of them).
        k (Tensor): (B, heads, H, W, hd), with ``H, W >= kernel_size * dilation``.
        kernel_size (int): odd window size ``k``.
        dilation (int): dilation ``d >= 1``.
        rpb (Tensor | None): (heads, 2k-1, 2k-1) relative positional bias.
        scale (float): multiplies ``q`` before the dot product.

    Returns:
        Tensor: (B, heads, Hq, Wq, k*k), neighbour ``t = ti*k + tj`` (NATTEN's
        ``natten2dqkrpb`` layout).
    """
    rows, bias_rows, cols, bias_cols = _query_indices(q, k, kernel_size, dilation)
    logits = torch.einsum('bnhwc,bnhiwjc->bnhwij', q * scale, _gather_neighbors(k, rows, cols))
    if rpb is not None:
        bias = rpb.index_select(1, bias_rows.flatten()).index_select(2, bias_cols.flatten())
        bias = bias.unflatten(2, (cols.shape[0], kernel_size)).unflatten(1, (rows.shape[0], kernel_size))
        logits = logits + bias.permute(0, 1, 3, 2, 4)
    return logits.flatten(-2)


def na2d_probabilities_reference(q, k, kernel_size, dilation, rpb, scale):
    """Softmax of :func:`na2d_logits_reference` over the ``k*k`` neighbours of every query.

    The op (:func:`na2d_reference`) and the probe (:func:`na2d_probabilities`) both take
    their probabilities from here. Arguments as :func:`na2d_logits_reference`.

    Returns:
        Tensor: (B, heads, Hq, Wq, k*k), neighbour ``t = ti*k + tj``.
    """
    return na2d_logits_reference(q, k, kernel_size, dilation, rpb, scale).softmax(dim=-1)


def na2d_reference(q, k, v, kernel_size, dilation, rpb, scale):
    """Neighborhood attention over heads-first maps, by gathering the neighbours.

    Args:
        q (Tensor): (B, heads, Hq, Wq, hd), see :func:`na2d_logits_reference`.
        k, v (Tensor): (B, heads, H, W, hd), with ``H, W >= kernel_size * dilation``.
        kernel_size, dilation, rpb, scale: see :func:`na2d_logits_reference`.

    Returns:
        Tensor: (B, heads, Hq, Wq, hd).
    """
    rows, _, cols, _ = _query_indices(q, k, kernel_size, dilation)
    attn = na2d_probabilities_reference(q, k, kernel_size, dilation, rpb, scale)
    attn = attn.unflatten(-1, (kernel_size, kernel_size))
    return torch.einsum('bnhwij,bnhiwjc->bnhwc', attn, _gather_neighbors(v, rows, cols))


@lru_cache(maxsize=64)
def _flat_window(q_shape, k_shape, kernel_size, dilation, device):
    """Flat key index (into ``H*W``) and flat bias index (into ``(2k-1)**2``) of every
    (query, neighbour) pair: (Hq*Wq, k*k) int64 each.

    Cached per geometry: a model calls the op with a handful of map sizes, and the index
    arithmetic would otherwise be redone on every call and layer.
    """
    (num_rows, num_cols), (height, width) = q_shape, k_shape
    rows, bias_rows = neighborhood_indices(height, kernel_size, dilation, device)
    cols, bias_cols = neighborhood_indices(width, kernel_size, dilation, device)
    table = 2 * kernel_size - 1
    keys = rows[:num_rows, None, :, None] * width + cols[None, :num_cols, None, :]
    bias = bias_rows[:num_rows, None, :, None] * table + bias_cols[None, :num_cols, None, :]
    return keys.reshape(num_rows * num_cols, -1), bias.reshape(num_rows * num_cols, -1)


def _traced(q):
    """Whether ``q`` is traced (fake or functional tensors, maybe symbolic shapes: the
    AOTAutograd backward, torch.export, torch.compile): a cached real tensor cannot enter
    that graph, so the indices and masks are built inside it."""
    return type(q) is not torch.Tensor or torch.compiler.is_compiling()


def _window(q, k, kernel_size, dilation):
    """:func:`_flat_window` of the maps of ``q`` and ``k``, from the cache when not traced."""
    args = (tuple(q.shape[2:4]), tuple(k.shape[2:4]), kernel_size, dilation, q.device)
    if _traced(q):
        return _flat_window.__wrapped__(*args)
    # Built outside inference mode: a cached inference tensor would break every later
    # call that autograd records.
    with torch.inference_mode(False):
        return _flat_window(*args)


def _build_dense_mask(keys, bias, num_keys, dtype, kernel_size):
    """The (Hq*Wq, H*W) mask of :func:`na2d_dense` from the :func:`_flat_window` indices.

    Args:
        keys, bias (Tensor): (Hq*Wq, k*k) int64 flat key and bias indices.
        num_keys (int): ``H*W``.
        dtype (torch.dtype | None): None for the bias index table, else the dtype of the
            additive mask.
        kernel_size (int): window size ``k``.

    Returns:
        Tensor: with ``dtype`` None, int64: the flat ``(2k-1)**2`` bias index inside each
        query's window and ``(2k-1)**2`` (the ``-inf`` slot appended to the bias) outside;
        otherwise the additive mask in ``dtype``: 0 inside, ``-inf`` outside.
    """
    if dtype is None:
        table = keys.new_full((keys.shape[0], num_keys), (2 * kernel_size - 1)**2)
        return table.scatter(1, keys, bias)
    mask = torch.full((keys.shape[0], num_keys), float('-inf'), dtype=dtype, device=keys.device)
    return mask.scatter(1, keys, 0.0)


@lru_cache(maxsize=8)
def _cached_dense_mask(q_shape, k_shape, kernel_size, dilation, device, dtype):
    """:func:`_build_dense_mask` per geometry, device and dtype.

    Cached like :func:`_flat_window`, but fewer entries: a mask is quadratic in the tokens
    (up to 20 MiB below the dense crossover of 1600 keys).
    """
    keys, bias = _flat_window(q_shape, k_shape, kernel_size, dilation, device)
    return _build_dense_mask(keys, bias, k_shape[0] * k_shape[1], dtype, kernel_size)


def _dense_mask(q, k, kernel_size, dilation, dtype):
    """:func:`_build_dense_mask` of the maps of ``q`` and ``k``, from the cache when not traced.

    Built inside the graph under ``torch.jit.trace`` too (the TorchScript ONNX exporter,
    ``torch.onnx.export(dynamo=False)``), whose graph would otherwise hold the quadratic
    mask as a constant of every layer.
    """
    height, width = k.shape[2:4]
    if _traced(q) or torch.jit.is_tracing():
        keys, bias = _window(q, k, kernel_size, dilation)
        return _build_dense_mask(keys, bias, height * width, dtype, kernel_size)
    with torch.inference_mode(False):  # as in _window
        return _cached_dense_mask(tuple(q.shape[2:4]), (height, width), kernel_size, dilation, q.device, dtype)


def neighbor_key_index(q, k, kernel_size, dilation):
    """(Hq*Wq, k*k) int64: the flat ``H*W`` index of neighbour ``t = ti*k + tj`` of each query."""
    return _window(q, k, kernel_size, dilation)[0]


def na2d_dense(q, k, v, kernel_size, dilation, rpb, scale):
    """Neighborhood attention as masked SDPA over all query-key pairs (exact, quadratic).

    Same arguments and result as :func:`na2d_reference`. The additive mask holds
    ``rpb`` inside each query's window and ``-inf`` outside; every window has ``k*k``
    real keys, so no row is fully masked. Without ``rpb`` the mask is cached per geometry;
    with it, one ``index_select`` of a cached index table gathers it from ``rpb`` (so
    autograd sums the gradient of the bias with one ``index_add``).
    """
    num_rows, num_cols = q.shape[2:4]
    if rpb is None:
        mask = _dense_mask(q, k, kernel_size, dilation, q.dtype)
    else:
        table = _dense_mask(q, k, kernel_size, dilation, None)
        bias = F.pad(rpb.to(q.dtype).flatten(1), (0, 1), value=float('-inf'))
        # (1, heads, Nq, Nk): SDPA on CPU takes a far slower path with a 3-D mask.
        mask = bias.index_select(1, table.flatten()).unflatten(1, table.shape).unsqueeze(0)
    out = F.scaled_dot_product_attention(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3),
                                         attn_mask=mask, scale=scale)
    out = out.unflatten(2, (num_rows, num_cols))
    if _traced(q):
        # The layout of SDPA's output depends on the kernel it picks (the fused CPU kernel's
        # is heads-inner), and the ONNX exporter's decompositions may pick another kernel
        # than the one whose strides the captured graph recorded; a copy fixes the layout.
        # (``contiguous()`` would be dropped: the captured strides are already contiguous.)
        out = out.clone(memory_format=torch.contiguous_format)
    return out


def _may_mask_a_row(rpb):
    """Whether ``rpb`` holds -inf, so that a whole window (a softmax row) may be masked.

    A fully masked row is NaN in the gather algorithm and the Triton kernels but 0 in
    SDPA, so such biases take the gather algorithm and every backend agrees. Not checked
    on traced values (export, compile, jit.trace, fake tensors), whose data is unknown: those take
    the dense algorithm, which gives 0 for a fully masked row.
    """
    if (rpb is None or type(rpb) is not torch.Tensor or torch.compiler.is_compiling()
            or torch.jit.is_tracing()):
        return False
    return bool(torch.isinf(rpb).any())


def na2d_torch(q, k, v, kernel_size, dilation, rpb, scale):
    """The pure-PyTorch op: :func:`na2d_dense` on small maps, :func:`na2d_reference` on
    large ones, by :func:`mmsparse.ops._dispatch.torch_algorithm` of the key tokens."""
    n_tokens = k.shape[2] * k.shape[3]
    if torch_algorithm('neighborhood_attention_2d', n_tokens) == 'dense' and not _may_mask_a_row(rpb):
        return na2d_dense(q, k, v, kernel_size, dilation, rpb, scale)
    return na2d_reference(q, k, v, kernel_size, dilation, rpb, scale)
