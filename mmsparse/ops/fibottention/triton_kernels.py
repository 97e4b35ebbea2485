"""Fused Triton forward and backward of Fibottention.

Same semantics as :func:`mmsparse.ops.fibottention.reference.fibottention_reference`
(Rahimian et al., arXiv 2406.19391; modes written out in ``docs/design.md``) with
work proportional to the number of KEPT entries: every patch query visits the
CLS key and its ``K`` pattern neighbours (gathered through the displacement
table, no mask is built), every patch key visits the CLS query and the
queries that keep it, and only the CLS row and column are dense. The forward
kernels also write the per-row log-sum-exp (LSE) and the weight of one masked
entry (``p0``, official mode); the backward kernels recompute the probabilities
from them.

Both run as ``torch.library.triton_op`` custom ops (see :mod:`mmsparse.ops._triton_op`):
``mmsparse::fibottention_attention_triton`` returns the output with the LSE and p0, which
its registered autograd saves, and its backward calls
``mmsparse::fibottention_attention_triton_backward``, which runs only the backward kernels.

Official (zero-logit) mode uses the V-sum rewrite: with ``V = sum_j v_j`` per
(batch, head), ``O_i = (sum_kept e_ij v_j + e0_i (V - sum_kept v_j)) / Z_i`` and
``dv_j = G0 + sum_{i keeps j} (P_ij - p0_i) g_i`` with ``G0 = sum_i p0_i g_i``.
``V`` and ``G0`` are O(T*D) reductions done with torch; everything else is in
the kernels.

Kernels (``T = N + HAS_CLS`` tokens, layout (B, heads, T, D))
-------------------------------------------------------------
* ``_fwd_patch``: grid (B*heads, cdiv(N, BLOCK)); a block of patch queries.
* ``_fwd_cls``: grid (B*heads, ); the dense CLS query row (two passes: max, sum).
* ``_bwd_dq_patch``: dQ of a block of patch queries; adds their share of the CLS
  key's dK/dV with ``tl.atomic_add``.
* ``_bwd_dq_cls``: dQ of the CLS query; adds the (CLS, CLS) term atomically.
* ``_bwd_dkdv_patch``: dK/dV of a block of patch keys; each key is owned by
  one program (the queries that keep key ``j`` are ``j - delta`` for every
  displacement ``delta``), so these rows need no atomics.

Dtypes: float16/bfloat16/float32 accumulate in float32, float64 in float64.
The atomic order on the CLS key makes its dK/dV non-deterministic in the last bits.
"""
from typing import List, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._dispatch import check_triton_device, interpreting
from .._triton_op import launch_triton, triton_custom_op

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit
def _patch_rows(offs, n_patch, grid_w, HAS_CLS: tl.constexpr):
    """Patch index -> (valid, token index, grid y, grid x)."""
    return offs < n_patch, offs + HAS_CLS, offs // grid_w, offs % grid_w


@triton.jit
def _neighbour(y, x, rows_ok, DISP, h, t, max_disp, grid_h, grid_w, sign, HAS_CLS: tl.constexpr):
    """Token index of ``(y, x) + sign * displacement[h, t]`` and whether it is in the grid."""
    dy = tl.load(DISP + (h * max_disp + t) * 2) * sign
    dx = tl.load(DISP + (h * max_disp + t) * 2 + 1) * sign
    ny = y + dy
    nx = x + dx
    ok = rows_ok & (ny >= 0) & (ny < grid_h) & (nx >= 0) & (nx < grid_w)
    return ok, (ny * grid_w + nx + HAS_CLS).to(tl.int64)


@triton.jit
def _fwd_patch(Q, K, V, VSUM, O, LSE, P0, DISP, CNT, SCALE,
               sqb, sqh, sqt, skb, skh, skt, svb, svh, svt,
               num_heads, n_tokens, n_patch, grid_h, grid_w, max_disp,
               HAS_CLS: tl.constexpr, OFFICIAL: tl.constexpr, D: tl.constexpr,
               BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """O, LSE and p0 of BLOCK patch queries of one (batch, head)."""
    bh = tl.program_id(0)
    b = (bh // num_heads).to(tl.int64)
    h = bh % num_heads
    scale = tl.load(SCALE)
    rows_ok, tq, y, x = _patch_rows(tl.program_id(1) * BLOCK + tl.arange(0, BLOCK), n_patch, grid_w,
                                    HAS_CLS)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q_base, k_base, v_base = Q + b * sqb + h * sqh, K + b * skb + h * skh, V + b * svb + h * svh
    q = tl.load(q_base + tq[:, None] * sqt + offs_d[None, :],
                mask=rows_ok[:, None] & mask_d[None, :], other=0.).to(ACC) * scale

    m = tl.full([BLOCK], float('-inf'), dtype=ACC)
    l = tl.zeros([BLOCK], dtype=ACC)
    acc = tl.zeros([BLOCK, BLOCK_D], dtype=ACC)
    v_kept = tl.zeros([BLOCK, BLOCK_D], dtype=ACC)    # sum of kept v (official mode)
    n_kept = tl.zeros([BLOCK], dtype=ACC)
    if HAS_CLS:                                       # CLS key: kept by every query
        k0 = tl.load(k_base + offs_d, mask=mask_d, other=0.).to(ACC)
        v0 = tl.load(v_base + offs_d, mask=mask_d, other=0.).to(ACC)
        m = tl.where(rows_ok, tl.sum(q * k0[None, :], 1), float('-inf'))
        l = tl.where(rows_ok, 1., 0.).to(ACC)
        acc = l[:, None] * v0[None, :]
        v_kept = acc
        n_kept = l
    for t in range(0, tl.load(CNT + h)):
        ok, tk = _neighbour(y, x, rows_ok, DISP, h, t, max_disp, grid_h, grid_w, 1, HAS_CLS)
        kk = tl.load(k_base + tk[:, None] * skt + offs_d[None, :], mask=ok[:, None] & mask_d[None, :],
                     other=0.).to(ACC)
        vv = tl.load(v_base + tk[:, None] * svt + offs_d[None, :], mask=ok[:, None] & mask_d[None, :],
                     other=0.).to(ACC)
        s = tl.where(ok, tl.sum(q * kk, 1), float('-inf'))
        m_new = tl.maximum(m, s)
        m_ref = tl.where(m_new == float('-inf'), 0., m_new)   # rows with no key yet
        alpha = tl.exp(m - m_ref)
        p = tl.exp(s - m_ref)
        l = l * alpha + p
        acc = acc * alpha[:, None] + p[:, None] * vv
        m = m_new
        if OFFICIAL:
            v_kept += vv
            n_kept += ok.to(ACC)

    if OFFICIAL:
        n_masked = n_tokens - n_kept
        has_masked = n_masked > 0
        m_fin = tl.where(has_masked, tl.maximum(m, 0.), m)  # the row max includes the zero logits
        c = tl.exp(m - m_fin)
        e0 = tl.where(has_masked, tl.exp(-m_fin), 0.)
        vsum = tl.load(VSUM + bh.to(tl.int64) * D + offs_d, mask=mask_d, other=0.).to(ACC)
        z = l * c + n_masked * e0
        out = (acc * c[:, None] + e0[:, None] * (vsum[None, :] - v_kept)) / z[:, None]
        lse = m_fin + tl.log(z)
        p0 = e0 / z
    else:
        empty = l == 0.                                # only without CLS: output 0
        l_safe = tl.where(empty, 1., l)
        out = acc / l_safe[:, None]
        lse = tl.where(empty, float('-inf'), m + tl.log(l_safe))
        p0 = tl.zeros([BLOCK], dtype=ACC)
    row = bh.to(tl.int64) * n_tokens + tq
    tl.store(O + row[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=rows_ok[:, None] & mask_d[None, :])
    tl.store(LSE + row, lse, mask=rows_ok)
    tl.store(P0 + row, p0, mask=rows_ok)


@triton.jit
def _fwd_cls(Q, K, V, O, LSE, P0, SCALE,
             sqb, sqh, skb, skh, skt, svb, svh, svt,
             num_heads, n_tokens,
             D: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """The dense CLS query row of one (batch, head): max pass, then sum pass."""
    bh = tl.program_id(0)
    b = (bh // num_heads).to(tl.int64)
    h = bh % num_heads
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q0 = tl.load(Q + b * sqb + h * sqh + offs_d, mask=mask_d, other=0.).to(ACC) * tl.load(SCALE)
    k_base, v_base = K + b * skb + h * skh, V + b * svb + h * svh
    m_vec = tl.full([BLOCK], float('-inf'), dtype=ACC)
    for start in range(0, n_tokens, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < n_tokens
        kk = tl.load(k_base + offs[:, None] * skt + offs_d[None, :], mask=ok[:, None] & mask_d[None, :],
                     other=0.).to(ACC)
        m_vec = tl.maximum(m_vec, tl.where(ok, tl.sum(kk * q0[None, :], 1), float('-inf')))
    m = tl.max(m_vec, 0)
    l_vec = tl.zeros([BLOCK], dtype=ACC)
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for start in range(0, n_tokens, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < n_tokens
        kk = tl.load(k_base + offs[:, None] * skt + offs_d[None, :], mask=ok[:, None] & mask_d[None, :],
                     other=0.).to(ACC)
        vv = tl.load(v_base + offs[:, None] * svt + offs_d[None, :], mask=ok[:, None] & mask_d[None, :],
                     other=0.).to(ACC)
        p = tl.where(ok, tl.exp(tl.sum(kk * q0[None, :], 1) - m), 0.)
        l_vec += p
        acc += tl.sum(p[:, None] * vv, 0)
    l = tl.sum(l_vec, 0)
    row = bh.to(tl.int64) * n_tokens
    tl.store(O + row * D + offs_d, (acc / l).to(O.dtype.element_ty), mask=mask_d)
    tl.store(LSE + row, m + tl.log(l))
    tl.store(P0 + row, 0.)


@triton.jit
def _bwd_dq_patch(Q, K, V, DO, DQ, DK, DV, LSE, DELTA, P0, DISP, CNT, SCALE,
                  sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
                  num_heads, n_tokens, n_patch, grid_h, grid_w, max_disp,
                  HAS_CLS: tl.constexpr, D: tl.constexpr,
                  BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """dQ of BLOCK patch queries; their share of the CLS key's dK/dV goes in atomically."""
    bh = tl.program_id(0)
    b = (bh // num_heads).to(tl.int64)
    h = bh % num_heads
    scale = tl.load(SCALE)
    rows_ok, tq, y, x = _patch_rows(tl.program_id(1) * BLOCK + tl.arange(0, BLOCK), n_patch, grid_w,
                                    HAS_CLS)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    mask_rd = rows_ok[:, None] & mask_d[None, :]
    k_base, v_base = K + b * skb + h * skh, V + b * svb + h * svh
    q = tl.load(Q + b * sqb + h * sqh + tq[:, None] * sqt + offs_d[None, :], mask=mask_rd,
                other=0.).to(ACC)
    do = tl.load(DO + b * sdb + h * sdh + tq[:, None] * sdt + offs_d[None, :], mask=mask_rd,
                 other=0.).to(ACC)
    row = bh.to(tl.int64) * n_tokens + tq
    lse = tl.load(LSE + row, mask=rows_ok, other=0.)
    delta = tl.load(DELTA + row, mask=rows_ok, other=0.)
    dq = tl.zeros([BLOCK, BLOCK_D], dtype=ACC)
    if HAS_CLS:
        k0 = tl.load(k_base + offs_d, mask=mask_d, other=0.).to(ACC)
        v0 = tl.load(v_base + offs_d, mask=mask_d, other=0.).to(ACC)
        p = tl.where(rows_ok, tl.exp(tl.sum(q * k0[None, :], 1) * scale - lse), 0.)
        ds = p * (tl.sum(do * v0[None, :], 1) - delta)
        dq += ds[:, None] * k0[None, :]
        p0 = tl.load(P0 + row, mask=rows_ok, other=0.)
        cls_row = bh.to(tl.int64) * n_tokens * D + offs_d
        tl.atomic_add(DK + cls_row, tl.sum(ds[:, None] * q, 0) * scale, mask=mask_d)
        tl.atomic_add(DV + cls_row, tl.sum((p - p0)[:, None] * do, 0), mask=mask_d)
    for t in range(0, tl.load(CNT + h)):
        ok, tk = _neighbour(y, x, rows_ok, DISP, h, t, max_disp, grid_h, grid_w, 1, HAS_CLS)
        kk = tl.load(k_base + tk[:, None] * skt + offs_d[None, :], mask=ok[:, None] & mask_d[None, :],
                     other=0.).to(ACC)
        vv = tl.load(v_base + tk[:, None] * svt + offs_d[None, :], mask=ok[:, None] & mask_d[None, :],
                     other=0.).to(ACC)
        p = tl.where(ok, tl.exp(tl.sum(q * kk, 1) * scale - lse), 0.)
        ds = p * (tl.sum(do * vv, 1) - delta)
        dq += ds[:, None] * kk
    tl.store(DQ + row[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=mask_rd)


@triton.jit
def _bwd_dq_cls(Q, K, V, DO, DQ, DK, DV, LSE, DELTA, SCALE,
                sqb, sqh, skb, skh, skt, svb, svh, svt, sdb, sdh,
                num_heads, n_tokens,
                D: tl.constexpr, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """dQ of the CLS query (dense over all keys) and its (CLS, CLS) dK/dV term."""
    bh = tl.program_id(0)
    b = (bh // num_heads).to(tl.int64)
    h = bh % num_heads
    scale = tl.load(SCALE)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    q0 = tl.load(Q + b * sqb + h * sqh + offs_d, mask=mask_d, other=0.).to(ACC)
    do0 = tl.load(DO + b * sdb + h * sdh + offs_d, mask=mask_d, other=0.).to(ACC)
    row = bh.to(tl.int64) * n_tokens
    lse = tl.load(LSE + row)
    delta = tl.load(DELTA + row)
    k_base, v_base = K + b * skb + h * skh, V + b * svb + h * svh
    # Key 0 (CLS column) gathers from every query: add this row's term atomically.
    k0 = tl.load(k_base + offs_d, mask=mask_d, other=0.).to(ACC)
    v0 = tl.load(v_base + offs_d, mask=mask_d, other=0.).to(ACC)
    p00 = tl.exp(tl.sum(q0 * k0, 0) * scale - lse)
    ds00 = p00 * (tl.sum(v0 * do0, 0) - delta)
    tl.atomic_add(DK + row * D + offs_d, ds00 * scale * q0, mask=mask_d)
    tl.atomic_add(DV + row * D + offs_d, p00 * do0, mask=mask_d)
    dq = tl.zeros([BLOCK_D], dtype=ACC)
    for start in range(0, n_tokens, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < n_tokens
        kk = tl.load(k_base + offs[:, None] * skt + offs_d[None, :], mask=ok[:, None] & mask_d[None, :],
                     other=0.).to(ACC)
        vv = tl.load(v_base + offs[:, None] * svt + offs_d[None, :], mask=ok[:, None] & mask_d[None, :],
                     other=0.).to(ACC)
        p = tl.where(ok, tl.exp(tl.sum(kk * q0[None, :], 1) * scale - lse), 0.)
        ds = p * (tl.sum(vv * do0[None, :], 1) - delta)
        dq += tl.sum(ds[:, None] * kk, 0)
    tl.store(DQ + row * D + offs_d, (dq * scale).to(DQ.dtype.element_ty), mask=mask_d)


@triton.jit
def _bwd_dkdv_patch(Q, K, V, DO, DK, DV, LSE, DELTA, P0, DISP, CNT, SCALE,
                    sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sdb, sdh, sdt,
                    num_heads, n_tokens, n_patch, grid_h, grid_w, max_disp,
                    HAS_CLS: tl.constexpr, D: tl.constexpr,
                    BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr):
    """dK/dV of BLOCK patch keys: from the CLS query and from every query that keeps them."""
    bh = tl.program_id(0)
    b = (bh // num_heads).to(tl.int64)
    h = bh % num_heads
    scale = tl.load(SCALE)
    keys_ok, tk, y, x = _patch_rows(tl.program_id(1) * BLOCK + tl.arange(0, BLOCK), n_patch, grid_w,
                                    HAS_CLS)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    mask_kd = keys_ok[:, None] & mask_d[None, :]
    q_base, do_base = Q + b * sqb + h * sqh, DO + b * sdb + h * sdh
    kk = tl.load(K + b * skb + h * skh + tk[:, None] * skt + offs_d[None, :], mask=mask_kd,
                 other=0.).to(ACC)
    vv = tl.load(V + b * svb + h * svh + tk[:, None] * svt + offs_d[None, :], mask=mask_kd,
                 other=0.).to(ACC)
    row_base = bh.to(tl.int64) * n_tokens
    dk = tl.zeros([BLOCK, BLOCK_D], dtype=ACC)
    dv = tl.zeros([BLOCK, BLOCK_D], dtype=ACC)
    if HAS_CLS:                                        # the CLS query keeps every key (p0 = 0)
        q0 = tl.load(q_base + offs_d, mask=mask_d, other=0.).to(ACC)
        do0 = tl.load(do_base + offs_d, mask=mask_d, other=0.).to(ACC)
        p = tl.where(keys_ok, tl.exp(tl.sum(kk * q0[None, :], 1) * scale - tl.load(LSE + row_base)), 0.)
        ds = p * (tl.sum(vv * do0[None, :], 1) - tl.load(DELTA + row_base))
        dk += ds[:, None] * q0[None, :]
        dv += p[:, None] * do0[None, :]
    for t in range(0, tl.load(CNT + h)):
        # Query i keeps key j = i + delta, so key j is kept by query j - delta.
        ok, ti = _neighbour(y, x, keys_ok, DISP, h, t, max_disp, grid_h, grid_w, -1, HAS_CLS)
        mask_qd = ok[:, None] & mask_d[None, :]
        qi = tl.load(q_base + ti[:, None] * sqt + offs_d[None, :], mask=mask_qd, other=0.).to(ACC)
        doi = tl.load(do_base + ti[:, None] * sdt + offs_d[None, :], mask=mask_qd, other=0.).to(ACC)
        lse = tl.load(LSE + row_base + ti, mask=ok, other=0.)
        delta = tl.load(DELTA + row_base + ti, mask=ok, other=0.)
        p0 = tl.load(P0 + row_base + ti, mask=ok, other=0.)
        p = tl.where(ok, tl.exp(tl.sum(qi * kk, 1) * scale - lse), 0.)
        ds = p * (tl.sum(doi * vv, 1) - delta)
        dk += ds[:, None] * qi
        dv += (p - p0)[:, None] * doi
    out = (row_base + tk)[:, None] * D + offs_d[None, :]
    tl.store(DK + out, dk * scale, mask=mask_kd)
    tl.store(DV + out, dv, mask=mask_kd)


# --------------------------------------------------------------------------------------
# Host side.
# --------------------------------------------------------------------------------------

def _launch_config(n_patch, d, dtype):
    """Rows per program (power of two in [16, cap]) and the padded head dim.

    The cap bounds registers on GPU (64 rows, 32 for fp64 or head dims > 64); the
    interpreter uses 128 (fewer, larger numpy steps are faster).
    """
    block_d = triton.next_power_of_2(max(d, 1))
    if interpreting():
        cap = 128
    else:
        cap = 32 if dtype == torch.float64 or block_d > 64 else 64
    block = min(cap, max(16, triton.next_power_of_2(max(n_patch, 1))))
    return dict(BLOCK=block, BLOCK_D=block_d, ACC=tl.float64 if dtype == torch.float64 else tl.float32)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scale_tensor(scale, acc_dtype, q):
    # A tensor, so that the kernels multiply in the accumulation dtype (float64 for float64).
    return torch.tensor([scale], dtype=acc_dtype, device=q.device)


def _validate(q, k, v, displacements, counts):
    for name, t in (('q', q), ('k', k), ('v', v)):
        check_triton_device(name, t)
        if t.dtype not in _SUPPORTED_DTYPES or t.dtype != q.dtype:
            raise TypeError(f'{name}.dtype={t.dtype} is not supported by the triton Fibottention '
                            f'kernels; q, k, v must share one of {_SUPPORTED_DTYPES}')
    for name, t in (('k', k), ('v', v), ('displacements', displacements), ('counts', counts)):
        if t.device != q.device:
            raise ValueError(f'{name}.device={t.device} must equal q.device={q.device}')


def _unit_stride(*tensors):
    """The kernels index the head dim with stride 1: copy only the tensors that lack it."""
    return tuple(t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous() for t in tensors)


def _forward(q, k, v, displacements, counts, grid, scale, official, with_cls):
    """Forward kernels: ``(o, lse, p0)``, the output and the per-row LSE and p0 the backward
    kernels recompute the probabilities from."""
    bsz, heads, n_tokens, d = q.shape
    n_patch = n_tokens - int(with_cls)
    cfg = _launch_config(n_patch, d, q.dtype)
    acc_dtype = _acc_dtype(q.dtype)
    scale_t = _scale_tensor(scale, acc_dtype, q)
    o = torch.empty(q.shape, dtype=v.dtype, device=q.device)
    lse = torch.empty((bsz, heads, n_tokens), dtype=acc_dtype, device=q.device)
    p0 = torch.empty_like(lse)
    vsum = v.sum(2, dtype=acc_dtype).contiguous() if official else lse
    geo = (heads, n_tokens, n_patch, grid[0], grid[1], displacements.shape[1])
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3])
    if n_patch:
        launch_triton(_fwd_patch, (bsz * heads, triton.cdiv(n_patch, cfg['BLOCK'])),
                      q, k, v, vsum, o, lse, p0, displacements, counts, scale_t, *strides, *geo,
                      HAS_CLS=int(with_cls), OFFICIAL=official, D=d, **cfg)
    if with_cls:
        launch_triton(_fwd_cls, (bsz * heads, ),
                      q, k, v, o, lse, p0, scale_t, *q.stride()[:2], *k.stride()[:3], *v.stride()[:3],
                      heads, n_tokens, D=d, **cfg)
    return o, lse, p0


def _backward(do, q, k, v, o, lse, p0, displacements, counts, grid, scale, official, with_cls):
    """Backward kernels: dq, dk, dv from the forward's O, LSE and p0."""
    bsz, heads, n_tokens, d = q.shape
    n_patch = n_tokens - int(with_cls)
    cfg = _launch_config(n_patch, d, q.dtype)
    scale_t = _scale_tensor(scale, lse.dtype, q)
    if do.stride(-1) != 1 or do.dtype != o.dtype:
        do = do.contiguous().to(o.dtype)
    delta = (do.to(lse.dtype) * o.to(lse.dtype)).sum(-1)   # rowsum(dO * O), full O
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.zeros(q.shape, dtype=lse.dtype, device=q.device)
    dv = torch.zeros(q.shape, dtype=lse.dtype, device=q.device)
    geo = (heads, n_tokens, n_patch, grid[0], grid[1], displacements.shape[1])
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    if n_patch:
        blocks = (bsz * heads, triton.cdiv(n_patch, cfg['BLOCK']))
        launch_triton(_bwd_dq_patch, blocks, q, k, v, do, dq, dk, dv, lse, delta, p0, displacements, counts,
                      scale_t, *strides, *geo, HAS_CLS=int(with_cls), D=d, **cfg)
        launch_triton(_bwd_dkdv_patch, blocks, q, k, v, do, dk, dv, lse, delta, p0, displacements, counts,
                      scale_t, *strides, *geo, HAS_CLS=int(with_cls), D=d, **cfg)
    if with_cls:
        launch_triton(_bwd_dq_cls, (bsz * heads, ),
                      q, k, v, do, dq, dk, dv, lse, delta, scale_t, *q.stride()[:2], *k.stride()[:3],
                      *v.stride()[:3], *do.stride()[:2], heads, n_tokens, D=d, **cfg)
    if official:   # every v_j also feeds the uniform part of every row: G0
        dv += torch.einsum('bht,bhtd->bhd', p0, do.to(lse.dtype))[:, :, None]
    return dq, dk.to(k.dtype), dv.to(v.dtype)


@triton_custom_op('mmsparse::fibottention_attention_triton')
def _fib_triton_op(q: Tensor, k: Tensor, v: Tensor, displacements: Tensor, counts: Tensor, grid: List[int],
                   scale: float, mode: str, with_cls: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """``mmsparse::fibottention_attention_triton``: the forward kernels.

    The arguments are those of ``mmsparse::fibottention_attention`` less the torch
    algorithms' index and masks (the FLOP counter reads both the same way).

    Args:
        q, k, v (Tensor): (B, heads, T, D), as :func:`fibottention_triton`.
        displacements, counts (Tensor): the :class:`~mmsparse.ops.fibottention.FibPattern`
            table, on ``q.device``.
        grid (list[int]): the pattern grid ``(gh, gw)``.
        scale (float): logit scale.
        mode (str): ``'sparse'`` or ``'official'``.
        with_cls (bool): token 0 is CLS.

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``(out, lse, p0)``: the (B, heads, T, D) output,
        and the (B, heads, T) per-row log-sum-exp and weight of one masked entry (0 in
        sparse mode) the backward kernels recompute the probabilities from.
    """
    _validate(q, k, v, displacements, counts)
    acc_dtype = _acc_dtype(q.dtype)
    if q.numel() == 0:   # Triton rejects empty grids; the output is empty
        stats = q.new_zeros(q.shape[:3], dtype=acc_dtype)
        return v.new_empty(q.shape), stats, stats.clone()
    q, k, v = _unit_stride(q, k, v)
    return _forward(q, k, v, displacements.contiguous(), counts.contiguous(), grid, scale, mode == 'official',
                    with_cls)


@triton_custom_op('mmsparse::fibottention_attention_triton_backward')
def _fib_triton_backward_op(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, p0: Tensor,
                            displacements: Tensor, counts: Tensor, grid: List[int], scale: float, mode: str,
                            with_cls: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """``mmsparse::fibottention_attention_triton_backward``: the backward kernels, from the
    forward's outputs (its kernels do not rerun).

    Args:
        grad (Tensor): (B, heads, T, D) gradient of ``out``.
        q, k, v (Tensor): the forward's inputs.
        out, lse, p0 (Tensor): the outputs of ``mmsparse::fibottention_attention_triton``.
        displacements, counts, grid, scale, mode, with_cls: the forward's arguments.

    Returns:
        tuple[Tensor, Tensor, Tensor]: ``(dq, dk, dv)`` in the dtypes of q, k, v.
    """
    if q.numel() == 0:   # no entry: every gradient is zero (and Triton rejects empty grids)
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    q, k, v = _unit_stride(q, k, v)
    return _backward(grad, q, k, v, out, lse, p0, displacements.contiguous(), counts.contiguous(), grid, scale,
                     mode == 'official', with_cls)


def _setup_context(ctx, inputs, output):
    q, k, v, displacements, counts, grid, scale, mode, with_cls = inputs
    out, lse, p0 = output
    ctx.mark_non_differentiable(lse, p0)
    ctx.save_for_backward(q, k, v, out, lse, p0, displacements, counts)
    ctx.fib = (grid, scale, mode, with_cls)


def _backward_of_op(ctx, grad, grad_lse, grad_p0):
    dq, dk, dv = _fib_triton_backward_op(grad, *ctx.saved_tensors, *ctx.fib)
    return dq, dk, dv, None, None, None, None, None, None


_fib_triton_op.register_autograd(_backward_of_op, setup_context=_setup_context)


def fibottention_triton(q, k, v, pattern, scale, mode='sparse', with_cls=True):
    """Fibottention with fused Triton kernels (the op ``mmsparse::fibottention_attention_triton``).

    Drop-in for :func:`~mmsparse.ops.fibottention.reference.fibottention_reference`
    (same result and gradients up to float rounding).

    Args:
        q, k, v (Tensor): (B, heads, T, D) float16/bfloat16/float32/float64, any
            strides (a permuted fused qkv costs no copy; a tensor without unit stride
            on D is copied first).
        pattern (FibPattern): kept displacements; moved to ``q.device``.
        scale (float): logit scale.
        mode (str): ``'sparse'`` or ``'official'``. Defaults to ``'sparse'``.
        with_cls (bool): token 0 is CLS. Defaults to True.

    Returns:
        Tensor: (B, heads, T, D) contiguous, dtype of ``v``, differentiable w.r.t. q, k,
        v (first order).
    """
    pattern = pattern.to(q.device)
    return _fib_triton_op(q, k, v, pattern.displacements, pattern.counts, list(pattern.grid), float(scale), mode,
                          bool(with_cls))[0]


__all__ = ['fibottention_triton']
