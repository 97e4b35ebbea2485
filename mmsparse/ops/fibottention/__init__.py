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
"""
import math
import random
from functools import lru_cache
from typing import NamedTuple

import torch

from .._checks import check_attention_tensors, check_scale
from .._dispatch import resolve_backend
from .reference import fibottention_reference, neighbor_index

PHI = (1 + math.sqrt(5)) / 2
MODES = ('sparse', 'official')
SHUFFLES = ('per_layer', 'shared', 'none')
LAYOUTS = ('1d', '2d')


class FibPattern(NamedTuple):
    """The kept keys of every head of one layer, independent of the data.

    Attributes:
        displacements (Tensor): (heads, K, 2) int32 signed ``(dy, dx)``; rows past
            ``counts[h]`` are padding.
        counts (Tensor): (heads, ) int32 number of valid displacements per head.
        grid (tuple[int, int]): ``(gh, gw)``, the token grid the displacements act
            on; ``(1, N)`` for the 1-D layout.
    """
    displacements: torch.Tensor
    counts: torch.Tensor
    grid: tuple

    @property
    def num_heads(self):
        return self.displacements.shape[0]

    def to(self, device):
        return FibPattern(self.displacements.to(device), self.counts.to(device), self.grid)


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
    _check_choice('shuffle', shuffle, SHUFFLES)
    for name, value, low in (('num_patches', num_patches, 1), ('num_heads', num_heads, 1),
                             ('layer_id', layer_id, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f'{name}={value!r} must be an int >= {low}')
    wmax = num_patches // 3 if wmax is None else wmax
    runs = []
    for i in range(1, num_heads + 1):
        a = math.floor(math.floor(i * PHI) * PHI)
        b = math.floor(math.floor(i * PHI) * PHI**2)
        # H == 1 divides by zero in the official code; head 1 always gets wmin.
        cap = wmin if num_heads == 1 else wmin + int((wmax - wmin) / (num_heads - 1) * (i - 1))
        if is_modified:
            a, b = a - (b - a), b - a
        runs.append(_fibonacci_run(a, b, cap))
    if shuffle == 'none':
        return runs
    perm = head_permutation(num_heads, layer_id if shuffle == 'per_layer' else 0)
    return [runs[p] for p in perm]


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
        Tensor: (heads, T, T) bool with ``T = N + with_cls``; True = kept. The CLS
        row and column (index 0) are all True.
    """
    index, valid = neighbor_index(pattern)
    heads, n, _ = index.shape
    patch = torch.zeros(heads, n, n, dtype=torch.bool)
    h, r, slot = valid.nonzero(as_tuple=True)
    patch[h, r, index[h, r, slot]] = True
    if not with_cls:
        return patch
    mask = torch.ones(heads, n + 1, n + 1, dtype=torch.bool)
    mask[:, 1:, 1:] = patch
    return mask


def fibottention_attention(q, k, v, pattern, scale=None, mode='sparse', with_cls=True, backend=None):
    """Fibottention: per-head sparse attention over the pattern's kept keys.

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
        Tensor: (B, heads, T, D), dtype of ``v``.
    """
    _check_inputs(q, k, v, pattern, mode, with_cls, scale)
    if scale is None:
        scale = q.shape[-1]**-0.5
    if resolve_backend(backend, q, k, v) == 'triton':
        from .triton_kernels import fibottention_triton
        return fibottention_triton(q, k, v, pattern, scale, mode, with_cls)
    return fibottention_reference(q, k, v, pattern, scale, mode, with_cls)


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f'{name}={value!r} is not supported; expected one of {allowed}')


def _check_inputs(q, k, v, pattern, mode, with_cls, scale):
    _check_choice('mode', mode, MODES)
    check_attention_tensors('fibottention_attention', {'q': q, 'k': k, 'v': v})
    check_scale('fibottention_attention', scale)
    if not isinstance(pattern, FibPattern):
        raise TypeError(f'pattern must be a FibPattern (see fibottention_pattern), got '
                        f'{type(pattern).__name__}')
    if q.dim() != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f'q, k, v must all be (B, heads, T, D) with the same shape; got q '
                         f'{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}')
    n_patch = pattern.grid[0] * pattern.grid[1]
    if q.shape[2] != n_patch + int(with_cls):
        raise ValueError(f'q.shape[2]={q.shape[2]} tokens does not match the pattern grid '
                         f'{pattern.grid} ({n_patch} patches) with with_cls={with_cls}')
    if q.shape[1] != pattern.num_heads:
        raise ValueError(f'q.shape[1]={q.shape[1]} heads does not match the pattern\'s '
                         f'{pattern.num_heads} heads')


__all__ = ['fibottention_attention', 'fibottention_pattern', 'fibonacci_offsets', 'head_permutation',
           'fibottention_mask', 'neighbor_index', 'fibottention_reference', 'FibPattern', 'MODES',
           'SHUFFLES', 'LAYOUTS']
