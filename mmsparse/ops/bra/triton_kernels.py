"""Fused Triton forward and backward of bi-level routing attention (BRA).

Same semantics as :func:`mmsparse.ops.bra.reference.bra_attention_reference`
(the legacy BRA of BiFormer, ``ops/bra_legacy.py`` of https://github.com/rayleizhu/BiFormer,
behind the released checkpoints), without its memory cost:
the reference gathers a ``topk``-times redundant copy of K/V per query region
and materialises the ``(h*w) x (topk*h*w)`` attention matrix of every region and
head. Here every program reads the K/V tokens of the routed regions straight
from the NHWC ``k``/``v`` tensors (through their strides, so channel slices of a
fused ``qkv`` output cost no copy) and runs a flash-attention style online
softmax. Backward recomputes the probabilities from the saved per-row
log-sum-exp, so no attention matrix is ever stored.

Layout used by all kernels
--------------------------
* Region ``r = ry * n_win + rx``; token ``t`` of a region (row-major, ``h x w``
  tokens with ``h = H / n_win``, ``w = W / n_win``) sits at pixel
  ``(ry * h + t // w, rx * w + t % w)``.
* The keys of a query region are the concatenation, slot by slot, of the
  ``topk`` routed regions: key ``s`` of the sequence is token ``s % (h*w)`` of
  region ``region_index[n, r, s // (h*w)]``. The key loop walks this
  ``topk * h * w`` sequence in blocks, computing every key's region on the fly,
  so tiny regions (1x1, 2x2 in the late BiFormer stages) still fill a block of
  keys (a block may straddle routed regions).
* Head ``m`` owns channels ``[m*Dqk, (m+1)*Dqk)`` of q/k and ``[m*Dv, ...)`` of v.

Grids
-----
* forward and dQ: ``(N * n_win**2, num_heads, cdiv(h*w, BLOCK_M))``; one program
  = one block of query tokens of one region and head, looping over all keys.
* dK/dV: ``(N * n_win**2 * cdiv(topk*h*w, BLOCK_N), num_heads)``; one program =
  one block of the key sequence of one query region (i.e. of routed slot(s)
  ``j``) and head, looping over the query tokens of that region; results are
  added with ``tl.atomic_add`` into fp32 (fp64 for fp64 inputs) dK/dV buffers
  because one key region is routed from many query regions. The order of those
  atomic additions is not fixed, so dK/dV are not bitwise deterministic on GPU.

Dtypes: float16, bfloat16 and float32 compute logits, softmax and accumulators
in float32 (fp32 inputs use IEEE fp32 dots unless
``torch.backends.cuda.matmul.allow_tf32`` is on, mirroring PyTorch); float64
computes everything in float64 (Triton lowers fp64 ``tl.dot`` to DMMA on
sm80/sm90 and to FMA elsewhere).
"""
import math
from typing import Tuple

import torch
import triton
import triton.language as tl

from .._dispatch import check_triton_device, interpreting
from .._triton_op import launch_triton, triton_custom_op
from .reference import bra_attention_reference

_LOG2E = 1.4426950408889634
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------------------
# Kernels. Triton picks compiler or CPU interpreter when it is imported and when it
# decorates, so ``TRITON_INTERPRET=1`` must be set before ``triton`` is first imported.
# --------------------------------------------------------------------------------------

@triton.jit
def _bra_fwd_kernel(
        Q, K, V, O, LSE, IDX, SCALE,
        stride_qn, stride_qh, stride_qw, stride_qc,
        stride_kn, stride_kh, stride_kw, stride_kc,
        stride_vn, stride_vh, stride_vw, stride_vc,
        stride_on, stride_oh, stride_ow, stride_oc,
        stride_in, stride_ir, stride_ik,
        num_regions, n_win, reg_h, reg_w, tokens, n_keys, num_heads,
        D_QK: tl.constexpr, D_V: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
        SCALE_IS_PTR: tl.constexpr, ACC_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
        PRECISION: tl.constexpr):
    """O = softmax(scale * Q K^T) V for BLOCK_M query tokens of one region and head.

    Also stores the row log-sum-exp in base 2 (LSE: (N*R, heads, h*w)).
    """
    pid_r = tl.program_id(0)                        # n * num_regions + r
    head = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = (pid_r // num_regions).to(tl.int64)         # int64: batch offsets may pass 2**31
    r = pid_r % num_regions
    if SCALE_IS_PTR:                                # fp64: keep the scale in full precision
        qk_scale = tl.load(SCALE + 1)
    else:
        qk_scale = SCALE * 1.4426950408889634       # log2(e): the softmax runs on exp2

    # Query tokens of this block: region-local index -> pixel.
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < tokens
    q_y = (r // n_win) * reg_h + offs_m // reg_w
    q_x = (r % n_win) * reg_w + offs_m % reg_w
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dqk = offs_dqk < D_QK                      # head dims are padded to a power of two
    mask_dv = offs_dv < D_V
    q_ptrs = (Q + b * stride_qn + q_y[:, None].to(tl.int64) * stride_qh + q_x[:, None] * stride_qw
              + (head * D_QK + offs_dqk)[None, :] * stride_qc)
    q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_dqk[None, :], other=0.0).to(DOT_DTYPE)

    m_i = tl.full([BLOCK_M], float('-inf'), dtype=ACC_DTYPE)
    l_i = tl.zeros([BLOCK_M], dtype=ACC_DTYPE)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=ACC_DTYPE)
    idx_base = IDX + b * stride_in + r * stride_ir
    for start_n in range(0, n_keys, BLOCK_N):
        # Key s of the concatenated routed sequence -> (routed region, token) -> pixel.
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_keys
        kv_region = tl.load(idx_base + (offs_n // tokens) * stride_ik, mask=mask_n, other=0).to(tl.int32)
        t = offs_n % tokens
        k_y = ((kv_region // n_win) * reg_h + t // reg_w).to(tl.int64)
        k_x = (kv_region % n_win) * reg_w + t % reg_w
        # K is loaded transposed (BLOCK_DQK, BLOCK_N) so the dot needs no permute.
        kt = tl.load(K + b * stride_kn + k_y[None, :] * stride_kh + k_x[None, :] * stride_kw
                     + (head * D_QK + offs_dqk)[:, None] * stride_kc,
                     mask=mask_dqk[:, None] & mask_n[None, :], other=0.0).to(DOT_DTYPE)
        s = tl.dot(q, kt, input_precision=PRECISION, out_dtype=ACC_DTYPE) * qk_scale
        s = tl.where(mask_n[None, :], s, float('-inf'))
        # Online softmax. A row whose logits so far are all -inf (infinite keys) has
        # m_new = -inf; rescale against 0 there, or -inf - -inf would make it NaN.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float('-inf'), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * stride_vn + k_y[:, None] * stride_vh + k_x[:, None] * stride_vw
                    + (head * D_V + offs_dv)[None, :] * stride_vc,
                    mask=mask_n[:, None] & mask_dv[None, :], other=0.0).to(DOT_DTYPE)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION,
                                            out_dtype=ACC_DTYPE)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_ptrs = (O + b * stride_on + q_y[:, None].to(tl.int64) * stride_oh + q_x[:, None] * stride_ow
              + (head * D_V + offs_dv)[None, :] * stride_oc)
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_dv[None, :])
    tl.store(LSE + (pid_r * num_heads + head).to(tl.int64) * tokens + offs_m,
             m_i + tl.log2(l_i), mask=mask_m)


@triton.jit
def _bra_bwd_dq_kernel(
        Q, K, V, O, DO, DQ, LSE, DELTA, IDX, SCALE,
        stride_qn, stride_qh, stride_qw, stride_qc,
        stride_kn, stride_kh, stride_kw, stride_kc,
        stride_vn, stride_vh, stride_vw, stride_vc,
        stride_on, stride_oh, stride_ow, stride_oc,
        stride_don, stride_doh, stride_dow, stride_doc,
        stride_dqn, stride_dqh, stride_dqw, stride_dqc,
        stride_in, stride_ir, stride_ik,
        num_regions, n_win, reg_h, reg_w, tokens, n_keys, num_heads,
        D_QK: tl.constexpr, D_V: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
        SCALE_IS_PTR: tl.constexpr, ACC_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
        PRECISION: tl.constexpr):
    """dQ for BLOCK_M query tokens of one region and head (same grid as forward).

    Also computes and stores delta = rowsum(dO * O) (DELTA: (N*R, heads, h*w)),
    which the dK/dV kernel needs; each query row is owned by exactly one program.
    """
    pid_r = tl.program_id(0)
    head = tl.program_id(1)
    pid_m = tl.program_id(2)
    b = (pid_r // num_regions).to(tl.int64)
    r = pid_r % num_regions
    if SCALE_IS_PTR:
        scale = tl.load(SCALE)
        qk_scale = tl.load(SCALE + 1)
    else:
        scale = SCALE
        qk_scale = SCALE * 1.4426950408889634

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < tokens
    q_y = ((r // n_win) * reg_h + offs_m // reg_w).to(tl.int64)
    q_x = (r % n_win) * reg_w + offs_m % reg_w
    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dqk = offs_dqk < D_QK
    mask_dv = offs_dv < D_V
    mask_q = mask_m[:, None] & mask_dqk[None, :]
    mask_o = mask_m[:, None] & mask_dv[None, :]
    q = tl.load(Q + b * stride_qn + q_y[:, None] * stride_qh + q_x[:, None] * stride_qw
                + (head * D_QK + offs_dqk)[None, :] * stride_qc, mask=mask_q, other=0.0).to(DOT_DTYPE)
    do = tl.load(DO + b * stride_don + q_y[:, None] * stride_doh + q_x[:, None] * stride_dow
                 + (head * D_V + offs_dv)[None, :] * stride_doc, mask=mask_o, other=0.0).to(DOT_DTYPE)
    o = tl.load(O + b * stride_on + q_y[:, None] * stride_oh + q_x[:, None] * stride_ow
                + (head * D_V + offs_dv)[None, :] * stride_oc, mask=mask_o, other=0.0)
    row = (pid_r * num_heads + head).to(tl.int64) * tokens + offs_m
    delta = tl.sum(do.to(ACC_DTYPE) * o.to(ACC_DTYPE), 1)
    tl.store(DELTA + row, delta, mask=mask_m)
    lse = tl.load(LSE + row, mask=mask_m, other=0.0)

    dq = tl.zeros([BLOCK_M, BLOCK_DQK], dtype=ACC_DTYPE)
    idx_base = IDX + b * stride_in + r * stride_ir
    for start_n in range(0, n_keys, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_keys
        kv_region = tl.load(idx_base + (offs_n // tokens) * stride_ik, mask=mask_n, other=0).to(tl.int32)
        t = offs_n % tokens
        k_y = ((kv_region // n_win) * reg_h + t // reg_w).to(tl.int64)
        k_x = (kv_region % n_win) * reg_w + t % reg_w
        kt = tl.load(K + b * stride_kn + k_y[None, :] * stride_kh + k_x[None, :] * stride_kw
                     + (head * D_QK + offs_dqk)[:, None] * stride_kc,
                     mask=mask_dqk[:, None] & mask_n[None, :], other=0.0).to(DOT_DTYPE)
        vt = tl.load(V + b * stride_vn + k_y[None, :] * stride_vh + k_x[None, :] * stride_vw
                     + (head * D_V + offs_dv)[:, None] * stride_vc,
                     mask=mask_dv[:, None] & mask_n[None, :], other=0.0).to(DOT_DTYPE)
        # Recompute P from the saved log-sum-exp; padded keys get probability 0.
        s = tl.dot(q, kt, input_precision=PRECISION, out_dtype=ACC_DTYPE) * qk_scale
        p = tl.where(mask_n[None, :], tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, vt, input_precision=PRECISION, out_dtype=ACC_DTYPE)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PRECISION, out_dtype=ACC_DTYPE)

    dq = dq * scale
    tl.store(DQ + b * stride_dqn + q_y[:, None] * stride_dqh + q_x[:, None] * stride_dqw
             + (head * D_QK + offs_dqk)[None, :] * stride_dqc, dq.to(DQ.dtype.element_ty), mask=mask_q)


@triton.jit
def _bra_bwd_dkdv_kernel(
        Q, K, V, DO, DK, DV, LSE, DELTA, IDX, SCALE,
        stride_qn, stride_qh, stride_qw, stride_qc,
        stride_kn, stride_kh, stride_kw, stride_kc,
        stride_vn, stride_vh, stride_vw, stride_vc,
        stride_don, stride_doh, stride_dow, stride_doc,
        stride_dkn, stride_dkh, stride_dkw, stride_dkc,
        stride_dvn, stride_dvh, stride_dvw, stride_dvc,
        stride_in, stride_ir, stride_ik,
        num_regions, n_win, reg_h, reg_w, tokens, n_keys, num_heads, num_kblocks,
        D_QK: tl.constexpr, D_V: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
        SCALE_IS_PTR: tl.constexpr, ACC_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
        PRECISION: tl.constexpr):
    """dK/dV contribution of one query region to BLOCK_N of its routed keys, one head.

    The keys are block ``pid % num_kblocks`` of the region's concatenated routed
    sequence (slot ``j = s // (h*w)``); P^T is recomputed over all of the query
    region's tokens and the result is atomically added to the fp32/fp64 DK/DV
    buffers (N, H, W, C), since other query regions route to the same keys.
    """
    pid = tl.program_id(0)                          # (n * num_regions + r) * num_kblocks + kb
    head = tl.program_id(1)
    pid_r = pid // num_kblocks
    kb = pid % num_kblocks
    b = (pid_r // num_regions).to(tl.int64)
    r = pid_r % num_regions
    if SCALE_IS_PTR:
        scale = tl.load(SCALE)
        qk_scale = tl.load(SCALE + 1)
    else:
        scale = SCALE
        qk_scale = SCALE * 1.4426950408889634

    offs_dqk = tl.arange(0, BLOCK_DQK)
    offs_dv = tl.arange(0, BLOCK_DV)
    mask_dqk = offs_dqk < D_QK
    mask_dv = offs_dv < D_V

    offs_n = kb * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_keys
    kv_region = tl.load(IDX + b * stride_in + r * stride_ir + (offs_n // tokens) * stride_ik,
                        mask=mask_n, other=0).to(tl.int32)
    t = offs_n % tokens
    k_y = ((kv_region // n_win) * reg_h + t // reg_w).to(tl.int64)
    k_x = (kv_region % n_win) * reg_w + t % reg_w
    mask_k = mask_n[:, None] & mask_dqk[None, :]
    mask_v = mask_n[:, None] & mask_dv[None, :]
    k = tl.load(K + b * stride_kn + k_y[:, None] * stride_kh + k_x[:, None] * stride_kw
                + (head * D_QK + offs_dqk)[None, :] * stride_kc, mask=mask_k, other=0.0).to(DOT_DTYPE)
    v = tl.load(V + b * stride_vn + k_y[:, None] * stride_vh + k_x[:, None] * stride_vw
                + (head * D_V + offs_dv)[None, :] * stride_vc, mask=mask_v, other=0.0).to(DOT_DTYPE)

    dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=ACC_DTYPE)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=ACC_DTYPE)
    row_base = (pid_r * num_heads + head).to(tl.int64) * tokens
    for start_m in range(0, tokens, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < tokens
        q_y = ((r // n_win) * reg_h + offs_m // reg_w).to(tl.int64)
        q_x = (r % n_win) * reg_w + offs_m % reg_w
        qt = tl.load(Q + b * stride_qn + q_y[None, :] * stride_qh + q_x[None, :] * stride_qw
                     + (head * D_QK + offs_dqk)[:, None] * stride_qc,
                     mask=mask_dqk[:, None] & mask_m[None, :], other=0.0).to(DOT_DTYPE)
        do = tl.load(DO + b * stride_don + q_y[:, None] * stride_doh + q_x[:, None] * stride_dow
                     + (head * D_V + offs_dv)[None, :] * stride_doc,
                     mask=mask_m[:, None] & mask_dv[None, :], other=0.0).to(DOT_DTYPE)
        lse = tl.load(LSE + row_base + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + row_base + offs_m, mask=mask_m, other=0.0)
        # P^T (BLOCK_N keys x BLOCK_M queries); padded query rows contribute nothing.
        st = tl.dot(k, qt, input_precision=PRECISION, out_dtype=ACC_DTYPE) * qk_scale
        pt = tl.where(mask_m[None, :], tl.exp2(st - lse[None, :]), 0.0)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION, out_dtype=ACC_DTYPE)
        dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION, out_dtype=ACC_DTYPE)
        dst = pt * (dpt - delta[None, :])
        dk += tl.dot(dst.to(qt.dtype), tl.trans(qt), input_precision=PRECISION, out_dtype=ACC_DTYPE)

    dk = dk * scale
    tl.atomic_add(DK + b * stride_dkn + k_y[:, None] * stride_dkh + k_x[:, None] * stride_dkw
                  + (head * D_QK + offs_dqk)[None, :] * stride_dkc, dk, mask=mask_k)
    tl.atomic_add(DV + b * stride_dvn + k_y[:, None] * stride_dvh + k_x[:, None] * stride_dvw
                  + (head * D_V + offs_dv)[None, :] * stride_dvc, dv, mask=mask_v)


# Upper bound on BLOCK_M/BLOCK_N; tests lower it (>= 16) to run the multi-block paths
# (several query blocks per region, key blocks straddling routed regions) on small maps.
_BLOCK_CAP = None


# --------------------------------------------------------------------------------------
# Host side.
# --------------------------------------------------------------------------------------

def _pow2_at_least(x, low):
    return max(low, triton.next_power_of_2(max(int(x), 1)))


def _block_config(tokens, n_keys, d_qk, d_v, dtype):
    """Block sizes and warps for all three kernels.

    * head dims: next power of two >= 16 (``tl.dot`` needs every dim >= 16);
      padded channels are masked to zero.
    * BLOCK_M (query tokens per program / per step): the region's token count
      rounded up to a power of two, clamped to [16, cap] -- queries of
      different regions attend to different keys, so a block never spans regions.
    * BLOCK_N (keys per step / per dK/dV program): the routed sequence
      ``topk * h*w`` rounded up, clamped to [16, cap]; blocks may span routed
      regions, which keeps tiny regions efficient.
    * cap (GPU): 64 for padded head dims <= 64, 32 up to 128, 16 beyond; halved
      (>= 16) for fp64 -- it bounds registers and shared memory (checked by
      compiling for sm80/sm90: at most ~100 KB of shared memory for head dims up
      to 128, also in fp64). fp64 with head dims > 128 also drops software
      pipelining (num_stages=1) to fit the 163 KB of an A100. In the interpreter
      the cap is 128: fewer, larger numpy steps are faster. ``_BLOCK_CAP``
      (tests) lowers it.
    """
    block_dqk = _pow2_at_least(d_qk, 16)
    block_dv = _pow2_at_least(d_v, 16)
    max_d = max(block_dqk, block_dv)
    if interpreting():
        cap = 128
    else:
        cap = 64 if max_d <= 64 else 32 if max_d <= 128 else 16
        if dtype == torch.float64:
            cap = max(16, cap // 2)
    if _BLOCK_CAP is not None:
        cap = max(16, min(cap, _BLOCK_CAP))
    block_m = min(cap, _pow2_at_least(tokens, 16))
    block_n = min(cap, _pow2_at_least(n_keys, 16))
    cfg = dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_DQK=block_dqk, BLOCK_DV=block_dv,
               num_warps=4 if max_d <= 64 else 8)
    if dtype == torch.float64 and max_d > 128 and not interpreting():
        cfg['num_stages'] = 1
    return cfg


def _compute_config(dtype, device):
    """Kernel constexprs that depend on the dtype: accumulator, dot precision, scale passing."""
    if dtype == torch.float64:
        return dict(ACC_DTYPE=tl.float64, DOT_DTYPE=tl.float64, PRECISION=None, SCALE_IS_PTR=True)
    tf32 = (dtype == torch.float32 and device.type == 'cuda' and not interpreting()
            and torch.backends.cuda.matmul.allow_tf32)
    # fp32 operands get exact IEEE products unless PyTorch itself would use TF32 for
    # matmuls (Triton's own default is TF32); None keeps Triton's default elsewhere.
    precision = ('tf32' if tf32 else 'ieee') if dtype == torch.float32 else None
    # Dot operands stay in the input dtype (tensor cores for fp16/bf16), except that the
    # interpreter multiplies bf16 tiles as raw uint16 numpy arrays: upcast them there.
    dot_dtype = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}[dtype]
    if dtype == torch.bfloat16 and interpreting():
        dot_dtype = tl.float32
    return dict(ACC_DTYPE=tl.float32, DOT_DTYPE=dot_dtype, PRECISION=precision, SCALE_IS_PTR=False)


def _scale_arg(scale, dtype, device):
    """Python float for fp32 kernels (Triton passes floats as fp32); a tensor for fp64."""
    if dtype == torch.float64:
        return torch.tensor([scale, scale * _LOG2E], dtype=torch.float64, device=device)
    return float(scale)


def _geometry(q, v, region_index, num_heads, n_win):
    n, height, width, c_qk = q.shape
    reg_h, reg_w = height // n_win, width // n_win
    tokens = reg_h * reg_w
    num_regions, topk = region_index.shape[1:]
    return dict(n=n, num_regions=num_regions, topk=topk, reg_h=reg_h, reg_w=reg_w, tokens=tokens,
                n_keys=topk * tokens, d_qk=c_qk // num_heads, d_v=v.shape[-1] // num_heads)


def _validate(q, k, v, region_index, num_heads, n_win, scale):
    for name, t in (('q', q), ('k', k), ('v', v), ('region_index', region_index)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f'{name} must be a torch.Tensor, got {type(t).__name__}')
        check_triton_device(name, t)
    if q.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f'q.dtype={q.dtype} is not supported by the triton BRA kernels; '
                        f'expected one of {_SUPPORTED_DTYPES}')
    for name, t in (('k', k), ('v', v)):
        if t.dtype != q.dtype:
            raise TypeError(f'{name}.dtype={t.dtype} must equal q.dtype={q.dtype}')
    for name, t in (('k', k), ('v', v), ('region_index', region_index)):
        if t.device != q.device:
            raise ValueError(f'{name}.device={t.device} must equal q.device={q.device}')
    if q.dim() != 4 or k.shape != q.shape or v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f'q, k, v must be NHWC maps with k.shape == q.shape and matching (N, H, W); '
                         f'got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}')
    if not isinstance(n_win, int) or n_win < 1:
        raise ValueError(f'n_win={n_win!r} must be a positive int')
    height, width = q.shape[1:3]
    if height % n_win or width % n_win:
        raise ValueError(f'the map size {height}x{width} must be divisible by n_win={n_win}')
    if not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f'num_heads={num_heads!r} must be a positive int')
    for name, channels in (('Cqk', q.shape[-1]), ('Cv', v.shape[-1])):
        if channels % num_heads:
            raise ValueError(f'num_heads={num_heads} must divide {name}={channels}')
    if region_index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f'region_index.dtype={region_index.dtype} must be int64 (or int32)')
    topk = region_index.shape[-1] if region_index.dim() == 3 else None
    if (region_index.dim() != 3 or region_index.shape[:2] != (q.shape[0], n_win * n_win)
            or not 1 <= topk <= n_win * n_win):
        raise ValueError(f'region_index.shape={tuple(region_index.shape)} must be '
                         f'(N, n_win**2, topk) = ({q.shape[0]}, {n_win * n_win}, topk) '
                         f'with 1 <= topk <= {n_win * n_win}')
    if not math.isfinite(float(scale)):
        raise ValueError(f'scale={scale!r} must be a finite float')


def _configs(q, v, region_index, num_heads, n_win):
    """``(geo, cfg, comp)``: the geometry, block sizes and compute constexprs of all three kernels."""
    geo = _geometry(q, v, region_index, num_heads, n_win)
    cfg = _block_config(geo['tokens'], geo['n_keys'], geo['d_qk'], geo['d_v'], q.dtype)
    return geo, cfg, _compute_config(q.dtype, q.device)


def _forward(q, k, v, region_index, num_heads, n_win, scale):
    """Launch the forward kernel: ``(o, lse)``."""
    geo, cfg, comp = _configs(q, v, region_index, num_heads, n_win)
    scale_arg = _scale_arg(scale, q.dtype, q.device)
    o = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    # Base-2 log-sum-exp per (region, head, token) row: all backward needs to rebuild P.
    lse = torch.empty((geo['n'] * geo['num_regions'], num_heads, geo['tokens']),
                      dtype=_acc_dtype(q.dtype), device=q.device)
    grid = (geo['n'] * geo['num_regions'], num_heads, triton.cdiv(geo['tokens'], cfg['BLOCK_M']))
    launch_triton(
        _bra_fwd_kernel, grid, q, k, v, o, lse, region_index, scale_arg,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), *region_index.stride(),
        geo['num_regions'], n_win, geo['reg_h'], geo['reg_w'], geo['tokens'], geo['n_keys'],
        num_heads, D_QK=geo['d_qk'], D_V=geo['d_v'], **cfg, **comp)
    return o, lse


def _backward(do, q, k, v, o, lse, region_index, num_heads, n_win, scale):
    """Launch the backward kernels: ``(dq, dk, dv)`` in the input dtypes."""
    geo, cfg, comp = _configs(q, v, region_index, num_heads, n_win)
    scale_arg = _scale_arg(scale, q.dtype, q.device)
    acc_dtype = lse.dtype
    if do.dtype != o.dtype:
        do = do.to(o.dtype)

    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    delta = torch.empty_like(lse)
    common = (geo['num_regions'], n_win, geo['reg_h'], geo['reg_w'], geo['tokens'], geo['n_keys'],
              num_heads)
    grid = (geo['n'] * geo['num_regions'], num_heads, triton.cdiv(geo['tokens'], cfg['BLOCK_M']))
    launch_triton(
        _bra_bwd_dq_kernel, grid, q, k, v, o, do, dq, lse, delta, region_index, scale_arg,
        *q.stride(), *k.stride(), *v.stride(), *o.stride(), *do.stride(), *dq.stride(),
        *region_index.stride(), *common,
        D_QK=geo['d_qk'], D_V=geo['d_v'], **cfg, **comp)

    # Key tokens are reached from many query regions: accumulate in fp32/fp64 with atomics.
    dk = torch.zeros(k.shape, dtype=acc_dtype, device=k.device)
    dv = torch.zeros(v.shape, dtype=acc_dtype, device=v.device)
    num_kblocks = triton.cdiv(geo['n_keys'], cfg['BLOCK_N'])
    grid = (geo['n'] * geo['num_regions'] * num_kblocks, num_heads)
    launch_triton(
        _bra_bwd_dkdv_kernel, grid, q, k, v, do, dk, dv, lse, delta, region_index, scale_arg,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk.stride(), *dv.stride(),
        *region_index.stride(), *common, num_kblocks,
        D_QK=geo['d_qk'], D_V=geo['d_v'], **cfg, **comp)
    return dq, dk.to(k.dtype), dv.to(v.dtype)


def _acc_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


@triton_custom_op('mmsparse::bi_level_routing_attention_triton')
def _bra_triton_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, region_index: torch.Tensor, num_heads: int,
                   n_win: int, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``mmsparse::bi_level_routing_attention_triton``: ``(o, lse)``, the attention over the routed
    regions and the base-2 log-sum-exp per (region, head, token) row the backward rebuilds
    the probabilities from."""
    _validate(q, k, v, region_index, num_heads, n_win, scale)
    if q.numel() == 0 or v.numel() == 0:  # empty batch or channels: Triton rejects empty grids
        n, height, width = q.shape[:3]
        tokens = (height // n_win) * (width // n_win)
        return (bra_attention_reference(q, k, v, region_index, num_heads, n_win, scale),
                q.new_empty((n * n_win * n_win, num_heads, tokens), dtype=_acc_dtype(q.dtype)))
    return _forward(q, k, v, region_index, num_heads, n_win, scale)


@triton_custom_op('mmsparse::bi_level_routing_attention_triton_backward')
def _bra_triton_backward_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            o: torch.Tensor, lse: torch.Tensor, region_index: torch.Tensor, num_heads: int,
                            n_win: int, scale: float) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv)`` from the forward's ``o`` and ``lse``, without rerunning it."""
    if q.numel() == 0 or v.numel() == 0:  # empty output: every gradient is zero
        return tuple(torch.zeros_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))
    return _backward(do, q, k, v, o, lse, region_index, num_heads, n_win, scale)


def _setup_context(ctx, inputs, output):
    q, k, v, region_index, num_heads, n_win, scale = inputs
    o, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, o, lse, region_index)
    ctx.bra = (num_heads, n_win, scale)


def _backward_of_op(ctx, do, d_lse):
    # The routing is a constant for autograd (detached region means, diff_routing=False).
    q, k, v, o, lse, region_index = ctx.saved_tensors
    dq, dk, dv = _bra_triton_backward_op(do, q, k, v, o, lse, region_index, *ctx.bra)
    return dq, dk, dv, None, None, None, None


_bra_triton_op.register_autograd(_backward_of_op, setup_context=_setup_context)


def bra_attention_triton(q, k, v, region_index, num_heads, n_win, scale):
    """Token-to-token attention over the routed regions with fused Triton kernels (the op
    ``mmsparse::bi_level_routing_attention_triton``).

    Drop-in for :func:`mmsparse.ops.bra.reference.bra_attention_reference`
    (same arguments, result and gradients, up to float rounding).

    Args:
        q, k (Tensor): (N, H, W, Cqk) float16/bfloat16/float32/float64; ``H`` and
            ``W`` divisible by ``n_win``. Any strides (e.g. channel slices
            ``qkv[..., a:b]`` of a fused projection) -- nothing is copied.
        v (Tensor): (N, H, W, Cv), same dtype and device.
        region_index (Tensor): (N, n_win**2, topk) int64 routed regions per query
            region, values in ``[0, n_win**2)`` (not checked on device, to avoid a
            sync); a constant for autograd.
        num_heads (int): heads; must divide ``Cqk`` and ``Cv``; head ``m`` owns the
            contiguous channel chunk ``m`` of q/k and of v.
        n_win (int): regions per side.
        scale (float): logit scale.

    Returns:
        Tensor: (N, H, W, Cv) contiguous, dtype of ``v``; channels head-major.
        Differentiable w.r.t. ``q``, ``k`` and ``v`` (first order only); grads come
        back in the input dtypes.

    Raises:
        RuntimeError: tensors not on CUDA while ``TRITON_INTERPRET`` is off.
        TypeError / ValueError: unsupported dtypes or inconsistent shapes.
    """
    return _bra_triton_op(q, k, v, region_index, int(num_heads), int(n_win), float(scale))[0]


__all__ = ['bra_attention_triton']
