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

Three exact algorithms compute it (:func:`na2d_torch` picks by cost):

* :func:`na2d_reference`, the specification: the ``k*k`` neighbours of every query are
  gathered; memory and work linear in the number of tokens.
* :func:`na2d_dense`: scaled dot-product attention over all query-key pairs with the
  window and the bias as an additive mask (``-inf`` outside the window); quadratic, but
  a few large matmuls beat the gathers on small maps.
* :func:`na2d_tiled`: the same masked SDPA per tile of queries, over the keys the tile's
  windows cover only (about ``(8 + k - 1)**2`` keys per query for tiles of 8 x 8 queries):
  linear in the tokens again, and in one batched call.
"""
from functools import lru_cache

import torch
import torch.nn.functional as F

from .._dispatch import is_plain_tensor, torch_algorithm


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
    return not is_plain_tensor(q) or torch.compiler.is_compiling()


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


def _axis_tiles(num_queries, length, kernel_size, dilation, tile):
    """The query tiles of one axis and the key positions each tile attends to.

    Along an axis NA with dilation ``d`` is undilated NA inside each of the ``d`` residue
    classes, so a tile is up to ``tile`` consecutive queries of one class and its keys a run
    of consecutive keys of that class: ``tile + k - 1`` of them inside the map, whatever
    ``d``. All tiles get one length: a short class repeats its last query (its outputs are
    taken once, the copy gets no gradient), the last tile of a class is shifted inward so
    that it overlaps the previous one, and a key run is shifted inward at the border or,
    where the class has fewer keys, repeats its last key (the mask keeps one copy).

    Args:
        num_queries (int): queries on the axis (the first ``num_queries`` positions).
        length (int): keys on the axis, at least ``kernel_size * dilation``.
        kernel_size (int): odd window size ``k``.
        dilation (int): dilation ``d``.
        tile (int): queries per tile, at most.

    Returns:
        tuple[Tensor, ...]: int64 CPU tensors ``(queries, keys, local, bias, out)``:
        ``queries`` (n, t) the query positions of each of the ``n`` tiles; ``keys`` (n, L)
        their key positions; ``local`` (n, t, k) the index into ``keys`` of each query's
        ``t``-th neighbour and ``bias`` (n, t, k) its bias row (:func:`neighborhood_indices`);
        ``out`` (num_queries, ) the flat index into (n, t) that holds each query's output.
    """
    neighbors, bias = (x.tolist() for x in neighborhood_indices(length, kernel_size, dilation))
    classes = [(list(range(a, num_queries, dilation)), list(range(a, length, dilation)))
               for a in range(min(dilation, num_queries))]
    size = min(tile, max(len(queries) for queries, _ in classes))
    tiles, out = [], [0] * num_queries   # tiles: (query positions, lowest key, highest key), in class steps
    for queries, _ in classes:
        for first in range(0, len(queries), size):
            start = max(min(first, len(queries) - size), 0)
            members = [queries[min(start + j, len(queries) - 1)] for j in range(size)]
            for i in range(first, min(first + size, len(queries))):
                out[queries[i]] = len(tiles) * size + i - start
            last = max(neighbors[p][-1] for p in members)
            tiles.append((members, neighbors[members[0]][0] // dilation, last // dilation))
    span = max(high - low + 1 for _, low, high in tiles)
    key_rows, local_rows, bias_rows = [], [], []
    for members, low, _ in tiles:
        residue, class_len = members[0] % dilation, len(classes[members[0] % dilation][1])
        start = max(min(low, class_len - span), 0)
        key_rows.append([residue + min(start + j, class_len - 1) * dilation for j in range(span)])
        local_rows.append([[n // dilation - start for n in neighbors[p]] for p in members])
        bias_rows.append([bias[p] for p in members])
    return (torch.tensor([members for members, _, _ in tiles]), torch.tensor(key_rows), torch.tensor(local_rows),
            torch.tensor(bias_rows), torch.tensor(out))


def _tile_layout(q_shape, k_shape, kernel_size, dilation, tile, device):
    """The 2-D tiles of :func:`na2d_tiled`: the products of the row and column tiles of
    :func:`_axis_tiles`.

    Returns:
        tuple[Tensor, ...]: int64 ``(queries, keys, local, bias, out)`` for ``n`` tiles of
        ``Nq`` queries and ``Nk`` keys: ``queries`` (n, Nq) flat indices into ``Hq*Wq``;
        ``keys`` (n, Nk) flat indices into ``H*W``; ``local`` and ``bias`` (n*Nq, k*k),
        each query's neighbours as flat indices into its tile's ``Nk`` keys and into the
        ``(2k-1)**2`` bias; ``out`` (Hq*Wq, ) the flat index into (n*Nq) of each output.
    """
    (num_rows, num_cols), (height, width) = q_shape, k_shape
    rows = _axis_tiles(num_rows, height, kernel_size, dilation, tile)
    cols = _axis_tiles(num_cols, width, kernel_size, dilation, tile)
    (row_size, col_size), col_tiles = (rows[0].shape[1], cols[0].shape[1]), cols[0].shape[0]

    def combine(row, col, times):
        """``row * times + col`` over (row tile, col tile, row entry, col entry, row extra, col extra)."""
        extra = row.dim() - 2
        row = row.view(row.shape[0], 1, row.shape[1], 1, *row.shape[2:], *(1, ) * extra)
        col = col.view(1, col.shape[0], 1, col.shape[1], *(1, ) * extra, *col.shape[2:])
        return (row * times + col).flatten(0, 1).flatten(1, 2)

    queries = combine(rows[0], cols[0], num_cols)
    keys = combine(rows[1], cols[1], width)
    local = combine(rows[2], cols[2], cols[1].shape[1]).flatten(0, 1).flatten(1)
    bias = combine(rows[3], cols[3], 2 * kernel_size - 1).flatten(0, 1).flatten(1)
    row_out, col_out = rows[4][:, None], cols[4][None, :]
    out = (((row_out // row_size) * col_tiles + col_out // col_size) * row_size + row_out % row_size) * col_size
    out = out + col_out % col_size
    return tuple(x.to(device) for x in (queries, keys, local, bias, out.flatten()))


@lru_cache(maxsize=64)
def _cached_tile_index(q_shape, k_shape, kernel_size, dilation, tile, device):
    """``(queries, keys, out)`` of :func:`_tile_layout`, cached per geometry like :func:`_flat_window`."""
    queries, keys, _, _, out = _tile_layout(q_shape, k_shape, kernel_size, dilation, tile, device)
    return queries, keys, out


@lru_cache(maxsize=8)
def _cached_tile_mask(q_shape, k_shape, kernel_size, dilation, tile, device, dtype):
    """:func:`_build_dense_mask` of the tiles of :func:`_tile_layout`, (n*Nq, Nk), per geometry,
    device and dtype.

    Fewer entries than :func:`_cached_tile_index`: ``Nk`` (196 for ``k = 7``) entries per
    query, 13 MiB for a float32 mask of a 128 x 128 map (the int64 bias index table twice
    that; an int32 one would be half, but its ``index_add`` backward is several times slower).
    """
    _, keys, local, bias, _ = _tile_layout(q_shape, k_shape, kernel_size, dilation, tile, device)
    return _build_dense_mask(local, bias, keys.shape[1], dtype, kernel_size)


# Queries per tile and axis of na2d_tiled, measured (CPU, float32, k = 7 and 11, d = 1 and 2):
# 4 and 6 are up to 1.3x slower (smaller matmuls), 12 and 16 up to 2x (more keys per query).
TILE = 8


def na2d_tiled(q, k, v, kernel_size, dilation, rpb, scale, tile=TILE):
    """Neighborhood attention as masked SDPA over tiles of queries and the keys they share (exact).

    The queries are cut into tiles of up to ``tile x tile`` queries of one residue class per
    axis (:func:`_axis_tiles`); each tile attends, with the window and the bias as an
    additive mask as in :func:`na2d_dense`, to the ``(tile + k - 1)**2`` keys around it, all
    tiles in one SDPA call. The work per query is that many keys instead of all of them.
    Eager only: the layout is built from Python integers (:func:`na2d_torch` sends traced
    calls elsewhere). The output is a token-major (H, W, B, heads, hd) tensor viewed as
    (B, heads, H, W, hd).

    Args:
        q, k, v, kernel_size, dilation, rpb, scale: see :func:`na2d_reference`.
        tile (int): queries per tile and axis, at most. Defaults to :data:`TILE` (8).

    Returns:
        Tensor: (B, heads, Hq, Wq, hd).
    """
    (batch, heads, num_rows, num_cols), head_dim = q.shape[:4], v.shape[-1]
    args = (tuple(q.shape[2:4]), tuple(k.shape[2:4]), kernel_size, dilation, tile, q.device)
    with torch.inference_mode(False):  # as in _window
        queries, keys, out_index = _cached_tile_index(*args)
        mask = _cached_tile_mask(*args, None if rpb is not None else q.dtype)
    num_tiles, tile_queries = queries.shape
    # SDPA's batch is (B, heads) and its heads the tiles: the 4-D mask (SDPA on CPU takes a far
    # slower path with a 3-D one) broadcasts over the batch, or over B copies with rpb.
    if rpb is None:
        mask = mask.view(1, num_tiles, tile_queries, keys.shape[1])
    else:
        bias = F.pad(rpb.to(q.dtype).flatten(1), (0, 1), value=float('-inf'))
        mask = bias.index_select(1, mask.flatten()).view(heads, num_tiles, tile_queries, keys.shape[1])
        mask = mask.repeat(batch, 1, 1, 1) if batch > 1 else mask

    def tiles(x, index):
        """(B, heads, H, W, C) -> (B*heads, tiles, entries, C): the entries of every tile.

        Gathered as rows of a (H*W, B*heads*C) token-major copy: ``index_select`` along the
        first dimension of a 2-D tensor is many times faster (and so is its ``index_add``
        backward) than along the third of a 4-D one.
        """
        rows = x.permute(2, 3, 0, 1, 4).reshape(x.shape[2] * x.shape[3], -1).index_select(0, index.flatten())
        return rows.view(num_tiles, index.shape[1], batch * heads, x.shape[-1]).permute(2, 0, 1, 3)

    out = F.scaled_dot_product_attention(tiles(q, queries), tiles(k, keys), tiles(v, keys), attn_mask=mask,
                                         scale=scale)
    out = out.permute(1, 2, 0, 3).reshape(num_tiles * tile_queries, -1).index_select(0, out_index)
    # Token-major like the inputs of the attention modules: their (B, H, W, heads * hd) view
    # of it is contiguous for B = 1.
    return out.view(num_rows, num_cols, batch, heads, head_dim).permute(2, 3, 0, 1, 4)


def _may_mask_a_row(rpb):
    """Whether ``rpb`` holds -inf, so that a whole window (a softmax row) may be masked.

    A fully masked row is NaN in the gather algorithm and the Triton kernels but 0 in
    SDPA, so such biases take the gather algorithm and every backend agrees. Not checked
    on traced values (export, compile, jit.trace, fake tensors), whose data is unknown: those take
    the dense algorithm, which gives 0 for a fully masked row.
    """
    if (rpb is None or not is_plain_tensor(rpb) or torch.compiler.is_compiling()
            or torch.jit.is_tracing()):
        return False
    return bool(torch.isinf(rpb).any())


def na2d_torch(q, k, v, kernel_size, dilation, rpb, scale):
    """The pure-PyTorch op: :func:`na2d_torch_algorithm` of the inputs, called on them."""
    return na2d_torch_algorithm(q, k, kernel_size, rpb)(q, k, v, kernel_size, dilation, rpb, scale)


def na2d_torch_algorithm(q, k, kernel_size, rpb):
    """The algorithm of the pure-PyTorch op for these inputs, picked by
    :func:`mmsparse.ops._dispatch.torch_algorithm` of the key tokens.

    * Eager: :func:`na2d_dense` below the crossover of ``'neighborhood_attention_2d_tiled'``,
      :func:`na2d_tiled` from there on (its layout is built from Python integers). The
      crossover is measured at ``k = 7``, whose tiles attend to ``(TILE + 6)**2`` keys per
      query; the key tokens are scaled by ``((TILE + 6) / (TILE + k - 1))**2`` for other ``k``,
      since the dense cost per query grows with the key tokens and the tiled with its keys.
    * Traced (fake or functional tensors, maybe symbolic shapes; ``torch.jit.trace``):
      :func:`na2d_dense` below the crossover of ``'neighborhood_attention_2d'``,
      :func:`na2d_reference` from there on.
    * Empty inputs, and an ``rpb`` that may mask a whole row (:func:`_may_mask_a_row`):
      :func:`na2d_reference` (SDPA's output on an empty batch has no gradient).

    Returns:
        Callable: ``fn(q, k, v, kernel_size, dilation, rpb, scale)``.
    """
    n_tokens = k.shape[2] * k.shape[3]
    if _may_mask_a_row(rpb):
        return na2d_reference
    if not (_traced(q) or torch.jit.is_tracing()):
        if q.numel() == 0 or k.numel() == 0:
            return na2d_reference
        tiled_tokens = n_tokens * (TILE + 6)**2 // (TILE + kernel_size - 1)**2
        if torch_algorithm('neighborhood_attention_2d_tiled', tiled_tokens) == 'sparse':
            return na2d_tiled
    if torch_algorithm('neighborhood_attention_2d', n_tokens) == 'dense':
        return na2d_dense
    return na2d_reference
