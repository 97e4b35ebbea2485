"""tools/analysis_tools/benchmark.py: sub-commands, rows, baselines and argument errors (CPU, tiny sizes)."""
import math
import subprocess
import sys

import pytest
import torch

from mmsparse.ops import (bi_level_routing_attention, fibottention_attention, fibottention_pattern,
                          neighborhood_attention_2d)

from ..conftest import REPO_ROOT, load_tool

bench = load_tool('analysis_tools/benchmark.py')

FAST = ['--warmup', '0', '--iters', '1', '--device', 'cpu', '--dtype', 'float32', '--no-cpu-memory']
TINY = {
    'bra': ['--batch', '1', '--size', '8', '--dim', '16', '--heads', '2', '--n-win', '2', '--topk', '2'],
    'na2d': ['--batch', '1', '--size', '9', '10', '--heads', '2', '--head-dim', '8', '--kernel-size', '3',
             '--dilation', '2'],
    'fibottention': ['--batch', '1', '--tokens', '16', '30', '--heads', '3', '--head-dim', '8'],
    'hmhsa': ['--batch', '1', '--size', '8', '12', '--dim', '16', '--heads', '2', '--grid-size', '4',
              '--ratio', '2'],
}
# dense token count of every case: H*W, or N + CLS for fibottention
TOKENS = {'bra': [64], 'na2d': [90], 'fibottention': [17, 31], 'hmhsa': [96]}


def _run(argv):
    return bench.run(bench.parse_args(argv))


@pytest.mark.parametrize('op', sorted(TINY))
def test_every_op_runs_on_cpu(op, capsys):
    """Rows, columns and the progress line; memory is n/a on CPU with --no-cpu-memory."""
    official = {'fibottention': ['official-mask'], 'na2d': ['official-mask'], 'bra': ['official-gather'],
                'hmhsa': ['official-matmul']}
    backends = ['torch', 'dense-sdpa'] + official.get(op, [])
    rows = _run([op] + TINY[op] + FAST + ['--backends'] + backends)
    expected = [(n, p, b) for n in TOKENS[op] for p in bench.PASSES for b in backends]
    assert [(r['tokens'], r['pass_'], r['backend']) for r in rows] == expected
    for r in rows:
        assert r['op'] == op
        assert math.isfinite(r['ms']) and r['ms'] > 0
        assert r['peak'] is None and r['extra'] is None
    captured = capsys.readouterr()
    out = captured.out
    assert out.count('vs dense-sdpa') == len(TOKENS[op])  # one table per case, with both speed-up columns
    assert 'vs torch' in out and 'n/a' in out and 'memory=not measured' in out
    assert out.count('time / official') == (len(TOKENS[op]) if op in official else 0)
    total = len(rows)
    assert [line.split(']')[0] for line in captured.err.splitlines() if line.startswith('[')] == \
        [f'[{i}/{total}' for i in range(1, total + 1)]
    assert 'ETA 0s' in captured.err.splitlines()[-1]


def test_default_backends_and_triton_note(monkeypatch, capsys):
    args = bench.parse_args(['fibottention'] + TINY['fibottention'])
    assert args.backends == ['torch', 'triton', 'dense-sdpa', 'official-mask']
    assert bench.parse_args(['bra']).backends == ['torch', 'triton', 'dense-sdpa', 'official-gather']
    assert bench.parse_args(['na2d']).backends == ['torch', 'triton', 'dense-sdpa', 'official-mask']
    with monkeypatch.context() as m:
        # nothing imports triton in here: triton reads TRITON_INTERPRET once, when first imported
        m.delenv('TRITON_INTERPRET', raising=False)
        rows = _run(['na2d'] + TINY['na2d'] + FAST + ['--passes', 'fwd', '--backends', 'torch', 'triton'])
    assert [r['backend'] for r in rows] == ['torch']
    assert 'triton backend needs CUDA' in capsys.readouterr().out
    # hmhsa's triton backend is the SDPA fast path: it runs without CUDA
    rows = _run(['hmhsa'] + TINY['hmhsa'] + FAST + ['--passes', 'fwd', '--backends', 'triton'])
    assert [r['backend'] for r in rows] == ['triton']


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the interpreter path on CPU')
def test_na2d_triton_in_interpreter(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    rows = _run(['na2d', '--batch', '1', '--size', '5', '--heads', '1', '--head-dim', '16', '--kernel-size', '3']
                + FAST + ['--passes', 'fwd', '--backends', 'triton'])
    assert [(r['backend'], r['pass_']) for r in rows] == [('triton', 'fwd')]
    assert rows[0]['ms'] > 0


@pytest.mark.parametrize('layout,with_cls', [('1d', True), ('2d', True), ('1d', False)])
def test_official_mask_baseline_matches_official_mode(layout, with_cls):
    n, heads, dim = 30, 3, 8
    grid = bench.fibottention_grid(n, layout)
    assert grid == ((1, 30) if layout == '1d' else (5, 6))
    pattern = fibottention_pattern(grid, heads, 1, layout)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, n + with_cls, dim, generator=gen) for _ in range(3))
    mask = bench.build_official_mask(pattern, with_cls)
    assert mask.dtype == torch.float32 and set(mask.unique().tolist()) == {0.0, 1.0}
    baseline = bench.official_mask_attention(q, k, v, mask)
    official = fibottention_attention(q, k, v, pattern, mode='official', with_cls=with_cls, backend='torch')
    torch.testing.assert_close(baseline, official, atol=1e-5, rtol=1e-5)
    # and it is not the sparse (-inf) semantics: the comparison above can fail
    sparse = fibottention_attention(q, k, v, pattern, mode='sparse', with_cls=with_cls, backend='torch')
    assert (baseline - sparse).abs().max() > 1e-3


def test_na2d_bias_index_worked_example():
    """Rows of 13 with k=5, d=2 (the window rules' worked example) times columns of 10 (classes of exactly k)."""
    table = bench.build_na2d_bias_index(13, 10, 5, 2).view(13, 10, 13, 10)
    query = table[12, 0]  # rows 4, 6, .., 12 (bias rows 0..4) x columns 0, 2, .., 8 (bias columns 4..8)
    inside = query < 81
    assert inside.sum() == 25
    assert inside.nonzero().tolist() == [[r, c] for r in (4, 6, 8, 10, 12) for c in (0, 2, 4, 6, 8)]
    assert query[inside].tolist() == [br * 9 + bc for br in range(5) for bc in range(4, 9)]
    assert (table < 81).sum((2, 3)).eq(25).all()  # every query: k*k keys


@pytest.mark.parametrize('dilation', [1, 2])
@pytest.mark.parametrize('with_rpb', [True, False])
def test_na2d_official_mask_baseline_matches_the_op(dilation, with_rpb):
    """The benchmarked baseline (mask built independently of the op) = the op, outputs and gradients."""
    argv = ['na2d'] + TINY['na2d'][:-2] + ['--dilation', str(dilation)] + ([] if with_rpb else ['--no-rpb'])
    case, = bench.na2d_cases(bench.parse_args(argv))
    fn, leaves, shape = case.factories['official-mask'](torch.device('cpu'), torch.float64,
                                                        torch.Generator().manual_seed(0))
    assert len(leaves) == 3 + with_rpb
    grad_out = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for f in (fn, lambda q, k, v, rpb=None: neighborhood_attention_2d(q, k, v, 3, dilation, rpb, backend='torch')):
        inputs = [t.detach().clone().requires_grad_() for t in leaves]
        out = f(*inputs)
        results.append((out.detach(), torch.autograd.grad(out, inputs, grad_out)))
    (out, grads), (want, want_grads) = results
    torch.testing.assert_close(out, want, atol=1e-10, rtol=0)
    for got, expected in zip(grads, want_grads):
        torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize('size,n_win,topk,heads', [((8, 8), 2, 3, 2), ((12, 6), 3, 4, 4)])
def test_official_bra_baseline_matches_the_op(size, n_win, topk, heads):
    """The gathered-regions baseline = the op (routing and attention), outputs and gradients."""
    gen = torch.Generator().manual_seed(0)
    leaves = [torch.randn(2, *size, c, generator=gen, dtype=torch.float64, requires_grad=True) for c in (8, 8, 12)]
    grad = torch.randn(2, *size, 12, generator=gen, dtype=torch.float64)
    results = []
    for fn in (bench.official_bra_attention, lambda *a: bi_level_routing_attention(*a, backend='torch')):
        out = fn(*leaves, heads, n_win, topk)
        results.append([out, *torch.autograd.grad(out, leaves, grad)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize('size,grid_size,ratio,heads', [((8, 12), 4, 2, 2), ((14, 7), 7, 7, 1)])
def test_official_hmhsa_baseline_matches_the_op(size, grid_size, ratio, heads):
    """The reshaped matmul-softmax baseline = the ops (grid, pool, global), outputs and gradients."""
    argv = ['hmhsa', '--batch', '2', '--size', *map(str, size), '--dim', '8', '--heads', str(heads),
            '--grid-size', str(grid_size), '--ratio', str(ratio)]
    case, = bench.hmhsa_cases(bench.parse_args(argv))
    results = []
    for backend in ('official-matmul', 'torch'):
        gen = torch.Generator().manual_seed(0)   # the same leaf for both
        fn, (leaf, ), shape = case.factories[backend](torch.device('cpu'), torch.float64, gen)
        grad = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        out = fn(leaf.requires_grad_())
        results.append([out, *torch.autograd.grad(out, leaf, grad)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def _mixers():
    """One token mixer per family's op, float64, with an input map each (NA: padded, dilated, rpb)."""
    from mmsparse.registry import MODELS
    cfgs = [(dict(type='mmsparse.NeighborhoodAttention2d', kernel_size=3, dilation=2), (5, 6)),
            (dict(type='mmsparse.BiLevelRoutingAttention', n_win=2, topk=2), (8, 8)),
            (dict(type='mmsparse.HierarchicalMHSA', grid_size=3, ds_ratio=2), (6, 12)),   # as official: G, r divide
            (dict(type='mmsparse.Fibottention2d', mode='official'), (4, 5))]
    torch.manual_seed(0)
    for cfg, size in cfgs:
        mixer = MODELS.build(cfg, default_args=dict(embed_dims=16, num_heads=2)).double().eval()
        mixer.init_weights()
        for param in mixer.parameters():   # non-zero biases and rpb: the baselines must add them
            param.data.add_(torch.randn_like(param) * 0.1)
        yield cfg['type'], mixer, torch.randn(2, *size, 16, dtype=torch.float64)


def test_official_semantics_equal_the_mixers():
    """The model sub-command's official row computes what the mixers compute (Fibottention in
    official mode), through the baselines: each op is swapped, and restored afterwards."""
    from mmsparse.models.attentions import neighborhood_attention
    semantics = bench.OfficialSemantics()
    for name, mixer, x in _mixers():
        want = mixer(x)
        with semantics.patched():
            assert neighborhood_attention.neighborhood_attention_2d is not neighborhood_attention_2d
            got = mixer(x)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0, msg=name)
    assert neighborhood_attention.neighborhood_attention_2d is neighborhood_attention_2d


def test_rounds_interleave_the_backends(monkeypatch):
    """--rounds R: every backend is timed R times in turn, iters/R calls each, in reverse order
    every other round; ms is the median."""
    order, round_ms = [], iter([6., 2., 4., 60., 2., 20.])   # in turn: torch, official, official, torch, ...

    class FakeTimer:
        def __init__(self, device):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.ms = next(round_ms)

    monkeypatch.setattr(bench, '_Timer', FakeTimer)
    args = bench.parse_args(['bra'] + TINY['bra'] + FAST + ['--iters', '6', '--rounds', '3', '--passes', 'fwd',
                                                            '--backends', 'torch', 'official-gather'])
    case = next(iter(bench.OPS['bra'].cases(args)))
    for backend in ('torch', 'official-gather'):
        factory = case.factories[backend]
        case.factories[backend] = lambda *a, f=factory, b=backend: (
            lambda fn, leaves, shape: ((lambda *x: order.append(b) or fn(*x)), leaves, shape))(*f(*a))
    timed = bench.bench_pass(args, case, 'fwd', ['torch', 'official-gather'], torch.device('cpu'), torch.float32)
    torch_first, official_first = ['torch'] * 2 + ['official-gather'] * 2, ['official-gather'] * 2 + ['torch'] * 2
    assert order == torch_first + official_first + torch_first
    # rounds of 2 calls: torch 6, 60, 2 ms -> 3, 30, 1 ms per call; official 2, 4, 20 -> 1, 2, 10
    assert timed['torch'][0] == 3. and timed['official-gather'][0] == 2.


def test_square_grid():
    assert bench.square_grid(1024) == (32, 32)
    assert bench.square_grid(4096) == (64, 64)
    assert bench.square_grid(16384) == (128, 128)
    assert bench.square_grid(30) == (5, 6)
    assert bench.square_grid(13) == (1, 13)


@pytest.mark.parametrize('argv,needle', [
    (['na2d', '--kernel-size', '4'], '--kernel-size: kernel_size=4 must be an odd int >= 3'),
    (['na2d', '--size', '10', '--kernel-size', '7', '--dilation', '2'], '--kernel-size * --dilation'),
    (['bra', '--size', '10', '--n-win', '3'], '--n-win=3'),
    (['bra', '--n-win', '2', '--size', '8', '--topk', '5'], '--topk: topk=5 must be in [1, n_win**2 = 4]'),
    (['bra', '--dim', '10', '--heads', '4'], '--heads: num_heads=4 must be a positive divisor of --dim=10'),
    (['hmhsa', '--dim', '10', '--heads', '4'], '--heads=4'),
    (['hmhsa', '--backends', 'official-mask'], 'official-mask'),
    (['hmhsa', '--size', '12', '--grid-size', '8', '--backends', 'official-matmul'], '--grid-size=8'),
    (['fibottention', '--tokens', '1024', '0'], '--tokens=0'),
    (['fibottention', '--iters', '0'], '--iters=0'),
    (['fibottention', '--iters', '4', '--rounds', '5'], '--rounds=5 must be between 1 and --iters=4'),
    (['bra', '--backends', 'official-mask'], '--backends official-mask is not available for bra'),
    (['na2d', '--size', '9', '9', '9'], '--size'),
])
def test_bad_input_names_the_argument(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err and f' {argv[0]}: error: ' in err


def test_script_runs_standalone():
    """From the checkout, without mmengine: only torch and mmsparse.ops are imported."""
    code = ('import runpy, sys; sys.argv = ["benchmark.py", "hmhsa", "--batch", "1", "--size", "4", "--dim", "4", '
            '"--heads", "1", "--grid-size", "2", "--ratio", "2", "--warmup", "0", "--iters", "1", '
            '"--device", "cpu", "--passes", "fwd", "--backends", "torch", "--no-cpu-memory"]; '
            'runpy.run_path("tools/analysis_tools/benchmark.py", run_name="__main__"); '
            'assert not any(m.split(".")[0] in ("mmengine", "mmcv", "mmdet", "mmseg") for m in sys.modules)')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 'H-MHSA' in result.stdout


# 40x40: the tiled algorithm (DENSE_BELOW_TOKENS), 5 x 5 tiles of 8 x 8 queries, each over the
# (8 + 7 - 1)**2 = 196 keys its windows cover
NA2D_MEMORY = ['na2d', '--size', '40', '--heads', '2', '--head-dim', '16', '--kernel-size', '7',
               '--warmup', '0', '--iters', '1', '--device', 'cpu', '--dtype', 'float32', '--passes', 'fwd',
               '--backends', 'torch']
# (heads, tiles, keys, head_dim) fp32 gathered keys and values of the tiles: 1.2 MiB per image
GATHERED_MIB_PER_IMAGE = 2 * 2 * 25 * 196 * 16 * 4 / 2 ** 20


@pytest.mark.slow
def test_cpu_memory_grows_with_batch():
    """Peak RSS of a fresh process per row: positive, and the op's part scales with the batch."""
    (one, ), (four, ) = (_run(NA2D_MEMORY + ['--batch', str(b)]) for b in (1, 4))
    for row in (one, four):
        assert row['peak'] > row['extra'] > 0
    # at least the extra gathered K/V of three more images, and not more than the whole run's RSS
    assert four['extra'] - one['extra'] > 3 * GATHERED_MIB_PER_IMAGE * 0.9, (one, four)
    assert four['peak'] > one['peak'], (one, four)


FREED_BLOCK_RSS = """
import torch
def rss():
    with open('/proc/self/status') as status:
        return next(int(line.split()[1]) for line in status if line.startswith('VmRSS:')) / 1024
for _ in range(2):  # the first free is the one after which glibc would raise its threshold
    before = rss()
    block = torch.ones(2 * 2**20)  # 8 MiB, touched
    held = rss() - before
    del block
print(held, rss() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc and /proc: Linux only')
def test_memory_child_returns_freed_tensors_to_the_os():
    """With MEMORY_CHILD_ENV a freed 8 MiB tensor leaves the RSS even after an earlier free of
    one (glibc would otherwise keep the second in the heap): the figure follows live memory."""
    result = subprocess.run([sys.executable, '-c', FREED_BLOCK_RSS], capture_output=True, text=True, check=True,
                            env={**bench.os.environ, **bench.MEMORY_CHILD_ENV})
    held, after_free = map(float, result.stdout.split())
    assert held > 7.5 and after_free < 0.5, result.stdout


TINY_MODEL_CONFIG = """
default_scope = 'mmseg'
model = dict(type='EncoderDecoder', backbone=dict(
    type='mmsparse.NAT', arch=dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2.)))
"""
MODEL_FAST = ['--shape', '64', '64', '--warmup', '1', '--iters', '1', '--device', 'cpu']


@pytest.fixture
def tiny_model_config(tmp_path):
    path = tmp_path / 'tiny_nat.py'
    path.write_text(TINY_MODEL_CONFIG)
    return str(path)


@pytest.mark.slow
def test_model_subcommand_rows_and_memory(tiny_model_config, capsys):
    rows = _run(['model', tiny_model_config] + MODEL_FAST + ['--no-cpu-memory'])
    assert [(r['op'], r['pass_'], r['backend'], r['tokens']) for r in rows] == \
        [('model', 'fwd', 'eager', 4096), ('model', 'fwd+bwd', 'eager', 4096)]
    assert all(r['ms'] > 0 and r['peak'] is None for r in rows)
    out = capsys.readouterr().out
    assert 'model: backbone of tiny_nat.py B=1 HxW=64x64' in out and 'vs eager' in out
    # training-step memory in a fresh process per row; activations grow with the batch. The
    # tiny model's step needs about 1 MiB per image at 64x64, the same order as what stays
    # fixed (cached attention masks, allocator granularity), so only growth is asserted.
    (one, ), (eight, ) = (_run(['model', tiny_model_config] + MODEL_FAST + ['--passes', 'fwd+bwd', '--batch', b])
                          for b in ('1', '8'))
    assert one['peak'] > one['extra'] > 0, one
    assert eight['extra'] > one['extra'] + 1, (one, eight)


@pytest.mark.slow
def test_model_official_and_variant_rows(tiny_model_config, capsys):
    rows = _run(['model', tiny_model_config] + MODEL_FAST + ['--passes', 'fwd', '--no-cpu-memory', '--official',
                                                             '--variant', 'model.backbone.arch.mlp_ratio=1.'])
    assert [r['backend'] for r in rows] == ['eager', 'official', 'variant']
    out = capsys.readouterr().out
    assert 'variant: model.backbone.arch.mlp_ratio=1.' in out and 'time / official' in out


@pytest.mark.slow
def test_model_compile_row(tiny_model_config, capsys):
    rows = _run(['model', tiny_model_config] + MODEL_FAST + ['--passes', 'fwd', '--compile', '--no-cpu-memory'])
    assert [(r['pass_'], r['backend']) for r in rows] == [('fwd', 'eager'), ('fwd', 'compile')]
    assert all(r['ms'] > 0 for r in rows)
    lines = capsys.readouterr().out.splitlines()
    compile_line = next(line for line in lines if line.startswith('compile'))
    assert compile_line.split()[-1].endswith('x')  # its speed-up vs eager


@pytest.mark.parametrize('argv,needle', [
    (['model', 'no/such/config.py'], "config 'no/such/config.py' does not exist"),
    (['model', __file__, '--backends', 'compile'], '--backends compile needs --compile'),
    (['model', __file__, '--backends', 'official'], '--backends official needs --official'),
    (['model', __file__, '--backends', 'variant'], '--backends variant needs --variant'),
    (['model', __file__, '--batch', '0'], '--batch=0'),
    (['na2d', '--backends', 'eager'], '--backends eager is not available for na2d'),
])
def test_model_bad_input_names_the_argument(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err
