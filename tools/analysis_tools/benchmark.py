"""Benchmark bi-level routing attention (BRA): PyTorch reference vs fused Triton kernels.

Times ``mmsparse.ops.bi_level_routing_attention`` (routing + token attention) on
random NHWC inputs whose q/k/v are channel slices of one fused ``qkv`` tensor,
as in the BiFormer block, and prints a table with milliseconds per call and
peak CUDA memory::

    python tools/analysis_tools/benchmark.py --batch 4 --size 56 --dim 128 \\
        --heads 4 --n-win 7 --topk 4 --dtype float16

Passes: ``fwd`` is inference (under ``torch.no_grad``); ``fwd+bwd`` is a
training step (forward with grad, backward of a random upstream gradient into
the fused ``qkv`` leaf). The Triton backend needs CUDA; on a CPU-only machine
only the torch backend runs and the script says so (memory columns read n/a).

Peak memory is ``torch.cuda.max_memory_allocated()`` over the timed loop: the
absolute value and the part above what was allocated before the loop (inputs),
i.e. the op's own workspace, outputs and gradients.

Imports only torch, triton (for the Triton backend) and ``mmsparse.ops``; no
mmengine / mmcv needed.
"""
import argparse
import os.path as osp
import sys
import time

import torch

try:
    from mmsparse.ops import bi_level_routing_attention
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
    from mmsparse.ops import bi_level_routing_attention

DTYPES = {'float16': torch.float16, 'fp16': torch.float16, 'bfloat16': torch.bfloat16,
          'bf16': torch.bfloat16, 'float32': torch.float32, 'fp32': torch.float32,
          'float64': torch.float64, 'fp64': torch.float64}
PASSES = ('fwd', 'fwd+bwd')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Benchmark BRA forward and forward+backward, torch vs triton backend.')
    parser.add_argument('--batch', type=int, default=4, help='batch size N (default 4)')
    parser.add_argument('--size', type=int, nargs='+', default=[56], metavar='S',
                        help='map size: one value (square) or H W (default 56); '
                             'must be divisible by --n-win')
    parser.add_argument('--dim', type=int, default=128, help='value channels Cv (default 128)')
    parser.add_argument('--qk-dim', type=int, default=None, help='q/k channels Cqk (default --dim)')
    parser.add_argument('--heads', type=int, default=4, help='attention heads (default 4)')
    parser.add_argument('--n-win', type=int, default=7, help='regions per side (default 7)')
    parser.add_argument('--topk', type=int, default=4, help='routed regions per query region (default 4)')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default=None,
                        help='default float16 on CUDA, float32 on CPU')
    parser.add_argument('--backends', nargs='+', choices=('torch', 'triton'), default=['torch', 'triton'])
    parser.add_argument('--passes', nargs='+', choices=PASSES, default=list(PASSES))
    parser.add_argument('--warmup', type=int, default=10, help='untimed calls first (default 10)')
    parser.add_argument('--iters', type=int, default=50, help='timed calls (default 50)')
    parser.add_argument('--device', default=None, help='default cuda if available, else cpu')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    if len(args.size) not in (1, 2):
        parser.error(f'--size takes one or two values, got {args.size}')
    for name in ('batch', 'dim', 'heads', 'n_win', 'topk', 'iters'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")}={getattr(args, name)} must be >= 1')
    if args.warmup < 0:
        parser.error(f'--warmup={args.warmup} must be >= 0')
    return args


class _Timer:
    """Wall time per call: CUDA events on GPU (asynchronous launches), perf_counter on CPU."""

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


def _make_inputs(args, device, dtype):
    height, width = (args.size * 2)[:2]
    c_qk = args.qk_dim or args.dim
    gen = torch.Generator(device='cpu').manual_seed(args.seed)
    qkv = torch.randn(args.batch, height, width, 2 * c_qk + args.dim, generator=gen).to(device, dtype)
    grad_out = torch.randn(args.batch, height, width, args.dim, generator=gen).to(device, dtype)
    return qkv, grad_out, c_qk


def bench_one(args, backend, pass_name, qkv, grad_out, c_qk):
    """Return (ms per call, peak MiB, peak MiB above the inputs) for one backend and pass."""
    device = qkv.device
    leaf = qkv.detach().requires_grad_(pass_name == 'fwd+bwd')

    def step():
        q, k, v = leaf[..., :c_qk], leaf[..., c_qk:2 * c_qk], leaf[..., 2 * c_qk:]
        if pass_name == 'fwd':
            with torch.no_grad():
                bi_level_routing_attention(q, k, v, args.heads, args.n_win, args.topk, backend=backend)
        else:
            leaf.grad = None
            out = bi_level_routing_attention(q, k, v, args.heads, args.n_win, args.topk, backend=backend)
            out.backward(grad_out)

    for _ in range(args.warmup):
        step()
    peak = extra = None
    if device.type == 'cuda':
        leaf.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    with _Timer(device) as timer:
        for _ in range(args.iters):
            step()
    if device.type == 'cuda':
        peak = torch.cuda.max_memory_allocated(device) / 2 ** 20
        extra = peak - base / 2 ** 20
    return timer.ms / args.iters, peak, extra


def run(args):
    """Run every requested (backend, pass); return the table rows as dicts."""
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == 'cuda' else torch.float32)
    backends = list(args.backends)
    if device.type != 'cuda' and 'triton' in backends:
        print(f'note: the triton backend needs CUDA; device is {device}, so only the torch '
              'backend runs (and no CUDA memory is reported)')
        backends.remove('triton')
    qkv, grad_out, c_qk = _make_inputs(args, device, dtype)
    height, width = qkv.shape[1:3]
    if height % args.n_win or width % args.n_win:
        raise SystemExit(f'error: map {height}x{width} is not divisible by --n-win={args.n_win}')
    rh, rw = height // args.n_win, width // args.n_win
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    print(f'BRA benchmark: N={args.batch} HxW={height}x{width} Cqk={c_qk} Cv={args.dim} '
          f'heads={args.heads} n_win={args.n_win} (region {rh}x{rw} = {rh * rw} tokens) '
          f'topk={args.topk} dtype={str(dtype).replace("torch.", "")} device={name} '
          f'warmup={args.warmup} iters={args.iters}')
    rows = []
    for pass_name in args.passes:
        for backend in backends:
            ms, peak, extra = bench_one(args, backend, pass_name, qkv, grad_out, c_qk)
            rows.append(dict(backend=backend, pass_=pass_name, ms=ms, peak=peak, extra=extra))
    print(format_table(rows))
    return rows


def format_table(rows):
    def mib(x):
        return 'n/a' if x is None else f'{x:.1f}'

    header = ('backend', 'pass', 'ms/call', 'peak MiB', 'peak above inputs MiB', 'speedup vs torch')
    torch_ms = {r['pass_']: r['ms'] for r in rows if r['backend'] == 'torch'}
    lines = []
    for r in rows:
        ref = torch_ms.get(r['pass_'])
        speedup = f'{ref / r["ms"]:.2f}x' if ref and r['ms'] > 0 else '-'
        lines.append((r['backend'], r['pass_'], f'{r["ms"]:.3f}', mib(r['peak']), mib(r['extra']), speedup))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = '  '.join(f'{{:<{w}}}' for w in widths)
    out = [fmt.format(*header), fmt.format(*('-' * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    return '\n'.join(line.rstrip() for line in out)


def main(argv=None):
    return run(parse_args(argv))


if __name__ == '__main__':
    main()
