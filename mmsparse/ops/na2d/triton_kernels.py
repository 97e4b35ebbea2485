"""Fused Triton forward and backward of 2-D neighborhood attention with RPB.

Same semantics as :func:`mmsparse.ops.na2d.reference.na2d_reference` (NATTEN
0.14.4, https://github.com/SHI-Labs/NATTEN/tree/v0.14.4; rules written out in
``docs/design.md``), without materialising the
``(B, heads, H, W, k*k)`` attention tensor: each program owns a block of query
tokens of one (batch, head), walks their ``k*k`` neighbours one at a time with an
online softmax, and stores only the output and the per-query log-sum-exp. The
backward recomputes the probabilities from that log-sum-exp.

Layout used by the kernels
--------------------------
* ``q``, ``k``, ``v``, ``out``: (B, heads, H, W, hd), any strides (e.g. the
  permuted view of a fused ``qkv`` projection; nothing is copied).
* ``q`` may cover only the top-left ``Hq x Wq`` corner of the ``H x W`` key map
  (the attention module's pad-then-crop path computes only the queries it keeps);
  query ``m`` of a program is token ``m`` of the row-major ``Hq x Wq`` grid.
* Neighbour ``t = ti*k + tj`` of query ``(i, j)`` is the key at
  ``(row_start(i) + ti*d, col_start(j) + tj*d)``; its bias is
  ``rpb[head, row_bias(i) + ti, col_bias(j) + tj]``. ``*_start`` and ``*_bias``
  are NATTEN 0.14.4's window rules (``get_window_start`` / ``get_pb_start`` of
  https://github.com/SHI-Labs/NATTEN/blob/v0.14.4/natten/src/cpp/natten_cpu_commons.h,
  written out in ``docs/design.md``), computed per query in-kernel
  (:func:`_window`), identical to
  :func:`mmsparse.ops.na2d.reference.neighborhood_indices`.

Grid (forward and backward): ``(B * heads, cdiv(Hq*Wq, BLOCK_M))``.

The backward is one kernel: per query block it recomputes ``p``, forms ``dq``
directly (each query is owned by one program), and scatters ``dk``, ``dv`` (into
the keys of the window) and ``d_rpb`` (into the bias cells) with
``tl.atomic_add`` into fp32 (fp64 for fp64 inputs) buffers, because a key or a bias
cell is shared by many queries. The order of those additions is not fixed, so
``dk``, ``dv`` and ``d_rpb`` are not bitwise deterministic on GPU.

Dtypes: float16, bfloat16 and float32 accumulate in float32; float64 in float64.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .._dispatch import check_triton_device, interpreting
from .._triton_op import launch_triton, triton_custom_op

_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit
def _window(pos, length, K: tl.constexpr, dilation):
    """First neighbour and first bias index along one axis (NATTEN 0.14.4 window rule)."""
    residue = pos % dilation
    group = pos // dilation
    class_len = (length - residue + dilation - 1) // dilation
    start = tl.minimum(tl.maximum(group - K // 2, 0), class_len - K)
    return residue + start * dilation, K - 1 - (group - start)


@triton.jit
def _na2d_fwd_kernel(
        Q, K, V, RPB, O, LSE, SCALE,
        stride_qb, stride_qn, stride_qh, stride_qw, stride_qc,
        stride_kb, stride_kn, stride_kh, stride_kw, stride_kc,
        stride_vb, stride_vn, stride_vh, stride_vw, stride_vc,
        stride_ob, stride_on, stride_oh, stride_ow, stride_oc,
        stride_rn, stride_rh, stride_rw,
        num_heads, q_height, q_width, height, width, dilation,
        HEAD_DIM: tl.constexpr, KERNEL: tl.constexpr, HAS_RPB: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """out = softmax(scale * q.k_t + rpb_t) . v_t over the k*k neighbours; stores LSE (natural log)."""
    pid_bn = tl.program_id(0)
    b = (pid_bn // num_heads).to(tl.int64)
    head = pid_bn % num_heads
    scale = tl.load(SCALE).to(ACC_DTYPE)

    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < q_height * q_width
    row = offs_m // q_width
    col = offs_m % q_width
    row_start, row_bias = _window(row, height, KERNEL, dilation)
    col_start, col_bias = _window(col, width, KERNEL, dilation)
    offs_d = tl.arange(0, BLOCK_D)
    mask = mask_m[:, None] & (offs_d < HEAD_DIM)[None, :]

    q = tl.load(Q + b * stride_qb + head * stride_qn + row[:, None] * stride_qh + col[:, None] * stride_qw
                + offs_d[None, :] * stride_qc, mask=mask, other=0.0).to(ACC_DTYPE) * scale
    k_base = K + b * stride_kb + head * stride_kn + offs_d[None, :] * stride_kc
    v_base = V + b * stride_vb + head * stride_vn + offs_d[None, :] * stride_vc
    m_i = tl.full([BLOCK_M], float('-inf'), dtype=ACC_DTYPE)
    l_i = tl.zeros([BLOCK_M], dtype=ACC_DTYPE)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC_DTYPE)
    for ti in range(KERNEL):
        key_row = (row_start + ti * dilation)[:, None]
        for tj in range(KERNEL):
            key_col = (col_start + tj * dilation)[:, None]
            kt = tl.load(k_base + key_row * stride_kh + key_col * stride_kw, mask=mask, other=0.0)
            s = tl.sum(q * kt.to(ACC_DTYPE), 1)
            if HAS_RPB:
                s += tl.load(RPB + head * stride_rn + (row_bias + ti) * stride_rh
                             + (col_bias + tj) * stride_rw, mask=mask_m, other=0.0).to(ACC_DTYPE)
            m_new = tl.maximum(m_i, s)
            # While every logit so far is -inf (an -inf bias, an infinite key), m_i - m_new
            # would be -inf - -inf = NaN: rescale against 0 instead (alpha = p = 0). Rows that
            # stay all -inf end with l_i = 0 and output 0/0 = NaN, as the reference softmax.
            m_ref = tl.where(m_new == float('-inf'), 0.0, m_new)
            alpha = tl.exp(m_i - m_ref)
            p = tl.exp(s - m_ref)
            l_i = l_i * alpha + p
            vt = tl.load(v_base + key_row * stride_vh + key_col * stride_vw, mask=mask, other=0.0)
            acc = acc * alpha[:, None] + p[:, None] * vt.to(ACC_DTYPE)
            m_i = m_new

    acc = acc / l_i[:, None]
    tl.store(O + b * stride_ob + head * stride_on + row[:, None] * stride_oh + col[:, None] * stride_ow
             + offs_d[None, :] * stride_oc, acc.to(O.dtype.element_ty), mask=mask)
    tl.store(LSE + pid_bn.to(tl.int64) * q_height * q_width + offs_m, m_i + tl.log(l_i), mask=mask_m)


@triton.jit
def _na2d_bwd_kernel(
        Q, K, V, RPB, O, DO, LSE, SCALE, DQ, DK, DV, DRPB,
        stride_qb, stride_qn, stride_qh, stride_qw, stride_qc,
        stride_kb, stride_kn, stride_kh, stride_kw, stride_kc,
        stride_vb, stride_vn, stride_vh, stride_vw, stride_vc,
        stride_ob, stride_on, stride_oh, stride_ow, stride_oc,
        stride_dob, stride_don, stride_doh, stride_dow, stride_doc,
        stride_rn, stride_rh, stride_rw,
        num_heads, q_height, q_width, height, width, dilation,
        HEAD_DIM: tl.constexpr, KERNEL: tl.constexpr, HAS_RPB: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """dq (stored), dk, dv, d_rpb (atomically added) for a block of queries.

    ``DQ`` (B, heads, Hq, Wq, hd), ``DK``, ``DV`` (B, heads, H, W, hd) and ``DRPB``
    (heads, 2k-1, 2k-1) are contiguous buffers of the accumulator dtype.
    """
    pid_bn = tl.program_id(0)
    b = (pid_bn // num_heads).to(tl.int64)
    head = pid_bn % num_heads
    scale = tl.load(SCALE).to(ACC_DTYPE)
    table = 2 * KERNEL - 1

    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < q_height * q_width
    row = offs_m // q_width
    col = offs_m % q_width
    row_start, row_bias = _window(row, height, KERNEL, dilation)
    col_start, col_bias = _window(col, width, KERNEL, dilation)
    offs_d = tl.arange(0, BLOCK_D)
    mask = mask_m[:, None] & (offs_d < HEAD_DIM)[None, :]

    q = tl.load(Q + b * stride_qb + head * stride_qn + row[:, None] * stride_qh + col[:, None] * stride_qw
                + offs_d[None, :] * stride_qc, mask=mask, other=0.0).to(ACC_DTYPE) * scale
    do = tl.load(DO + b * stride_dob + head * stride_don + row[:, None] * stride_doh
                 + col[:, None] * stride_dow + offs_d[None, :] * stride_doc,
                 mask=mask, other=0.0).to(ACC_DTYPE)
    o = tl.load(O + b * stride_ob + head * stride_on + row[:, None] * stride_oh + col[:, None] * stride_ow
                + offs_d[None, :] * stride_oc, mask=mask, other=0.0).to(ACC_DTYPE)
    delta = tl.sum(do * o, 1)
    lse = tl.load(LSE + pid_bn.to(tl.int64) * q_height * q_width + offs_m, mask=mask_m, other=0.0)

    # Gradient buffers are contiguous (B, heads, H, W, hd) (DQ: Hq x Wq): token * HEAD_DIM + channel.
    key_grad_base = (pid_bn.to(tl.int64) * height * width) * HEAD_DIM + offs_d[None, :]
    query_grad_base = (pid_bn.to(tl.int64) * q_height * q_width) * HEAD_DIM + offs_d[None, :]
    k_base = K + b * stride_kb + head * stride_kn + offs_d[None, :] * stride_kc
    v_base = V + b * stride_vb + head * stride_vn + offs_d[None, :] * stride_vc
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC_DTYPE)
    for ti in range(KERNEL):
        key_row = row_start + ti * dilation
        for tj in range(KERNEL):
            key_col = col_start + tj * dilation
            kt = tl.load(k_base + key_row[:, None] * stride_kh + key_col[:, None] * stride_kw,
                         mask=mask, other=0.0).to(ACC_DTYPE)
            vt = tl.load(v_base + key_row[:, None] * stride_vh + key_col[:, None] * stride_vw,
                         mask=mask, other=0.0).to(ACC_DTYPE)
            s = tl.sum(q * kt, 1)
            if HAS_RPB:
                s += tl.load(RPB + head * stride_rn + (row_bias + ti) * stride_rh
                             + (col_bias + tj) * stride_rw, mask=mask_m, other=0.0).to(ACC_DTYPE)
            p = tl.where(mask_m, tl.exp(s - lse), 0.0)
            ds = p * (tl.sum(do * vt, 1) - delta)
            dq += ds[:, None] * kt
            key_offs = key_grad_base + (key_row * width + key_col)[:, None] * HEAD_DIM
            tl.atomic_add(DK + key_offs, ds[:, None] * q, mask=mask)
            tl.atomic_add(DV + key_offs, p[:, None] * do, mask=mask)
            if HAS_RPB:
                bias_offs = head * table * table + (row_bias + ti) * table + (col_bias + tj)
                tl.atomic_add(DRPB + bias_offs, ds, mask=mask_m)

    tl.store(DQ + query_grad_base + offs_m[:, None] * HEAD_DIM, dq * scale, mask=mask)


def _block_config(tokens, head_dim):
    """BLOCK_D: head dim rounded up to a power of two (>= 16, masked). BLOCK_M: 64
    query tokens per program on GPU (32 for head dims > 64, bounding registers); in the
    interpreter up to 256, since fewer, larger numpy steps are faster."""
    block_d = max(16, triton.next_power_of_2(head_dim))
    cap = 256 if interpreting() else 64 if block_d <= 64 else 32
    block_m = min(cap, max(16, triton.next_power_of_2(tokens)))
    return dict(BLOCK_M=block_m, BLOCK_D=block_d, num_warps=4 if block_d <= 64 else 8)


def _validate(q, k, v, rpb):
    tensors = [('q', q), ('k', k), ('v', v)] + ([('rpb', rpb)] if rpb is not None else [])
    for name, t in tensors:
        check_triton_device(name, t)
        if t.dtype != q.dtype:
            raise TypeError(f'{name}.dtype={t.dtype} must equal q.dtype={q.dtype}')
        if t.device != q.device:
            raise ValueError(f'{name}.device={t.device} must equal q.device={q.device}')
    if q.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f'q.dtype={q.dtype} is not supported by the triton NA kernels; '
                        f'expected one of {_SUPPORTED_DTYPES}')


def _strides(*tensors):
    return [s for t in tensors for s in t.stride()]


def _forward(q, k, v, rpb, kernel_size, dilation, scale):
    """Launch the forward kernel: ``(out, lse)``."""
    batch, heads, q_height, q_width, head_dim = q.shape
    height, width = k.shape[2:4]
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    cfg = _block_config(q_height * q_width, head_dim)
    has_rpb = rpb is not None
    out = torch.empty(q.shape[:4] + v.shape[4:], dtype=v.dtype, device=q.device)
    lse = torch.empty((batch * heads, q_height * q_width), dtype=acc_dtype, device=q.device)
    grid = (batch * heads, triton.cdiv(q_height * q_width, cfg['BLOCK_M']))
    launch_triton(
        _na2d_fwd_kernel, grid, q, k, v, rpb if has_rpb else q, out, lse, _scale_tensor(scale, acc_dtype, q),
        *_strides(q, k, v, out), *(rpb.stride() if has_rpb else (0, 0, 0)),
        heads, q_height, q_width, height, width, dilation, HEAD_DIM=head_dim, KERNEL=kernel_size,
        HAS_RPB=has_rpb, ACC_DTYPE=_tl_dtype(acc_dtype), **cfg)
    return out, lse


def _backward(d_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale):
    """Launch the backward kernel: ``(dq, dk, dv, d_rpb)`` in the input dtypes (``d_rpb``
    None without ``rpb``)."""
    batch, heads, q_height, q_width, head_dim = q.shape
    height, width = k.shape[2:4]
    acc_dtype = lse.dtype
    cfg = _block_config(q_height * q_width, head_dim)
    has_rpb = rpb is not None
    dq = torch.empty(q.shape, dtype=acc_dtype, device=q.device)
    dk, dv = (torch.zeros(k.shape, dtype=acc_dtype, device=q.device) for _ in range(2))
    table = 2 * kernel_size - 1
    d_rpb = torch.zeros((heads, table, table), dtype=acc_dtype, device=q.device)
    grid = (batch * heads, triton.cdiv(q_height * q_width, cfg['BLOCK_M']))
    launch_triton(
        _na2d_bwd_kernel, grid, q, k, v, rpb if has_rpb else q, out, d_out, lse, _scale_tensor(scale, acc_dtype, q),
        dq, dk, dv, d_rpb, *_strides(q, k, v, out, d_out), *(rpb.stride() if has_rpb else (0, 0, 0)),
        heads, q_height, q_width, height, width, dilation, HEAD_DIM=head_dim, KERNEL=kernel_size,
        HAS_RPB=has_rpb, ACC_DTYPE=_tl_dtype(acc_dtype), **cfg)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), d_rpb.to(rpb.dtype) if has_rpb else None


def _scale_tensor(scale, acc_dtype, q):
    # A tensor, so that the kernel multiplies in the accumulation dtype (float64 for float64).
    return torch.tensor([scale], dtype=acc_dtype, device=q.device)


def _tl_dtype(acc_dtype):
    return tl.float64 if acc_dtype == torch.float64 else tl.float32


@triton_custom_op('mmsparse::neighborhood_attention_2d_triton')
def _na2d_triton_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kernel_size: int, dilation: int,
                    rpb: Optional[torch.Tensor], scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``mmsparse::neighborhood_attention_2d_triton``: ``(out, lse)``, the forward kernel's output and
    the per-query log-sum-exp (B*heads, Hq*Wq) the backward recomputes the probabilities from.
    The arguments are those of ``mmsparse::neighborhood_attention_2d`` (the FLOP counter reads
    both the same way)."""
    _validate(q, k, v, rpb)
    if q.numel() == 0:  # Triton rejects empty grids; nothing to compute
        acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return (q.new_empty(q.shape[:4] + v.shape[4:]),
                q.new_empty((q.shape[0] * q.shape[1], q.shape[2] * q.shape[3]), dtype=acc_dtype))
    return _forward(q, k, v, rpb, kernel_size, dilation, scale)


@triton_custom_op('mmsparse::neighborhood_attention_2d_triton_backward')
def _na2d_triton_backward_op(d_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             rpb: Optional[torch.Tensor], out: torch.Tensor, lse: torch.Tensor, kernel_size: int,
                             dilation: int, scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                   torch.Tensor]:
    """``(dq, dk, dv, d_rpb)`` from the forward's ``out`` and ``lse``, without rerunning it;
    ``d_rpb`` is an empty tensor without ``rpb`` (an op cannot return None)."""
    if q.numel() == 0:  # no query: every gradient is zero
        grads = tuple(None if t is None else torch.zeros_like(t) for t in (q, k, v, rpb))
    else:
        grads = _backward(d_out.contiguous(), q, k, v, rpb, out, lse, kernel_size, dilation, scale)
    return tuple(q.new_empty(0) if g is None else g for g in grads)


def _setup_context(ctx, inputs, output):
    q, k, v, kernel_size, dilation, rpb, scale = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, rpb, out, lse)
    ctx.na = (kernel_size, dilation, scale)


def _backward_of_op(ctx, d_out, d_lse):
    q, k, v, rpb, out, lse = ctx.saved_tensors
    kernel_size, dilation, scale = ctx.na
    dq, dk, dv, d_rpb = _na2d_triton_backward_op(d_out, q, k, v, rpb, out, lse, kernel_size, dilation, scale)
    return dq, dk, dv, None, None, d_rpb if rpb is not None else None, None


_na2d_triton_op.register_autograd(_backward_of_op, setup_context=_setup_context)


def na2d_triton(q, k, v, kernel_size, dilation, rpb, scale):
    """Neighborhood attention with fused Triton kernels (the op ``mmsparse::neighborhood_attention_2d_triton``).

    Drop-in for :func:`mmsparse.ops.na2d.reference.na2d_reference` (same
    arguments, result and gradients up to float rounding); the arguments are
    checked by :func:`mmsparse.ops.neighborhood_attention_2d`.

    Args:
        q (Tensor): (B, heads, Hq, Wq, hd) float16/bfloat16/float32/float64, the
            queries at the top-left corner of the map, any strides.
        k, v (Tensor): (B, heads, H, W, hd), same dtype, any strides;
            ``H, W >= kernel_size * dilation``, ``Hq <= H``, ``Wq <= W``.
        kernel_size (int): odd window size ``k``.
        dilation (int): dilation ``d``.
        rpb (Tensor | None): (heads, 2k-1, 2k-1), same dtype.
        scale (float): multiplies ``q``.

    Returns:
        Tensor: (B, heads, Hq, Wq, hd) contiguous, differentiable w.r.t. q, k, v and
        rpb (first order).
    """
    return _na2d_triton_op(q, k, v, kernel_size, dilation, rpb, float(scale))[0]


__all__ = ['na2d_triton']
