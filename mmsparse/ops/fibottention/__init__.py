"""Fibottention (Rahimian et al., arXiv 2406.19391) as a functional op.

Every head keeps, for each patch token, the keys at a head-specific set of
offsets built from a Wythoff-array row continued as a Fibonacci run (paper
Algorithms 1-2; the official rule is ``generate_head_indices`` of
https://github.com/Charlotte-CharMLab/Fibottention/blob/adf9919771697e56615a7e5d165a50855ee264f5/fibottention.py),
plus the CLS row and column.
The sets of different heads are disjoint, so the heads see different token pairs.

Offsets live in a :class:`FibPattern`: a per-head table of signed 2-D
displacements ``(dy, dx)`` on a token grid. Key ``(y + dy, x + dx)`` is kept for
query ``(y, x)`` when it lies inside the grid (no wrap-around). The same
table drives the reference and the Triton kernels, and serves both layouts:

* ``layout='1d'`` (official, default): offsets ``+-d`` on the row-major flattened
  patch index, i.e. a ``(1, H*W)`` grid with ``dy = 0``. It reproduces the
  paper's masks bit-exactly.
* ``layout='2d'`` (mmsparse ablation, not in the paper): the head's Fibonacci set
  computed per axis (``wmax = size // 3`` per axis) and applied along rows and
  columns separately (axial ``(+-dy, 0)`` and ``(0, +-dx)``). It avoids the
  wrap-around of 1-D offsets at row ends, at the price of degenerate sets on
  small grids (see ``configs/fibottention/README.md``).

:func:`fibottention_attention_traced` serves a graph traced with a symbolic grid (a dynamic
``torch.export``, ``tools/deployment/pytorch2onnx.py --dynamic``), where no pattern can be
computed: it builds the dense mask in the graph from the grid size
(:func:`fibottention_mask_traced`, equal to the pattern's mask, see :mod:`.traced_pattern`).

:func:`fibottention_attention` runs as one ``torch.library`` op, one node for
``torch.compile``, ``torch.jit.trace`` and the FLOP counter:

* the torch backend: the custom op ``mmsparse::fibottention_attention(q, k, v,
  displacements, counts, index, valid, dense_mask, grid, scale, mode, with_cls)`` (see
  :func:`_fib_op`), or its implementation inline for an eager call and under ONNX export
  (:func:`mmsparse.ops._dispatch.runs_inline`);
* the triton backend: the ``triton_op`` ``mmsparse::fibottention_attention_triton(q, k, v,
  displacements, counts, grid, scale, mode, with_cls)`` (:mod:`.triton_kernels`).

It reports its calls to :mod:`mmsparse.ops.probe` and registers its probabilities
(:func:`fibottention_probabilities`).
"""
import math
import random
from functools import lru_cache
from typing import List, Optional

import torch
from torch import Tensor

from .._checks import check_attention_tensors, check_scale
from .._dispatch import recompute_gradients, resolve_backend, runs_inline, torch_algorithm
from ..probe import record_call, register_probabilities
from . import traced_pattern
from .reference import (fibottention_dense, fibottention_gather, fibottention_probabilities_reference,
                        fibottention_reference, neighbor_index)

OP = 'fibottention_attention'

PHI = (1 + math.sqrt(5)) / 2
DENSE_MASK_CACHE_BYTES = 32 * 2**20   # see FibPattern.dense_mask
MODES = ('sparse', 'official')
SHUFFLES = ('per_layer', 'shared', 'none')
LAYOUTS = ('1d', '2d')


class FibPattern:
    """The kept keys of every head of one layer, independent of the data.

    Compiled once, as FlexAttention's ``BlockMask``: the tensors the op derives from the
    table (the neighbour index, and the dense exclusion mask of the dense torch
    algorithm) are built on first use and cached on the pattern, one pattern per device
    (:meth:`to` returns a cached copy), so a call builds no index or mask.

    Attributes:
        displacements (Tensor): (heads, K, 2) int32 signed ``(dy, dx)``; rows past
            ``counts[h]`` are padding.
        counts (Tensor): (heads, ) int32 number of valid displacements per head.
        grid (tuple[int, int]): ``(gh, gw)``, the token grid the displacements act
            on; ``(1, N)`` for the 1-D layout.
    """

    def __init__(self, displacements, counts, grid):
        self.displacements = displacements
        self.counts = counts
        self.grid = tuple(int(s) for s in grid)
        self._compiled = {}

    @property
    def num_heads(self):
        return self.displacements.shape[0]

    @property
    def device(self):
        return self.displacements.device

    def _cached(self, key, build):
        if key not in self._compiled:
            self._compiled[key] = build()
        return self._compiled[key]

    def to(self, device):
        """This pattern on ``device`` (itself if it is there; built once per device)."""
        device = torch.device(device)
        if device == self.device:
            return self
        return self._cached(('to', device), lambda: FibPattern(self.displacements.to(device),
                                                               self.counts.to(device), self.grid))

    def neighbours(self):
        """``(index, valid)`` (heads, N, K) of :func:`neighbor_index` on the pattern's device (cached)."""
        return self._cached('neighbours', lambda: neighbor_index(self))

    def dense_exclusion(self, mode, with_cls):
        """(heads, T, T) bool, True = masked out (cached).

        In sparse mode a row with no kept key (possible without CLS) is left unmasked so
        that its softmax and gradients stay finite; the dense algorithm zeroes its output.
        """
        return self._cached(('dense_exclusion', mode, bool(with_cls)),
                            lambda: _dense_exclusion(fibottention_mask(self, with_cls), mode))

    def dense_mask(self, mode, with_cls, dtype):
        """(heads, T, T) ``dtype`` mask of :func:`fibottention_dense`: :func:`dense_mask` of
        :meth:`dense_exclusion`.

        Cached up to ``DENSE_MASK_CACHE_BYTES``, as the official code keeps its mask (ViT-S,
        float32: 0.9 MiB a layer at 197 tokens, 25 MiB at 1025); a larger one is built on every
        call from the neighbour index (building one at 1025 tokens costs about half of a masked
        SDPA forward, so it is worth its memory there).
        """
        tokens = self.grid[0] * self.grid[1] + int(with_cls)
        if self.num_heads * tokens**2 * dtype.itemsize > DENSE_MASK_CACHE_BYTES:
            return dense_mask(_dense_exclusion(fibottention_mask(self, with_cls), mode), mode, dtype)
        return self._cached(('dense_mask', mode, bool(with_cls), dtype),
                            lambda: dense_mask(self.dense_exclusion(mode, with_cls), mode, dtype))

    def __repr__(self):
        return (f'FibPattern(grid={self.grid}, num_heads={self.num_heads}, '
                f'max_displacements={self.displacements.shape[1]}, device={self.device})')


def head_permutation(num_heads, seed):
    """Head shuffle of one layer: ``random.Random(seed).shuffle(list(range(num_heads)))``.

    Same permutation as the official ``random.seed(l); random.shuffle(...)``
    without touching the global RNG (the official ``shuffle`` in ``fibottention.py``
    reseeds the global ``random`` module). Head slot ``h`` uses
    Wythoff row ``perm[h] + 1``.
    """
    perm = list(range(num_heads))
    random.Random(seed).shuffle(perm)
    return perm


def _fibonacci_run(first, second, cap):
    """``[first]`` then every later Fibonacci term ``<= cap`` (the first is always kept)."""
    run, x, y = [first], first, second
    while y <= cap:
        run.append(y)
        x, y = y, x + y
    return run


def fibonacci_offsets(num_patches, num_heads, layer_id=0, shuffle='per_layer', is_modified=False,
                      wmin=5, wmax=None):
    """Per-head 1-D offset sets of one layer (official ``generate_head_indices`` + ``shuffle``).

    Head ``i`` (1-based, before shuffling) starts from the Wythoff pair
    ``a_i = floor(floor(i*phi)*phi)``, ``b_i = floor(floor(i*phi)*phi**2)`` and
    keeps the Fibonacci run up to ``w_i = wmin + int((wmax - wmin) / (H-1) * (i-1))``.

    Args:
        num_patches (int): patch tokens N (CLS excluded).
        num_heads (int): heads H.
        layer_id (int): block index; the shuffle seed for ``shuffle='per_layer'``.
        shuffle (str): ``'per_layer'`` (seed = layer_id), ``'shared'`` (seed 0 for
            every layer, the official training path) or ``'none'``.
        is_modified (bool): extend each Wythoff row one step backwards, as the
            official ``is_modified`` flag: ``a' = a - (b - a)``, ``b' = b - a``.
        wmin (int): cap of head 1.
        wmax (int, optional): cap of head H; default ``num_patches // 3``.

    Returns:
        list[list[int]]: offsets of head slot ``h``, in Fibonacci order (may
        repeat a value, or contain 0, only with ``is_modified``).
    """
    _check_layer(num_heads, layer_id, shuffle)
    _check_min_int('num_patches', num_patches, 1)
    wmax = num_patches // 3 if wmax is None else wmax
    runs = []
    for i in range(1, num_heads + 1):
        # H == 1 divides by zero in the official code; head 1 always gets wmin. The in-graph
        # construction (traced_pattern.head_caps) repeats this arithmetic on tensors.
        cap = wmin if num_heads == 1 else wmin + int((wmax - wmin) / (num_heads - 1) * (i - 1))
        runs.append(_fibonacci_run(*_wythoff_start(i, is_modified), cap))
    return [runs[p] for p in _slot_heads(num_heads, layer_id, shuffle)]


def _wythoff_start(i, is_modified):
    """First two terms of head ``i``'s (1-based) run: its Wythoff pair, one step back when modified."""
    a = math.floor(math.floor(i * PHI) * PHI)
    b = math.floor(math.floor(i * PHI) * PHI**2)
    return (a - (b - a), b - a) if is_modified else (a, b)


def _slot_heads(num_heads, layer_id, shuffle):
    """The head (0-based, before shuffling) whose run head slot ``h`` uses, for every slot."""
    if shuffle == 'none':
        return list(range(num_heads))
    return head_permutation(num_heads, layer_id if shuffle == 'per_layer' else 0)


# Every candidate offset of a traced mask is a Fibonacci term up to this bound: a larger one
# would need more than 2**31 tokens, hence a (T, T) mask of 2**62 entries, to matter.
RUN_BOUND = 2**31


@lru_cache(maxsize=256)
def fibonacci_candidates(num_heads, layer_id=0, shuffle='per_layer', is_modified=False):
    """What :func:`fibonacci_offsets` keeps at any token count, before its caps cut the runs.

    The shuffle and the Wythoff pairs do not depend on the token count, only the caps do, so
    a head slot's offsets at any ``N`` are a prefix of its whole run: its first term, then
    the later terms up to the slot's cap (:func:`~.traced_pattern.head_caps`).

    Args:
        num_heads, layer_id, shuffle, is_modified: see :func:`fibonacci_offsets`.

    Returns:
        tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]: per head slot, the head
        ``i - 1`` (0-based, before shuffling) whose cap it has, and its Fibonacci run up to
        :data:`RUN_BOUND` (the first term always). Cached and shared.
    """
    _check_layer(num_heads, layer_id, shuffle)
    runs = [tuple(_fibonacci_run(*_wythoff_start(i, is_modified), RUN_BOUND)) for i in range(1, num_heads + 1)]
    heads = _slot_heads(num_heads, layer_id, shuffle)
    return tuple(heads), tuple(runs[p] for p in heads)


@lru_cache(maxsize=256)
def fibottention_pattern(grid_size, num_heads, layer_id=0, layout='1d', shuffle='per_layer',
                         is_modified=False, wmin=5):
    """The displacement table of one layer on a ``grid_size`` patch grid (cached, CPU).

    Args:
        grid_size (tuple[int, int]): patch grid ``(gh, gw)``; tokens are row-major.
        num_heads, layer_id, shuffle, is_modified, wmin: see :func:`fibonacci_offsets`.
        layout (str): ``'1d'`` (official flattened offsets, ``wmax = gh*gw // 3``) or
            ``'2d'`` (axial: per-axis sets with ``wmax = gh // 3`` and ``gw // 3``).

    Returns:
        FibPattern: unique displacements, both signs of every offset. The result
        is cached and shared: do not modify its tensors in place.
    """
    _check_choice('layout', layout, LAYOUTS)
    gh, gw = (int(s) for s in grid_size)
    if gh < 1 or gw < 1:
        raise ValueError(f'grid_size={grid_size} must be two positive ints')
    kwargs = dict(num_heads=num_heads, layer_id=layer_id, shuffle=shuffle, is_modified=is_modified,
                  wmin=wmin)
    if layout == '1d':
        grid = (1, gh * gw)
        per_head = [[(0, d) for d in run] for run in fibonacci_offsets(gh * gw, **kwargs)]
    else:
        grid = (gh, gw)
        runs_y = fibonacci_offsets(gh, **kwargs)
        runs_x = fibonacci_offsets(gw, **kwargs)
        per_head = [[(d, 0) for d in ry] + [(0, d) for d in rx] for ry, rx in zip(runs_y, runs_x)]
    # Both signs of every offset, each displacement once (the modified rule repeats 1).
    tables = [sorted({(s * dy, s * dx) for dy, dx in pairs for s in (1, -1)}) for pairs in per_head]
    displacements = torch.zeros(num_heads, max(len(t) for t in tables), 2, dtype=torch.int32)
    for h, table in enumerate(tables):
        displacements[h, :len(table)] = torch.tensor(table, dtype=torch.int32)
    counts = torch.tensor([len(t) for t in tables], dtype=torch.int32)
    return FibPattern(displacements, counts, grid)


def fibottention_mask(pattern, with_cls=True):
    """Dense boolean mask of a pattern, for inspection and tests (O(N^2) memory).

    Args:
        pattern (FibPattern): the layer's pattern on ``N = gh*gw`` patches.
        with_cls (bool): prepend the CLS row and column.

    Returns:
        Tensor: (heads, T, T) bool on the pattern's device with ``T = N + with_cls``;
        True = kept. The CLS row and column (index 0) are all True.
    """
    index, valid = pattern.neighbours()
    heads, n, _ = index.shape
    patch = torch.zeros(heads, n, n, dtype=torch.bool, device=index.device)
    h, r, slot = valid.nonzero(as_tuple=True)
    patch[h, r, index[h, r, slot]] = True
    if not with_cls:
        return patch
    mask = torch.ones(heads, n + 1, n + 1, dtype=torch.bool, device=index.device)
    mask[:, 1:, 1:] = patch
    return mask


def fibottention_mask_traced(grid_size, num_heads, layer_id=0, layout='1d', shuffle='per_layer', is_modified=False,
                             wmin=5, with_cls=True, device=None):
    """:func:`fibottention_mask` of :func:`fibottention_pattern`, built with tensor ops in the graph.

    For a graph traced with a symbolic grid (a dynamic ``torch.export``), where the pattern,
    a Python function of the grid, cannot be computed: the head slots' whole Fibonacci runs
    (:func:`fibonacci_candidates`) are constants and the caps are computed from the grid
    (:func:`~.traced_pattern.kept_mask`). Called with ints, it equals the pattern's mask.

    Args:
        grid_size (tuple): patch grid ``(gh, gw)``, ints or ``SymInt``.
        num_heads, layer_id, layout, shuffle, is_modified, wmin: see :func:`fibottention_pattern`.
        with_cls (bool): prepend the CLS row and column. Defaults to True.
        device (torch.device, optional): where to build. Defaults to None (torch's default device).

    Returns:
        Tensor: (heads, T, T) bool with ``T = gh * gw + with_cls``; True = kept.
    """
    _check_choice('layout', layout, LAYOUTS)
    heads, runs = fibonacci_candidates(num_heads, layer_id, shuffle, is_modified)
    width = max(len(run) for run in runs)
    candidates = torch.tensor([run + (-1, ) * (width - len(run)) for run in runs], dtype=torch.int64, device=device)
    head_index = torch.tensor(heads, dtype=torch.int64, device=device)
    return traced_pattern.kept_mask(tuple(grid_size), candidates, head_index, num_heads, wmin, layout, with_cls)


def fibottention_attention_traced(q, k, v, grid_size, layer_id=0, layout='1d', shuffle='per_layer',
                                  is_modified=False, wmin=5, scale=None, mode='sparse', with_cls=True):
    """:func:`fibottention_attention` on a grid that may be symbolic: for a dynamic ``torch.export``.

    The dense torch algorithm (:func:`fibottention_dense`) with the mask of
    :func:`fibottention_mask_traced`, as plain aten ops (no custom op, no Triton, not seen
    by the probe), so one traced graph serves every grid size. Its memory grows with
    ``T**2``, as the dense algorithm's; eager and compiled calls, which know their grid,
    use :func:`fibottention_attention` and its cached :class:`FibPattern`.

    Args:
        q, k, v (Tensor): (B, heads, T, D) with ``T = gh * gw + with_cls``.
        grid_size (tuple): patch grid ``(gh, gw)``, ints or ``SymInt``.
        layer_id, layout, shuffle, is_modified, wmin: see :func:`fibottention_pattern`.
        scale (float, optional): logit scale. Defaults to ``D ** -0.5``.
        mode (str): see :func:`fibottention_attention`. Defaults to ``'sparse'``.
        with_cls (bool): token 0 is a CLS token: its row and column are kept. Defaults to True.

    Returns:
        Tensor: (B, heads, T, D).
    """
    _check_choice('mode', mode, MODES)
    check_attention_tensors('fibottention_attention', {'q': q, 'k': k, 'v': v})
    check_scale('fibottention_attention', scale)
    _check_qkv_shapes(q, k, v)
    gh, gw = grid_size
    if q.shape[2] != gh * gw + int(with_cls):
        raise ValueError(f'q.shape[2]={q.shape[2]} tokens does not match grid_size={tuple(grid_size)} '
                         f'with with_cls={with_cls}')
    scale = float(q.shape[-1]**-0.5 if scale is None else scale)
    kept = fibottention_mask_traced(grid_size, q.shape[1], layer_id, layout, shuffle, is_modified, wmin, with_cls,
                                    q.device)
    c = int(with_cls)
    # valid only says which patch rows keep a key (sparse mode without CLS): the patch block does.
    mask = dense_mask(_dense_exclusion(kept, mode), mode, q.dtype)
    return fibottention_dense(q, k, v, mask, kept[:, c:, c:], scale, mode, with_cls)


def fibottention_attention(q, k, v, pattern, scale=None, mode='sparse', with_cls=True, backend=None):
    """Fibottention: per-head sparse attention over the pattern's kept keys.

    Runs as the custom op ``mmsparse::fibottention_attention`` (torch backend, see
    :func:`_fib_op` for its schema; inline for an eager call and under ONNX export) or the
    ``triton_op`` ``mmsparse::fibottention_attention_triton`` (triton backend, see
    :func:`.triton_kernels.fibottention_triton`). The torch backend has two exact
    algorithms, chosen by :func:`mmsparse.ops._dispatch.torch_algorithm` on ``T``: the
    dense masked computation for short sequences, the gather of the kept keys from there on.

    Args:
        q, k, v (Tensor): (B, heads, T, D) float with ``T = N + with_cls`` tokens
            (CLS first, then the ``N = gh*gw`` patch tokens row-major).
        pattern (FibPattern): from :func:`fibottention_pattern`; ``heads`` and
            ``N`` must match.
        scale (float, optional): logit scale, default ``D ** -0.5``.
        mode (str): ``'sparse'``: masked logits are ``-inf`` (excluded);
            ``'official'``: masked logits are ``0`` as in the official
            multiplicative mask, computed sparsely with the V-sum rewrite
            (``docs/design.md``). A patch row with no kept key (sparse mode, no CLS)
            outputs zeros.
        with_cls (bool): token 0 is a CLS token: its row and column are kept.
        backend (str, optional): ``'auto'``, ``'torch'`` or ``'triton'``; see
            :func:`mmsparse.ops._dispatch.resolve_backend`.

    Returns:
        Tensor: (B, heads, T, D) contiguous, dtype of ``v``.
    """
    _check_inputs(q, k, v, pattern, mode, with_cls, scale)
    scale = float(q.shape[-1]**-0.5 if scale is None else scale)
    record_call(OP, q=q, k=k, v=v, pattern=pattern, scale=scale, mode=mode, with_cls=with_cls, backend=backend)
    resolved = resolve_backend(backend, q, k, v)
    if resolved == 'triton':
        from . import triton_kernels
        return triton_kernels.fibottention_triton(q, k, v, pattern, scale, mode, with_cls)
    pattern = pattern.to(q.device)
    index, valid = pattern.neighbours()
    mask = pattern.dense_mask(mode, with_cls, q.dtype) if torch_algorithm(OP, q.shape[2]) == 'dense' else None
    if runs_inline(q, k, v):
        return _implementation(q, k, v, index, valid, mask, scale, mode, with_cls)
    return _fib_op(q, k, v, pattern.displacements, pattern.counts, index, valid, mask, list(pattern.grid), scale,
                   mode, bool(with_cls))


def _implementation(q, k, v, index, valid, dense_mask, scale, mode, with_cls):
    """The torch backend: the dense algorithm when given its mask, else the gather one."""
    if dense_mask is not None:
        return fibottention_dense(q, k, v, dense_mask, valid, scale, mode, with_cls)
    return fibottention_gather(q, k, v, index, valid, scale, mode, with_cls)


@torch.library.custom_op(f'mmsparse::{OP}', mutates_args=())
def _fib_op(q: Tensor, k: Tensor, v: Tensor, displacements: Tensor, counts: Tensor, index: Tensor,
            valid: Tensor, dense_mask: Optional[Tensor], grid: List[int], scale: float, mode: str,
            with_cls: bool) -> Tensor:
    """``mmsparse::fibottention_attention``, the torch backend: q, k, v first, then the compiled pattern.

    Args:
        q, k, v (Tensor): (B, heads, T, D).
        displacements, counts (Tensor): the :class:`FibPattern` table (read by the FLOP
            counter).
        index, valid (Tensor): (heads, N, K) its :meth:`FibPattern.neighbours`; ``valid``
            holds the kept (query, key) patch pairs (their number is ``valid.sum()``).
        dense_mask (Tensor, optional): (heads, T, T) :meth:`FibPattern.dense_mask` when
            the dense algorithm runs, else None (the gather algorithm).
        grid (list[int]): the pattern grid.
        scale (float): resolved logit scale.
        mode (str), with_cls (bool): as :func:`fibottention_attention`.
    """
    # Contiguous, as the fake implementation promises.
    return _implementation(q, k, v, index, valid, dense_mask, scale, mode, with_cls).contiguous()


@_fib_op.register_fake
def _fib_fake(q, k, v, displacements, counts, index, valid, dense_mask, grid, scale, mode, with_cls):
    return v.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, displacements, counts, index, valid, dense_mask, grid, scale, mode, with_cls = inputs
    ctx.save_for_backward(q, k, v, index, valid, dense_mask)   # dense_mask may be None
    ctx.fib = (scale, mode, with_cls)


def _backward(ctx, grad):
    q, k, v, index, valid, dense_mask = ctx.saved_tensors
    # Plain aten ops: recompute and differentiate, traceable by AOTAutograd.
    grads = recompute_gradients(lambda q, k, v: _implementation(q, k, v, index, valid, dense_mask, *ctx.fib),
                                (q, k, v), grad)
    return (*grads, *(None, ) * 9)   # none for the pattern tensors, grid, scale, mode and with_cls


_fib_op.register_autograd(_backward, setup_context=_setup_context)


@register_probabilities(OP)
def fibottention_probabilities(queries, q, k, v, pattern, scale, mode='sparse', with_cls=True, backend=None):
    """Probe: the reference's softmax probabilities of ``queries`` over their keys.

    Args:
        queries (Tensor): 1-D int64 token indices into the ``T`` tokens (CLS = 0).
        q, k, v, pattern, scale, mode, with_cls: the arguments the op recorded (``v``
            and ``backend`` do not change the probabilities).

    Returns:
        tuple[Tensor, Tensor]: see :func:`~.reference.fibottention_probabilities_reference`.
    """
    index, valid = pattern.to(q.device).neighbours()
    return fibottention_probabilities_reference(queries, q, k, index, valid, scale, mode, with_cls)


def dense_mask(excluded, mode, dtype):
    """The float mask of :func:`fibottention_dense` from a (heads, T, T) exclusion.

    Sparse mode: additive, 0 kept and ``-inf`` excluded; official mode: multiplicative, 1
    kept and 0 excluded (the official mask). On CPU a float multiply or add runs about
    twice as fast as ``masked_fill`` with a broadcast bool mask, forward and backward.
    """
    if mode == 'sparse':
        return torch.zeros(excluded.shape, dtype=dtype, device=excluded.device).masked_fill_(excluded, float('-inf'))
    return (~excluded).to(dtype)


def _dense_exclusion(kept, mode):
    """``excluded`` of :func:`fibottention_dense` from a (heads, T, T) kept mask (see
    :meth:`FibPattern.dense_exclusion`)."""
    excluded = ~kept
    return excluded & kept.any(-1, keepdim=True) if mode == 'sparse' else excluded


def _check_min_int(name, value, low):
    if not isinstance(value, int) or value < low:
        raise ValueError(f'{name}={value!r} must be an int >= {low}')


def _check_layer(num_heads, layer_id, shuffle):
    """The arguments that fix a layer's head slots (:func:`fibonacci_candidates`)."""
    _check_choice('shuffle', shuffle, SHUFFLES)
    _check_min_int('num_heads', num_heads, 1)
    _check_min_int('layer_id', layer_id, 0)


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f'{name}={value!r} is not supported; expected one of {allowed}')


def _check_qkv_shapes(q, k, v):
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f'q, k, v must all be (B, heads, T, D) with the same shape; got q '
                         f'{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}')


def _check_inputs(q, k, v, pattern, mode, with_cls, scale):
    _check_choice('mode', mode, MODES)
    check_attention_tensors('fibottention_attention', {'q': q, 'k': k, 'v': v})
    check_scale('fibottention_attention', scale)
    if not isinstance(pattern, FibPattern):
        raise TypeError(f'pattern must be a FibPattern (see fibottention_pattern), got '
                        f'{type(pattern).__name__}')
    _check_qkv_shapes(q, k, v)
    n_patch = pattern.grid[0] * pattern.grid[1]
    if q.shape[2] != n_patch + int(with_cls):
        raise ValueError(f'q.shape[2]={q.shape[2]} tokens does not match the pattern grid '
                         f'{pattern.grid} ({n_patch} patches) with with_cls={with_cls}')
    if q.shape[1] != pattern.num_heads:
        raise ValueError(f'q.shape[1]={q.shape[1]} heads does not match the pattern\'s '
                         f'{pattern.num_heads} heads')


__all__ = ['fibottention_attention', 'fibottention_attention_traced', 'fibottention_pattern', 'fibonacci_offsets',
           'fibonacci_candidates', 'head_permutation', 'fibottention_mask', 'fibottention_mask_traced',
           'neighbor_index', 'fibottention_reference', 'fibottention_gather', 'fibottention_dense',
           'fibottention_probabilities', 'FibPattern', 'MODES', 'SHUFFLES', 'LAYOUTS', 'RUN_BOUND']
