"""The Fibottention mask built with tensor ops from a token grid that may be symbolic.

A :class:`~mmsparse.ops.fibottention.FibPattern` is computed in Python from the grid, so a
graph traced at one size would keep that size's pattern. A dynamic ``torch.export`` (and
so ``tools/deployment/pytorch2onnx.py --dynamic``) builds the dense mask inside the graph
instead: the only part of the rule that depends on the token count is each head slot's
cap, so the whole Fibonacci run of every slot is a constant
(:func:`~mmsparse.ops.fibottention.fibonacci_candidates`) and the graph computes the caps
from the size, keeps the run's terms under them, and looks the kept offsets up by the
distance of every (query, key) pair. Every op here exports to ONNX; sizes may be
``SymInt``, or plain ints for eager calls (the tests compare those with the pattern).
"""
import torch


def head_caps(size, head_index, num_heads, wmin):
    """Cap of every head slot on ``size`` tokens, with the arithmetic of ``fibonacci_offsets``.

    ``w_i = wmin + int((size // 3 - wmin) / (H - 1) * (i - 1))``: a float64 division, a
    float64 product and a truncation toward zero, the operations Python does on floats
    (the product can land just below an integer, ``1 / 49 * 49 < 1``, so exact integer
    arithmetic would differ).

    Args:
        size (int | SymInt): tokens on the axis (``N`` for the 1-D layout).
        head_index (Tensor): (heads, ) int64 head ``i - 1`` (0-based, before shuffling)
            of every slot.
        num_heads (int): heads H.
        wmin (int): cap of head 1.

    Returns:
        Tensor: (heads, ) int64 on ``head_index``'s device.
    """
    if num_heads == 1:   # fibonacci_offsets: head 1 gets wmin (the official code divides by zero)
        return torch.full_like(head_index, wmin)
    spread = torch.scalar_tensor(size // 3 - wmin, dtype=torch.float64, device=head_index.device)
    # Tensor-to-int64 conversion truncates toward zero, as int() (the spread is negative below 3 * wmin).
    return wmin + (spread / (num_heads - 1) * head_index.to(torch.float64)).to(torch.int64)


def distance_table(size, candidates, caps):
    """Which offsets ``0 <= d < size`` every head slot keeps.

    Args:
        size (int | SymInt): tokens on the axis.
        candidates (Tensor): (heads, K) int64 whole runs of the slots, padded with -1
            (which no offset equals).
        caps (Tensor): (heads, ) int64 from :func:`head_caps`.

    Returns:
        Tensor: (heads, size) bool, True where slot ``h`` keeps offset ``d``.
    """
    # The first term is kept whatever the cap, the later ones (nondecreasing) up to it.
    first = torch.arange(candidates.shape[1], device=candidates.device) == 0
    kept = (candidates <= caps[:, None]) | first
    offsets = torch.arange(size, device=candidates.device)
    return ((candidates[:, :, None] == offsets) & kept[:, :, None]).any(1)


def _distances(coords):
    """(N, N) int64 ``|coords[i] - coords[j]|``."""
    return (coords[:, None] - coords[None, :]).abs()


def kept_mask(grid_size, candidates, head_index, num_heads, wmin, layout, with_cls):
    """Dense kept mask of a layer's pattern on ``grid_size``, built with tensor ops.

    Args:
        grid_size (tuple[int | SymInt, int | SymInt]): patch grid ``(gh, gw)``, row-major.
        candidates (Tensor): (heads, K) int64 slot runs padded with -1, see
            :func:`distance_table`.
        head_index (Tensor): (heads, ) int64 see :func:`head_caps`.
        num_heads (int), wmin (int): see :func:`head_caps`.
        layout (str): ``'1d'`` (offsets on the flattened index, capped from ``gh * gw``) or
            ``'2d'`` (axial: per-axis offsets capped from ``gh`` and ``gw``).
        with_cls (bool): prepend the CLS row and column (all kept).

    Returns:
        Tensor: (heads, T, T) bool on ``candidates``' device, ``T = gh * gw + with_cls``,
        True = kept; equal to ``fibottention_mask(fibottention_pattern(...), with_cls)``.
    """
    gh, gw = grid_size
    device = candidates.device

    def table(size):
        return distance_table(size, candidates, head_caps(size, head_index, num_heads, wmin))

    if layout == '1d':
        kept = table(gh * gw)[:, _distances(torch.arange(gh * gw, device=device))]
    else:
        # Token r = y * gw + x; a key is kept along a column (same x) by the row offsets
        # |dy| and along a row (same y) by the column offsets |dx|.
        y = torch.arange(gh, device=device)[:, None].expand(gh, gw).reshape(-1)
        x = torch.arange(gw, device=device)[None, :].expand(gh, gw).reshape(-1)
        dy, dx = _distances(y), _distances(x)
        kept = (table(gh)[:, dy] & (dx == 0)) | (table(gw)[:, dx] & (dy == 0))
    if not with_cls:
        return kept
    kept = torch.cat([torch.ones_like(kept[:, :1]), kept], dim=1)
    return torch.cat([torch.ones_like(kept[:, :, :1]), kept], dim=2)
