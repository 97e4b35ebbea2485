"""Benchmark the sparse attention ops of ``mmsparse.ops``: PyTorch reference vs fused kernels vs dense SDPA.

One sub-command per op, and ``model`` for a config's backbone; every sub-command
prints a table with milliseconds per call, peak memory and speed-ups for each
requested (backend, pass)::

    # bi-level routing attention (BiFormer): routing + token attention on NHWC maps
    python tools/analysis_tools/benchmark.py bra --batch 4 --size 56 --dim 128 --heads 4 --n-win 7 --topk 4

    # 2-D (dilated) neighborhood attention (NAT / DiNAT), with relative positional bias
    python tools/analysis_tools/benchmark.py na2d --batch 2 --size 64 64 --heads 4 --head-dim 32 \\
        --kernel-size 7 --dilation 1 [--no-rpb]

    # Fibottention (ViT-S: 6 heads of 64) at several patch-token counts, one table per count
    python tools/analysis_tools/benchmark.py fibottention --batch 2 --tokens 1024 4096 16384 --heads 6 \\
        --head-dim 64 [--layer-id 0] [--layout 1d] [--mode sparse] [--no-cls]

    # H-MHSA (HAT-Net): grid attention + cell pooling + global attention on NCHW maps
    python tools/analysis_tools/benchmark.py hmhsa --batch 2 --size 56 56 --dim 128 --heads 2 \\
        --grid-size 8 --ratio 8

    # a config's backbone (cfg.model.backbone), eager and torch.compile, inference and training step
    python tools/analysis_tools/benchmark.py model CONFIG --shape 512 512 --batch 2 [--compile] \\
        [--official] [--variant key=value ...] [--cfg-options key=value ...]

Common options (every sub-command): ``--dtype`` (default float16 on CUDA,
float32 on CPU), ``--device`` (default cuda if available), ``--warmup``,
``--iters``, ``--rounds``, ``--seed``, ``--passes`` (``fwd``, ``fwd+bwd``) and ``--backends``:

* ``torch``: the op's PyTorch reference (``backend='torch'``);
* ``triton``: the op's fast path (``backend='triton'``): the fused Triton kernels
  for bra, na2d and fibottention; for hmhsa it is ``F.scaled_dot_product_attention``
  inside the windows (no Triton kernel; it also runs on CPU);
* ``dense-sdpa``: ``F.scaled_dot_product_attention`` on (B, heads, N, head_dim)
  q/k/v with the same token count N and head dims, i.e. full dense attention at
  that size, the baseline sparse attention has to beat;
* ``official-mask`` (fibottention and na2d): the official semantics as one dense
  computation with a mask built once, outside the timed loop. Fibottention: logits
  ``q @ k^T * scale`` multiplied by the 0/1 Fibottention mask, softmax, ``@ v`` (the
  semantics of ``mode='official'``). na2d: ``F.scaled_dot_product_attention`` over the
  flattened maps with the NA window as an additive mask (``--no-rpb``) or, with rpb, as an
  additive mask gathered from the ``rpb`` leaf on every call (so rpb gets its gradient)
  through an index table built once;
* ``official-gather`` (bra): the official data flow of BRA, region routing, one gather of
  the routed key/value regions, matmul-softmax per region;
* ``official-matmul`` (hmhsa): the official data flow of H-MHSA, the maps reshaped into
  ``G x G`` windows, ``softmax((q * scale) @ k^T) @ v`` in each, written back, and the
  queries against the ``r x r`` average-pooled keys (``G`` and ``r`` must divide the map);
* ``eager`` / ``compile`` (model only): the backbone as built, and ``torch.compile``
  of it (``--compile``; compiled and run once outside the timed loop). The timed call
  is the backbone forward on a ``(batch, 3, H, W)`` image plus the sum of its feature
  maps (the scalar the ``fwd+bwd`` pass differentiates); eval mode for ``fwd``,
  train mode for ``fwd+bwd``;
* ``official`` (model, ``--official``): the same backbone with its attention ops
  computed the official way (:class:`OfficialSemantics`: the baselines above);
* ``variant`` (model, ``--variant KEY=VALUE ...``): the config with these settings on
  top of ``--cfg-options``, e.g. ``model.backbone.attention=dense`` for a dense twin.

When an ``official*`` row ran, the table adds ``time / official`` and ``memory / official``
(peak above inputs): mmsparse / official, below 1 is better.

The default is every backend of the op. Fibottention's ``--tokens N`` counts
patch tokens: the grid is ``(1, N)`` for the 1-D layout and the most square
factorisation ``gh x gw = N`` for the 2-D one; with CLS the sequence has N+1 tokens.
The hmhsa op is the parameter-free part of an H-MHSA block:
``grid_attention(q, k, v) + global_attention(q, pool(k), pool(v))`` (the block's
norms and 1x1 projections are left out).

Passes: ``fwd`` is inference (under ``torch.no_grad``); ``fwd+bwd`` is a training
step (forward with grad, backward of a random upstream gradient into the input
leaves). Timing uses CUDA events on GPU and ``time.perf_counter`` on CPU. The
Triton kernels need CUDA: without it the triton backend is dropped with a note,
unless ``TRITON_INTERPRET=1`` is set (Triton's CPU interpreter, slow; for tests).

Rows run pass by pass in one process. Within a pass the backends are interleaved: all are
built and warmed up, then ``--rounds`` rounds (default ``min(5, --iters)``) each run every
backend for ``--iters / --rounds`` calls in turn, and a backend's ms per call is the median
of its rounds, so a drift of the machine's speed hits every row alike. A progress line
with the ETA goes to stderr.

Peak memory on CUDA is ``torch.cuda.max_memory_allocated()`` over two steps after the
timed rounds: the absolute value and the part above what was allocated before them (the
inputs), i.e. the op's own workspace, outputs and gradients. On CPU it is
the high-water resident set size of a fresh process per row (``--no-cpu-memory``
skips it: ``n/a``): the process builds the row's inputs, runs one untimed step,
resets the high-water mark (``/proc/self/clear_refs``; where that is refused the
baseline is ``ru_maxrss`` so far and the part above it a lower bound), runs two
steps and reports ``VmHWM`` and the part above the baseline (inputs, parameters,
the interpreter and torch). RSS counts pages the allocator has touched, so it
includes allocator slack that ``max_memory_allocated`` would not; the process runs
with glibc's mmap threshold fixed at 64 KiB (``MEMORY_CHILD_ENV``), so that freed
tensors of that size or more leave the RSS and the figure follows the live memory.
``run(args)`` returns the table rows as dicts.

The op sub-commands import only torch, triton (lazily, through the ops) and
``mmsparse.ops``; no mmengine / mmcv needed. ``model`` imports mmengine and the
config's codebase, and builds the backbone with :func:`mmsparse.utils.builders.build_model`.
"""
import argparse
import json
import math
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F

try:
    import mmsparse.ops as ops
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    import mmsparse.ops as ops
from mmsparse.ops.fibottention import LAYOUTS, MODES, fibottention_mask  # noqa: E402
from mmsparse.ops.na2d import neighborhood_indices  # noqa: E402
from mmsparse.ops._checks import check_kernel_size, check_num_heads, check_topk  # noqa: E402

DTYPES = {'float16': torch.float16, 'fp16': torch.float16, 'bfloat16': torch.bfloat16,
          'bf16': torch.bfloat16, 'float32': torch.float32, 'fp32': torch.float32,
          'float64': torch.float64, 'fp64': torch.float64}
PASSES = ('fwd', 'fwd+bwd')
ALL_BACKENDS = ('torch', 'triton', 'dense-sdpa', 'official-mask', 'official-gather', 'official-matmul', 'eager',
                'compile', 'official', 'variant')


# ----------------------------------------------------------------------------- shared helpers

def _randn(gen, shape, device, dtype):
    """Seeded standard normal tensor (drawn on CPU, so the same numbers on every device)."""
    return torch.randn(tuple(shape), generator=gen).to(device, dtype)


def _dense_sdpa(batch, heads, tokens, qk_dim, v_dim=None):
    """Factory of the dense baseline: SDPA on (B, heads, N, head_dim) q/k/v, N = ``tokens``."""
    v_dim = v_dim or qk_dim

    def factory(device, dtype, gen):
        q, k = (_randn(gen, (batch, heads, tokens, qk_dim), device, dtype) for _ in range(2))
        v = _randn(gen, (batch, heads, tokens, v_dim), device, dtype)
        return F.scaled_dot_product_attention, (q, k, v), (batch, heads, tokens, v_dim)

    return factory


def _check_positive(error, args, *names):
    for name in names:
        value = getattr(args, name)
        if value < 1:
            error(f'--{name.replace("_", "-")}={value} must be >= 1')


def _shared_check(error, option, check, *values):
    """Run one of the ops' own argument checks (``mmsparse.ops._checks``) as a usage error."""
    try:
        check(*values)
    except ValueError as exc:
        error(f'{option}: {exc}')


def _map_size(size):
    return tuple((list(size) * 2)[:2])


class Case:
    """One benchmarked configuration: a title and, per backend, a factory of (fn, leaves, out_shape).

    ``factories[backend](device, dtype, gen)`` builds the inputs (untimed, with grad
    enabled for the ``fwd+bwd`` pass only) and returns
    ``fn`` (called as ``fn(*leaves)`` inside the timed loop), the input ``leaves``
    and the output shape (for the upstream gradient of the backward pass).
    ``fields`` are extra columns copied into every row (e.g. the token count).
    """

    def __init__(self, title, factories, **fields):
        self.title, self.factories, self.fields = title, factories, fields


# ----------------------------------------------------------------------------- official semantics
# Every op computed the way its official code does, written plainly here: the baselines of
# the ``official-*`` backends and of the model sub-command's ``official`` row. Each is tested
# equal to the mmsparse op (tests/test_tools/test_benchmark.py).

def build_official_mask(pattern, with_cls, device=None, dtype=torch.float32):
    """The 0/1 multiplicative mask (heads, T, T) of the official dense Fibottention, as ``dtype``."""
    return fibottention_mask(pattern, with_cls).to(device=device, dtype=dtype)


def official_mask_attention(q, k, v, mask, scale=None):
    """Official dense Fibottention: ``softmax((q @ k^T * scale) * mask) @ v`` (masked logits are 0).

    Args:
        q, k, v (Tensor): (B, heads, T, D).
        mask (Tensor): (heads, T, T) 0/1 in q's dtype, from :func:`build_official_mask`.
        scale (float, optional): default ``D ** -0.5``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q @ k.transpose(-2, -1)) * scale * mask
    return logits.softmax(dim=-1) @ v


def build_na2d_bias_index(height, width, kernel_size, dilation, device=None):
    """The official NA window and bias of every (query, key) pair of an ``H x W`` map, as one dense table.

    Args:
        height, width (int): map size, at least ``kernel_size * dilation``.
        kernel_size (int): odd window size ``k``.
        dilation (int): dilation ``d``.
        device (torch.device, optional): device of the table. Defaults to None (CPU).

    Returns:
        Tensor: (H*W, H*W) int64; entry ``[i*W + j, r*W + c]`` is the flat index
        ``br * (2k-1) + bc`` into ``rpb[head].flatten()`` when key ``(r, c)`` is in the
        window of query ``(i, j)`` (``br``, ``bc``: its bias row and column), and
        ``(2k-1)**2`` (one past the bias: the ``-inf`` slot) outside.
    """
    rows, bias_rows = neighborhood_indices(height, kernel_size, dilation, device)
    cols, bias_cols = neighborhood_indices(width, kernel_size, dilation, device)
    side = 2 * kernel_size - 1
    table = torch.full((height, width, height, width), side**2, dtype=torch.long, device=device)
    i = torch.arange(height, device=device)[:, None, None, None]
    j = torch.arange(width, device=device)[None, :, None, None]
    # (H, W, k, k): query (i, j) and its window's key (rows[i, ti], cols[j, tj])
    table[i, j, rows[:, None, :, None], cols[None, :, None, :]] = \
        bias_rows[:, None, :, None] * side + bias_cols[None, :, None, :]
    return table.view(height * width, height * width)


def na2d_official_mask(table, kernel_size, rpb=None, dtype=torch.float32):
    """The additive (1, heads or 1, Nq, Nk) mask of NA as dense masked SDPA, from :func:`build_na2d_bias_index`.

    Args:
        table (Tensor): (Nq, Nk) int64 rows of :func:`build_na2d_bias_index` (the queries'
            rows when only some queries are computed).
        kernel_size (int): the window size ``k`` the table was built for.
        rpb (Tensor, optional): (heads, 2k-1, 2k-1) bias; differentiable. Without it the
            mask is 0 inside the windows and ``-inf`` outside.
        dtype (torch.dtype): mask dtype without ``rpb`` (with it, ``rpb``'s). Defaults to float32.

    Returns:
        Tensor: 4-D, as SDPA on CPU takes a far slower path with a 3-D mask.
    """
    if rpb is None:
        outside = table == (2 * kernel_size - 1)**2   # the -inf slot
        mask = torch.zeros(table.shape, dtype=dtype, device=table.device).masked_fill_(outside, float('-inf'))
        return mask[None, None]
    bias = F.pad(rpb.flatten(1), (0, 1), value=float('-inf'))   # the -inf slot after the bias table
    return bias.index_select(1, table.flatten()).view(1, rpb.shape[0], *table.shape)


def official_na2d_attention(q, k, v, mask, scale=None):
    """NA as dense masked SDPA over the flattened maps (the official semantics of ``natten2d``).

    Args:
        q (Tensor): (B, heads, Hq, Wq, hd), the queries at the top-left corner of the map.
        k, v (Tensor): (B, heads, H, W, hd).
        mask (Tensor): from :func:`na2d_official_mask` for these queries.
        scale (float, optional): default ``hd ** -0.5``.
    """
    out = F.scaled_dot_product_attention(q.flatten(2, 3), k.flatten(2, 3), v.flatten(2, 3), attn_mask=mask,
                                         scale=scale)
    return out.view(*q.shape[:4], v.shape[-1])


def official_bra_attention(q, k, v, num_heads, n_win, topk, scale=None):
    """BRA computed the official way: route regions, gather the routed key/value regions, attend.

    The data flow of BiFormer's legacy BRA written plainly: region means give the
    region-to-region logits (detached, shared by the heads), ``topk`` picks the routed
    regions, one ``torch.gather`` copies their keys and values (stacked) for every query
    region, and each region's scaled queries run a matmul-softmax over them.

    Args:
        q, k (Tensor): (N, H, W, Cqk), ``H`` and ``W`` divisible by ``n_win``.
        v (Tensor): (N, H, W, Cv).
        num_heads (int): heads; channels are contiguous chunks.
        n_win (int): regions per side.
        topk (int): routed regions per query region.
        scale (float, optional): logit scale. Defaults to ``Cqk ** -0.5``.

    Returns:
        Tensor: (N, H, W, Cv).
    """
    n, height, width, c_qk = q.shape
    c_v = v.shape[-1]
    scale = c_qk ** -0.5 if scale is None else scale
    h, w, regions = height // n_win, width // n_win, n_win * n_win

    def partition(x):  # (N, H, W, C) -> (N, regions, h*w, C)
        x = x.reshape(n, n_win, h, n_win, w, x.shape[-1]).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(n, regions, h * w, -1)

    q_r, kv_r = partition(q), partition(torch.cat((k, v), dim=-1))
    routing = (q_r.detach().mean(2) * scale) @ kv_r[..., :c_qk].detach().mean(2).transpose(-1, -2)
    index = routing.topk(topk, dim=-1).indices                                      # (N, regions, topk)
    kv_sel = torch.gather(kv_r.unsqueeze(1).expand(-1, regions, -1, -1, -1), 2,
                          index[..., None, None].expand(-1, -1, -1, h * w, c_qk + c_v))
    kv_sel = kv_sel.reshape(n * regions, topk * h * w, c_qk + c_v)

    def heads(x):  # (n*regions, T, C) -> (n*regions, heads, T, C/heads)
        return x.reshape(x.shape[0], x.shape[1], num_heads, -1).transpose(1, 2)

    q_h = heads((q_r * scale).reshape(n * regions, h * w, c_qk))
    k_h, v_h = heads(kv_sel[..., :c_qk]), heads(kv_sel[..., c_qk:])
    out = ((q_h @ k_h.transpose(-1, -2)).softmax(-1) @ v_h).transpose(1, 2)        # (n*regions, h*w, heads, dv)
    out = out.reshape(n, n_win, n_win, h, w, c_v).permute(0, 1, 3, 2, 4, 5)
    return out.reshape(n, height, width, c_v)


def _official_softmax_attention(q, k, v, scale=None):
    """``softmax((q * scale) @ k^T) @ v``, the official H-MHSA core (scale on q, as there;
    default ``head_dim ** -0.5``)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return ((q * scale) @ k.transpose(-1, -2)).softmax(-1) @ v


def official_grid_attention(q, k, v, num_heads, grid_size, scale=None):
    """H-MHSA's local step the official way: reshape the maps into ``G x G`` windows (one copy
    each), attend inside each, write the windows back to the map (one copy).

    Args:
        q, k, v (Tensor): (B, C, H, W), channels head-major; ``G`` must divide ``H`` and ``W``
            (the official reshape requires it).
        num_heads (int): heads.
        grid_size (int): window side G.
        scale (float, optional): default ``(C / num_heads) ** -0.5``.
    """
    b, c, h, w = q.shape
    g, d = grid_size, c // num_heads
    if h % g or w % g:
        raise ValueError(f'the official H-MHSA needs grid_size={g} to divide the map ({h}x{w})')

    def windows(x):  # (B, C, H, W) -> (B, nH, nW, heads, G*G, d)
        x = x.reshape(b, num_heads, d, h // g, g, w // g, g).permute(0, 3, 5, 1, 4, 6, 2)
        return x.reshape(b, h // g, w // g, num_heads, g * g, d)

    out = _official_softmax_attention(*(windows(t) for t in (q, k, v)), scale)
    out = out.reshape(b, h // g, w // g, num_heads, g, g, d).permute(0, 3, 6, 1, 4, 2, 5)
    return out.reshape(b, c, h, w)


def official_global_attention(q, k, v, num_heads, scale=None):
    """H-MHSA's global step the official way: every query against every (pooled) key.

    Args:
        q (Tensor): (B, C, H, W); k, v (Tensor): (B, C, Hk, Wk).
        num_heads (int): heads.
        scale (float, optional): default ``(C / num_heads) ** -0.5``.
    """
    b, c, h, w = q.shape
    d = c // num_heads

    def tokens(x):  # (B, C, H, W) -> (B, heads, H*W, d), a view
        return x.reshape(b, num_heads, d, -1).transpose(-1, -2)

    out = _official_softmax_attention(*(tokens(t) for t in (q, k, v)), scale)
    return out.transpose(-1, -2).reshape(b, c, h, w)


class OfficialSemantics:
    """A backbone's attention ops computed the official way, for the model sub-command's ``official`` row.

    :meth:`patched` swaps the ops the token mixers call for the baselines above: NA as dense
    masked SDPA (masks built once per map size), BRA by gathering the routed regions,
    Fibottention as the official multiplicative mask whatever its ``mode`` (built once per
    pattern), H-MHSA's two attentions as the official reshapes and matmul-softmax.
    """

    def __init__(self):
        self._cache = {}

    def _once(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def na2d(self, q, k, v, kernel_size, dilation, rpb=None, scale=None, backend=None):
        (hq, wq), (height, width) = q.shape[2:4], k.shape[2:4]
        key = (hq, wq, height, width, kernel_size, dilation, q.device)
        table = self._once(('na2d', *key), lambda: build_na2d_bias_index(
            height, width, kernel_size, dilation, q.device).view(height, width, -1)[:hq, :wq].flatten(0, 1))
        mask = (na2d_official_mask(table, kernel_size, rpb) if rpb is not None else
                self._once(('na2d-mask', *key, q.dtype), lambda: na2d_official_mask(table, kernel_size, dtype=q.dtype)))
        return official_na2d_attention(q, k, v, mask, scale)

    def bra(self, q, k, v, num_heads, n_win, topk, scale=None, backend=None):
        return official_bra_attention(q, k, v, num_heads, n_win, topk, scale)

    def fibottention(self, q, k, v, pattern, scale=None, mode='sparse', with_cls=True, backend=None):
        mask = self._once(('fib', id(pattern), with_cls, q.device, q.dtype),
                          lambda: build_official_mask(pattern, with_cls, q.device, q.dtype))
        return official_mask_attention(q, k, v, mask, scale)

    def grid_attention(self, q, k, v, num_heads, grid_size, scale=None, backend=None):
        return official_grid_attention(q, k, v, num_heads, grid_size, scale)

    def global_attention(self, q, k, v, num_heads, scale=None, backend=None):
        return official_global_attention(q, k, v, num_heads, scale)

    @contextmanager
    def patched(self):
        """Within: the token mixers' ops are the official baselines."""
        from mmsparse.models.attentions import bra, fibottention, hmhsa, neighborhood_attention

        swaps = [(neighborhood_attention, 'neighborhood_attention_2d', self.na2d),
                 (bra, 'bi_level_routing_attention', self.bra),
                 (fibottention, 'fibottention_attention', self.fibottention),
                 (hmhsa, 'grid_attention', self.grid_attention),
                 (hmhsa, 'global_attention', self.global_attention)]
        saved = [(module, name, getattr(module, name)) for module, name, _ in swaps]
        try:
            for module, name, baseline in swaps:
                setattr(module, name, baseline)
            yield
        finally:
            for module, name, original in saved:
                setattr(module, name, original)


# ----------------------------------------------------------------------------- bra

def bra_args(parser):
    parser.add_argument('--batch', type=int, default=4, help='batch size (default 4)')
    parser.add_argument('--size', type=int, nargs='+', default=[56], metavar='S',
                        help='map size: one value (square) or H W (default 56); divisible by --n-win')
    parser.add_argument('--dim', type=int, default=128, help='value channels Cv (default 128)')
    parser.add_argument('--qk-dim', type=int, default=None, help='q/k channels Cqk (default --dim)')
    parser.add_argument('--heads', type=int, default=4, help='attention heads (default 4)')
    parser.add_argument('--n-win', type=int, default=7, help='regions per side (default 7)')
    parser.add_argument('--topk', type=int, default=4, help='routed regions per query region (default 4)')


def bra_check(args, error):
    args.qk_dim = args.qk_dim or args.dim
    _check_positive(error, args, 'batch', 'dim', 'qk_dim', 'heads', 'n_win', 'topk')
    height, width = _map_size(args.size)
    if min(height, width) < 1:
        error(f'--size={args.size} must be positive')
    if height % args.n_win or width % args.n_win:
        error(f'--size {height}x{width} is not divisible by --n-win={args.n_win}')
    _shared_check(error, '--topk', check_topk, args.topk, args.n_win)
    for name in ('dim', 'qk_dim'):
        option = f'--{name.replace("_", "-")}'
        _shared_check(error, '--heads', check_num_heads, args.heads, getattr(args, name), option)


def bra_cases(args):
    height, width = _map_size(args.size)
    c_qk, c_v, heads = args.qk_dim, args.dim, args.heads
    rh, rw = height // args.n_win, width // args.n_win

    def op(backend):
        def factory(device, dtype, gen):
            qkv = _randn(gen, (args.batch, height, width, 2 * c_qk + c_v), device, dtype)

            def fn(leaf):  # q, k, v are channel slices of one fused qkv, as in the BiFormer block
                q, k, v = leaf[..., :c_qk], leaf[..., c_qk:2 * c_qk], leaf[..., 2 * c_qk:]
                return ops.bi_level_routing_attention(q, k, v, heads, args.n_win, args.topk, backend=backend)

            return fn, (qkv, ), (args.batch, height, width, c_v)
        return factory

    def official(device, dtype, gen):
        qkv = _randn(gen, (args.batch, height, width, 2 * c_qk + c_v), device, dtype)

        def fn(leaf):
            q, k, v = leaf[..., :c_qk], leaf[..., c_qk:2 * c_qk], leaf[..., 2 * c_qk:]
            return official_bra_attention(q, k, v, heads, args.n_win, args.topk)

        return fn, (qkv, ), (args.batch, height, width, c_v)

    tokens = height * width
    factories = {'torch': op('torch'), 'triton': op('triton'),
                 'dense-sdpa': _dense_sdpa(args.batch, heads, tokens, c_qk // heads, c_v // heads),
                 'official-gather': official}
    yield Case(f'BRA: B={args.batch} HxW={height}x{width} (N={tokens}) Cqk={c_qk} Cv={c_v} heads={heads} '
               f'n_win={args.n_win} (region {rh}x{rw} = {rh * rw} tokens) topk={args.topk}',
               factories, tokens=tokens)


# ----------------------------------------------------------------------------- na2d

def na2d_args(parser):
    parser.add_argument('--batch', type=int, default=2, help='batch size (default 2)')
    parser.add_argument('--size', type=int, nargs='+', default=[64], metavar='S',
                        help='map size: one value (square) or H W (default 64); >= kernel-size * dilation')
    parser.add_argument('--heads', type=int, default=4, help='attention heads (default 4)')
    parser.add_argument('--head-dim', type=int, default=32, help='channels per head (default 32)')
    parser.add_argument('--kernel-size', type=int, default=7, help='odd window size >= 3 (default 7)')
    parser.add_argument('--dilation', type=int, default=1, help='dilation >= 1 (default 1)')
    parser.add_argument('--no-rpb', action='store_true', help='no relative positional bias')


def na2d_check(args, error):
    _check_positive(error, args, 'batch', 'heads', 'head_dim', 'dilation')
    _shared_check(error, '--kernel-size', check_kernel_size, args.kernel_size)
    height, width = _map_size(args.size)
    window = args.kernel_size * args.dilation
    if min(height, width) < window:
        error(f'--size {height}x{width} must be at least --kernel-size * --dilation = '
              f'{args.kernel_size} * {args.dilation} = {window} on both sides')


def na2d_cases(args):
    height, width = _map_size(args.size)
    b, heads, hd, ks = args.batch, args.heads, args.head_dim, args.kernel_size
    shape = (b, heads, height, width, hd)
    tokens = height * width

    def inputs(device, dtype, gen):
        leaves = tuple(_randn(gen, shape, device, dtype) for _ in range(3))
        if not args.no_rpb:
            leaves += (_randn(gen, (heads, 2 * ks - 1, 2 * ks - 1), device, dtype), )
        return leaves

    def op(backend):
        def factory(device, dtype, gen):
            def fn(q, k, v, rpb=None):
                return ops.neighborhood_attention_2d(q, k, v, ks, args.dilation, rpb, backend=backend)

            return fn, inputs(device, dtype, gen), shape
        return factory

    def official(device, dtype, gen):
        table = build_na2d_bias_index(height, width, ks, args.dilation, device)  # once, outside the timed loop
        static = None if not args.no_rpb else na2d_official_mask(table, ks, dtype=dtype)

        def fn(q, k, v, rpb=None):  # with rpb the mask is gathered from the leaf: rpb gets its gradient
            return official_na2d_attention(q, k, v, static if rpb is None else na2d_official_mask(table, ks, rpb))

        return fn, inputs(device, dtype, gen), shape

    factories = {'torch': op('torch'), 'triton': op('triton'),
                 'dense-sdpa': _dense_sdpa(b, heads, tokens, hd), 'official-mask': official}
    yield Case(f'NA2D: B={b} HxW={height}x{width} (N={tokens}) heads={heads} head_dim={hd} '
               f'kernel_size={ks} dilation={args.dilation} rpb={not args.no_rpb}', factories, tokens=tokens)


# ----------------------------------------------------------------------------- fibottention

def fibottention_args(parser):
    parser.add_argument('--batch', type=int, default=2, help='batch size (default 2)')
    parser.add_argument('--tokens', type=int, nargs='+', default=[1024], metavar='N',
                        help='patch token counts, one table each (default 1024); CLS excluded')
    parser.add_argument('--heads', type=int, default=6, help='attention heads (default 6, ViT-S)')
    parser.add_argument('--head-dim', type=int, default=64, help='channels per head (default 64)')
    parser.add_argument('--layer-id', type=int, default=0, help='block index: head shuffle seed (default 0)')
    parser.add_argument('--layout', choices=LAYOUTS, default='1d', help='offset layout (default 1d, official)')
    parser.add_argument('--mode', choices=MODES, default='sparse',
                        help='masked logits -inf (sparse) or 0 (official); default sparse')
    parser.add_argument('--no-cls', action='store_true', help='no CLS token (sequence = N patch tokens)')


def fibottention_check(args, error):
    _check_positive(error, args, 'batch', 'heads', 'head_dim')
    for n in args.tokens:
        if n < 1:
            error(f'--tokens={n} must be >= 1')
    if args.layer_id < 0:
        error(f'--layer-id={args.layer_id} must be >= 0')


def square_grid(tokens):
    """The most square ``(gh, gw)`` with ``gh * gw == tokens`` and ``gh <= gw``."""
    gh = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
    return gh, tokens // gh


def fibottention_grid(tokens, layout):
    return (1, tokens) if layout == '1d' else square_grid(tokens)


def fibottention_cases(args):
    b, heads, hd, with_cls = args.batch, args.heads, args.head_dim, not args.no_cls
    for n in args.tokens:
        grid = fibottention_grid(n, args.layout)
        pattern = ops.fibottention_pattern(grid, heads, args.layer_id, args.layout)
        seq = n + int(with_cls)
        shape = (b, heads, seq, hd)

        def qkv(device, dtype, gen, shape=shape):
            return tuple(_randn(gen, shape, device, dtype) for _ in range(3))

        def op(backend, pattern=pattern, qkv=qkv, shape=shape):
            def factory(device, dtype, gen):
                pat = pattern.to(device)

                def fn(q, k, v):
                    return ops.fibottention_attention(q, k, v, pat, mode=args.mode, with_cls=with_cls,
                                                      backend=backend)

                return fn, qkv(device, dtype, gen), shape
            return factory

        def official(device, dtype, gen, pattern=pattern, qkv=qkv, shape=shape):
            mask = build_official_mask(pattern, with_cls, device, dtype)  # once, outside the timed loop
            return (lambda q, k, v: official_mask_attention(q, k, v, mask)), qkv(device, dtype, gen), shape

        factories = {'torch': op('torch'), 'triton': op('triton'),
                     'dense-sdpa': _dense_sdpa(b, heads, seq, hd), 'official-mask': official}
        kept = int(pattern.counts.sum())
        yield Case(f'Fibottention: B={b} N={n} grid={grid[0]}x{grid[1]} layout={args.layout} tokens={seq} '
                   f'(cls={with_cls}) heads={heads} head_dim={hd} layer_id={args.layer_id} mode={args.mode} '
                   f'(offsets/head: {kept / heads:.1f} on average)', factories, tokens=seq)


# ----------------------------------------------------------------------------- hmhsa

def hmhsa_args(parser):
    parser.add_argument('--batch', type=int, default=2, help='batch size (default 2)')
    parser.add_argument('--size', type=int, nargs='+', default=[56], metavar='S',
                        help='map size: one value (square) or H W (default 56)')
    parser.add_argument('--dim', type=int, default=128, help='channels C (default 128)')
    parser.add_argument('--heads', type=int, default=2, help='attention heads, dividing --dim (default 2)')
    parser.add_argument('--grid-size', type=int, default=8, help='local window side G (default 8)')
    parser.add_argument('--ratio', type=int, default=8, help='pooling cell side r (default 8)')


def hmhsa_check(args, error):
    _check_positive(error, args, 'batch', 'dim', 'heads', 'grid_size', 'ratio')
    if min(_map_size(args.size)) < 1:
        error(f'--size={args.size} must be positive')
    if args.dim % args.heads:
        error(f'--heads={args.heads} must divide --dim={args.dim}')
    height, width = _map_size(args.size)
    if 'official-matmul' in args.backends and (height % args.grid_size or width % args.grid_size
                                                or height % args.ratio or width % args.ratio):
        error(f'--backends official-matmul needs --grid-size={args.grid_size} and --ratio={args.ratio} to divide '
              f'--size={height}x{width} (the official reshape into windows and its floor-mode pooling)')


def hmhsa_cases(args):
    height, width = _map_size(args.size)
    b, c, heads = args.batch, args.dim, args.heads
    shape = (b, c, height, width)

    def block(grid_attention, pool, global_attention):
        """The factory of ``grid_attention(q, k, v) + global_attention(q, pool(k), pool(v))``."""
        def factory(device, dtype, gen):
            def fn(leaf):  # q, k, v are channel chunks of one fused qkv, as in the HAT-Net block
                q, k, v = leaf.chunk(3, dim=1)
                local = grid_attention(q, k, v, heads, args.grid_size)
                return local + global_attention(q, pool(k, args.ratio), pool(v, args.ratio), heads)

            return fn, (_randn(gen, (b, 3 * c, height, width), device, dtype), ), shape
        return factory

    def op(backend):
        return block(partial(ops.grid_attention, backend=backend), ops.cell_average_pool,
                     partial(ops.global_attention, backend=backend))

    tokens = height * width
    pooled = math.ceil(height / args.ratio) * math.ceil(width / args.ratio)
    factories = {'torch': op('torch'), 'triton': op('triton'),
                 'dense-sdpa': _dense_sdpa(b, heads, tokens, c // heads),
                 'official-matmul': block(official_grid_attention, F.avg_pool2d, official_global_attention)}
    yield Case(f'H-MHSA: B={b} HxW={height}x{width} (N={tokens}) C={c} heads={heads} grid_size={args.grid_size} '
               f'ratio={args.ratio} ({pooled} pooled keys); triton = SDPA fast path', factories, tokens=tokens)


# ----------------------------------------------------------------------------- model

def model_args(parser):
    parser.add_argument('config', help='an mmseg or mmdet config; its model.backbone is benchmarked')
    parser.add_argument('--shape', type=int, nargs=2, default=[224, 224], metavar=('H', 'W'),
                        help='input height and width (default 224 224)')
    parser.add_argument('--batch', type=int, default=1, help='batch size (default 1)')
    parser.add_argument('--compile', action='store_true',
                        help='add a torch.compile row next to eager (compiled outside the timed loop)')
    parser.add_argument('--cfg-options', nargs='+', default=None, metavar='KEY=VALUE',
                        help='override settings of the config (mmengine DictAction syntax)')
    parser.add_argument('--official', action='store_true',
                        help="add an 'official' row: the same backbone with its attention ops computed the "
                        'official way (dense masked NA and Fibottention, gathered BRA, reshaped matmul-softmax H-MHSA)')
    parser.add_argument('--variant', nargs='+', default=None, metavar='KEY=VALUE',
                        help="add a 'variant' row: the config with these settings on top of --cfg-options, "
                        'e.g. model.backbone.attention=dense for a dense twin')


def model_check(args, error):
    _check_positive(error, args, 'batch')
    if min(args.shape) < 1:
        error(f'--shape={args.shape} must be positive')
    if not osp.isfile(args.config):
        error(f'config {args.config!r} does not exist')
    for flag, backend in (('compile', 'compile'), ('official', 'official'), ('variant', 'variant')):
        if getattr(args, flag) and backend not in args.backends:
            args.backends.append(backend)
        if not getattr(args, flag) and backend in args.backends:
            error(f'--backends {backend} needs --{flag}')


def model_cases(args):
    height, width = args.shape

    def backbone(compiled=False, official=False, variant=()):
        def factory(device, dtype, gen):
            # mmengine / mmseg / mmdet are imported only here: the op sub-commands need torch alone.
            from mmengine.config import Config, DictAction

            from mmsparse.utils.builders import build_model

            cfg = Config.fromfile(args.config)
            for options in (args.cfg_options, variant):
                if options:
                    namespace = argparse.Namespace()
                    DictAction(option_strings=[], dest='opts')(None, namespace, list(options))
                    cfg.merge_from_dict(namespace.opts)
            # the tools' builder: the config's backbone, SyncBN reverted, no Pretrained init
            model = build_model(cfg, 'backbone')
            train = torch.is_grad_enabled()  # make_step builds under the pass's grad mode
            model = model.to(device, dtype).train(train)
            fn = torch.compile(model) if compiled else model
            image = _randn(gen, (args.batch, 3, height, width), device, dtype)
            semantics = OfficialSemantics() if official else None

            def step(x):  # one scalar from every feature map, so fwd+bwd reaches all of them
                if semantics is None:
                    return sum(feature.float().sum() for feature in fn(x))
                with semantics.patched():
                    return sum(feature.float().sum() for feature in fn(x))

            if compiled:  # compile outside the timed loop, whatever --warmup says
                step(image.detach().requires_grad_(train))
            return step, (image, ), ()
        return factory

    factories = {'eager': backbone(), 'compile': backbone(compiled=True), 'official': backbone(official=True),
                 'variant': backbone(variant=args.variant)}
    yield Case(f'model: backbone of {osp.basename(args.config)} B={args.batch} HxW={height}x{width}'
               + (f' variant: {" ".join(args.variant)}' if args.variant else ''), factories, tokens=height * width)


# ----------------------------------------------------------------------------- the tool

class Op:
    """A sub-command: its help, argument hooks, case generator and backends (``default``: those run unasked)."""

    def __init__(self, help, add_args, check, cases, backends, triton_needs_cuda=True, default=None):
        self.help, self.add_args, self.check, self.cases = help, add_args, check, cases
        self.backends, self.triton_needs_cuda = backends, triton_needs_cuda
        self.default = default or backends


_BASE = ('torch', 'triton', 'dense-sdpa')
OPS = {
    'bra': Op('bi-level routing attention (BiFormer)', bra_args, bra_check, bra_cases, _BASE + ('official-gather', )),
    'na2d': Op('2-D (dilated) neighborhood attention (NAT, DiNAT)', na2d_args, na2d_check, na2d_cases,
               _BASE + ('official-mask', )),
    'fibottention': Op('Fibottention (ViT)', fibottention_args, fibottention_check, fibottention_cases,
                       _BASE + ('official-mask', )),
    'hmhsa': Op('H-MHSA grid + global attention (HAT-Net)', hmhsa_args, hmhsa_check, hmhsa_cases,
                _BASE + ('official-matmul', ),
                triton_needs_cuda=False),
    'model': Op("a config's backbone, eager and (--compile) torch.compile", model_args, model_check,
                model_cases, ('eager', 'compile', 'official', 'variant'), triton_needs_cuda=False,
                default=('eager', )),
}


def build_parser():
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group('common options')
    group.add_argument('--dtype', choices=sorted(DTYPES), default=None,
                       help='default float16 on CUDA, float32 on CPU')
    group.add_argument('--device', default=None, help='default cuda if available, else cpu')
    group.add_argument('--warmup', type=int, default=10, help='untimed calls first (default 10)')
    group.add_argument('--iters', type=int, default=50, help='timed calls per backend (default 50)')
    group.add_argument('--rounds', type=int, default=None,
                       help='interleave the backends over this many rounds of --iters/--rounds calls; '
                       'ms/call is the median of the rounds (default min(5, --iters))')
    group.add_argument('--seed', type=int, default=0, help='input seed (default 0)')
    group.add_argument('--passes', nargs='+', choices=PASSES, default=list(PASSES))
    group.add_argument('--backends', nargs='+', choices=ALL_BACKENDS, default=None,
                       help='default: every backend of the op (official-mask: fibottention and na2d only; '
                       'model: eager, plus compile with --compile)')
    group.add_argument('--no-cpu-memory', action='store_true',
                       help='on CPU, skip the peak-RSS measurement (one fresh process per row)')
    group.add_argument('--memory-child', nargs=3, default=None, metavar=('CASE', 'BACKEND', 'PASS'),
                       help=argparse.SUPPRESS)  # internal: the fresh process of one CPU memory row
    parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest='op', metavar='OP', required=True,
                                       help=', '.join(OPS))
    parser.op_parsers = {}
    for name, op in OPS.items():
        sub = subparsers.add_parser(name, parents=[common], help=op.help, description=op.help)
        op.add_args(sub)
        parser.op_parsers[name] = sub
    return parser


def parse_args(argv=None):
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # replayed by the fresh process of each CPU memory row
    error = parser.op_parsers[args.op].error
    op = OPS[args.op]
    if args.iters < 1:
        error(f'--iters={args.iters} must be >= 1')
    if args.warmup < 0:
        error(f'--warmup={args.warmup} must be >= 0')
    args.rounds = min(5, args.iters) if args.rounds is None else args.rounds
    if not 1 <= args.rounds <= args.iters:
        error(f'--rounds={args.rounds} must be between 1 and --iters={args.iters}')
    if len(getattr(args, 'size', [1])) not in (1, 2):
        error(f'--size takes one or two values, got {args.size}')
    args.backends = list(dict.fromkeys(args.backends or op.default))
    for backend in args.backends:
        if backend not in op.backends:
            error(f'--backends {backend} is not available for {args.op}; choose from {", ".join(op.backends)}')
    op.check(args, error)
    return args


class _Timer:
    """Wall time: CUDA events on GPU (asynchronous launches), perf_counter on CPU."""

    def __init__(self, device):
        self.cuda = device.type == 'cuda'

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.ms = self.start.elapsed_time(self.end)
        else:
            self.ms = (time.perf_counter() - self.t0) * 1e3


def make_step(factory, pass_name, device, dtype, seed):
    """Build the inputs of one backend (untimed) and return ``(step, leaves)``."""
    gen = torch.Generator(device='cpu').manual_seed(seed)
    train = pass_name == 'fwd+bwd'
    with torch.set_grad_enabled(train):  # a model factory picks train / eval mode from it
        fn, leaves, out_shape = factory(device, dtype, gen)
    for leaf in leaves:
        leaf.requires_grad_(train)
    grad_out = _randn(gen, out_shape, device, dtype) if train else None

    def step():
        if not train:
            with torch.no_grad():
                fn(*leaves)
            return
        for leaf in leaves:
            leaf.grad = None
        fn(*leaves).backward(grad_out)

    return step, leaves


def _rss_kib(field):
    """``VmRSS`` / ``VmHWM`` (KiB) of this process from /proc, or None where there is no /proc."""
    try:
        with open('/proc/self/status') as status:
            return next(int(line.split()[1]) for line in status if line.startswith(field + ':'))
    except (OSError, StopIteration):
        return None


def _max_rss_kib():
    """High-water resident set size of this process in KiB (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == 'darwin' else peak


def _reset_peak_rss():
    """Reset the high-water RSS to the current RSS where Linux allows it; return the baseline in KiB.

    Writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0) resets ``VmHWM``, so the
    setup's transient peaks (imports, input construction) drop out; elsewhere the
    baseline is the high-water mark so far, and the part above it is a lower bound.
    """
    try:
        with open('/proc/self/clear_refs', 'w') as refs:
            refs.write('5')
        return _rss_kib('VmRSS')
    except OSError:
        return _max_rss_kib()


# glibc serves a block above its mmap threshold with mmap and unmaps it on free, but raises
# the threshold to the size of each such block freed, after which blocks of that size come
# from the heap and stay resident when freed: the high-water RSS then depends on the order
# of allocations (one backend read 1.11x another, 6 MiB, with less live memory). A fixed
# threshold (setting it turns the adjustment off) returns every block of 64 KiB or more to
# the OS when freed, so the RSS follows the live tensors.
MEMORY_CHILD_ENV = {'MALLOC_MMAP_THRESHOLD_': str(64 * 1024)}


def cpu_memory_child(args):
    """The fresh process of one CPU memory row: print ``{"peak": MiB, "extra": MiB}`` as JSON.

    Builds the row's inputs, runs one untimed step (lazy imports, caches and
    one-time initialisation of the first call are setup, not the op's memory),
    resets the high-water RSS, runs two steps (the second holds the first one's
    parameter gradients, as in training) and reports the high-water RSS and the
    part above the baseline.
    """
    index, backend, pass_name = args.memory_child
    device, dtype = _device_and_dtype(args)
    case = list(OPS[args.op].cases(args))[int(index)]
    step, leaves = make_step(case.factories[backend], pass_name, device, dtype, args.seed)
    step()
    for leaf in leaves:  # the step's input gradients are the step's memory, not the baseline's
        leaf.grad = None
    base = _reset_peak_rss()
    for _ in range(2):
        step()
    peak = _rss_kib('VmHWM') or _max_rss_kib()
    print(json.dumps(dict(peak=peak / 1024, extra=(peak - base) / 1024)))


def measure_cpu_memory(args, index, backend, pass_name):
    """Peak RSS (MiB) and the part above the setup (MiB) of one CPU row, in a fresh process."""
    cmd = [sys.executable, osp.abspath(__file__), *args.argv, '--memory-child', str(index), backend, pass_name]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **MEMORY_CHILD_ENV})
    if result.returncode:
        raise RuntimeError(f'the memory process of {args.op} case {index} {backend} {pass_name} failed:\n'
                           f'{result.stderr[-3000:]}')
    row = json.loads(result.stdout.strip().splitlines()[-1])
    return row['peak'], row['extra']


def bench_pass(args, case, pass_name, backends, device, dtype):
    """Time one case and pass for every backend, interleaved; return ``{backend: (ms, peak, extra)}``.

    Every backend's inputs are built and warmed up first; then ``--rounds`` rounds each run
    every backend for its share of ``--iters`` calls in turn, in reverse order every other
    round, so a drift of the machine's speed and the position in a round hit all backends
    alike, and a backend's ms per call is the median of its rounds.
    On CUDA the peak memory (allocator peak, and the part above what was allocated before:
    the op's workspace, outputs and gradients) is read over two more steps per backend;
    on CPU the two values are None (:func:`measure_cpu_memory` measures them).
    """
    steps = {}
    for backend in backends:
        step, leaves = make_step(case.factories[backend], pass_name, device, dtype, args.seed)
        for _ in range(args.warmup):
            step()
        steps[backend] = step, leaves
    per_round = max(1, args.iters // args.rounds)
    times = {backend: [] for backend in backends}
    order = list(steps)
    for _ in range(args.rounds):
        for backend in order:
            step = steps[backend][0]
            with _Timer(device) as timer:
                for _ in range(per_round):
                    step()
            times[backend].append(timer.ms / per_round)
        # The next round runs the backends in reverse (A B, B A, ...): a backend that runs
        # right after another one (cold caches, the other's freed memory) is not always the same.
        order.reverse()
    results = {}
    for backend, (step, leaves) in steps.items():
        peak = extra = None
        if device.type == 'cuda':
            for leaf in leaves:
                leaf.grad = None
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            for _ in range(2):
                step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
            extra = peak - base / 2 ** 20
        results[backend] = statistics.median(times[backend]), peak, extra
    return results


class Progress:
    """``[done/total] label, elapsed, ETA`` on stderr: one rewritten line on a terminal, else a line per step."""

    def __init__(self, total, stream=None):
        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        self.t0 = time.perf_counter()

    def step(self, label):
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        line = f'[{self.done}/{self.total}] {label}  elapsed {elapsed:.0f}s  ETA {eta:.0f}s'
        tty = self.stream.isatty()
        self.stream.write(('\r\033[K' + line + ('\n' if self.done == self.total else '')) if tty else line + '\n')
        self.stream.flush()


def _usable_backends(args, device):
    backends = list(args.backends)
    interpret = os.environ.get('TRITON_INTERPRET', '0') == '1'
    if 'triton' in backends and OPS[args.op].triton_needs_cuda and device.type != 'cuda' and not interpret:
        print(f'note: the triton backend needs CUDA (or TRITON_INTERPRET=1); device is {device}, so it '
              'is skipped (and no CUDA memory is reported)')
        backends.remove('triton')
    return backends


def _device_and_dtype(args):
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == 'cuda' else torch.float32)
    return device, dtype


def run(args):
    """Run every requested (case, pass, backend); print one table per case and return all rows as dicts."""
    if args.memory_child:
        return cpu_memory_child(args)
    device, dtype = _device_and_dtype(args)
    backends = _usable_backends(args, device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    cpu_memory = device.type == 'cpu' and not args.no_cpu_memory
    cases = list(OPS[args.op].cases(args))
    progress = Progress(len(cases) * len(args.passes) * len(backends))
    rows = []
    for index, case in enumerate(cases):
        header = (f'{case.title}\n  dtype={str(dtype).replace("torch.", "")} device={name} '
                  f'warmup={args.warmup} iters={args.iters}')
        case_rows = []
        for pass_name in args.passes:
            timed = bench_pass(args, case, pass_name, backends, device, dtype)
            for backend in backends:
                ms, peak, extra = timed[backend]
                if cpu_memory:
                    peak, extra = measure_cpu_memory(args, index, backend, pass_name)
                case_rows.append(dict(op=args.op, **case.fields, backend=backend, pass_=pass_name,
                                      ms=ms, peak=peak, extra=extra))
                progress.step(f'{args.op} case {index + 1}/{len(cases)} {pass_name} {backend}')
        memory = 'peak RSS (fresh process per row)' if cpu_memory else (
            'CUDA allocator peak' if device.type == 'cuda' else 'not measured')
        print(f'{header} memory={memory}\n{format_table(case_rows)}\n')
        rows += case_rows
    return rows


def format_table(rows):
    """Text table of one case's rows: speed-ups vs torch / dense-sdpa / eager, and time and memory
    (peak above inputs) as a ratio of the official baseline's (``official*`` rows) when one ran."""
    def mib(x):
        return 'n/a' if x is None else f'{x:.1f}'

    def ratio(x, base):
        return f'{x / base:.2f}' if x is not None and base else '-'

    refs = [ref for ref in ('torch', 'dense-sdpa', 'eager') if any(r['backend'] == ref for r in rows)]
    ref_ms = {ref: {r['pass_']: r['ms'] for r in rows if r['backend'] == ref} for ref in refs}
    official = {r['pass_']: r for r in rows if r['backend'].startswith('official')}
    header = ('backend', 'pass', 'ms/call', 'peak MiB', 'peak above inputs MiB') + tuple(f'vs {ref}' for ref in refs)
    if official:
        header += ('time / official', 'memory / official')
    lines = []
    for r in rows:
        speedups = []
        for ref in refs:
            base = ref_ms[ref].get(r['pass_'])
            speedups.append(f'{base / r["ms"]:.2f}x' if base and r['ms'] > 0 else '-')
        if official:
            base = official.get(r['pass_'], {})
            speedups += [ratio(r['ms'], base.get('ms')), ratio(r['extra'], base.get('extra'))]
        lines.append((r['backend'], r['pass_'], f'{r["ms"]:.3f}', mib(r['peak']), mib(r['extra']), *speedups))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = '  '.join(f'{{:<{w}}}' for w in widths)
    out = [fmt.format(*header), fmt.format(*('-' * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return '\n'.join(line.rstrip() for line in out)


def main(argv=None):
    return run(parse_args(argv))


if __name__ == '__main__':
    main()
