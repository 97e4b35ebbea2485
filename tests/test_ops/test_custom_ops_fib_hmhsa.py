"""Fibottention and H-MHSA as ``torch.library`` custom ops, and their probe.

* ``torch.library.opcheck`` (schema, fake tensors, autograd registration, AOT dispatch) of
  ``mmsparse::fibottention_attention`` (the torch backend: both torch algorithms, both
  modes, both layouts, with and without CLS), of the Triton kernels' ``triton_op`` pair
  ``mmsparse::fibottention_attention_triton`` and its ``_backward`` (both modes, with and
  without CLS; under the CPU interpreter without a GPU), ``mmsparse::grid_attention`` (grid
  sizes that do and do not divide the map) and ``mmsparse::global_attention`` and
  ``mmsparse::cell_average_pool``, in float64 and float32.
* Gradients through the custom ops equal the reference's called directly (float64,
  1e-12) and pass ``gradcheck`` on tiny shapes. The triton backend: output and gradients
  equal the torch backend's (float64, 1e-12), also under ``torch.compile(fullgraph=True)``;
  its backward launches only the backward kernels (the forward's LSE and p0 are saved);
  an empty batch launches nothing.
* ``torch.jit.trace`` records one ``mmsparse::`` node with q, k, v as its first inputs;
  under ONNX export (``inline_reference()``) no custom op runs.
* The probe: every row of the probabilities sums to 1 (all zero for a Fibottention row
  with no kept key), and ``probs @ V[key_index]`` reproduces the op output of those
  queries (float64, 1e-12).
"""

import torch

import pytest

# Imported first: it sets TRITON_INTERPRET=1 (no GPU) before anything can import triton.
from .kernels import DEVICE, needs_kernels
import mmsparse.ops._dispatch as dispatch
import mmsparse.ops.fibottention as fib_pkg
import mmsparse.ops.fibottention.triton_kernels as fib_kernels
import mmsparse.ops.hmhsa as hmhsa_pkg
from mmsparse.ops import cell_average_pool, fibottention_attention, global_attention, grid_attention
from mmsparse.ops.fibottention import fibottention_mask, fibottention_pattern
from mmsparse.ops.probe import attention_probabilities, record_op_calls
from .test_fibottention import _naive

FIB_OP = torch.ops.mmsparse.fibottention_attention.default
FIB_TRITON_OP = torch.ops.mmsparse.fibottention_attention_triton.default
FIB_TRITON_BACKWARD_OP = torch.ops.mmsparse.fibottention_attention_triton_backward.default
GRID_OP = torch.ops.mmsparse.grid_attention.default
GLOBAL_OP = torch.ops.mmsparse.global_attention.default
POOL_OP = torch.ops.mmsparse.cell_average_pool.default
TOL = dict(atol=1e-12, rtol=1e-10)
ALGORITHMS = {'dense': 10**9, 'sparse': 0}   # DENSE_BELOW_TOKENS value that selects each
# opcheck without its dynamic-shape AOT test, which takes 30-80 s a call on CPU: it runs
# once per op in test_opcheck_dynamic_shapes (slow).
OPCHECK_FAST = ('test_schema', 'test_autograd_registration', 'test_faketensor', 'test_aot_dispatch_static')


# Eager calls take the custom ops and their registered backward here, as under torch.compile.
pytestmark = pytest.mark.usefixtures('through_the_custom_ops')


@pytest.fixture(params=sorted(ALGORITHMS))
def algorithm(request, monkeypatch):
    """Run the test with each torch algorithm of Fibottention."""
    monkeypatch.setitem(dispatch.DENSE_BELOW_TOKENS, 'fibottention_attention', ALGORITHMS[request.param])
    return request.param


def randn(*shape, seed=0, dtype=torch.float64, device='cpu'):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)


def _leaves(*tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


def _grads(out, grad, inputs):
    return torch.autograd.grad(out, inputs, grad)


# ---------------------------------------------------------------------- fibottention

# (grid, heads, layout, with_cls): CLS, no CLS with empty rows (1-D, 12 heads on 49), 2-D.
FIB_CASES = [((3, 4), 2, '1d', True), ((1, 49), 12, '1d', False), ((3, 4), 2, '2d', True),
             ((4, 3), 2, '2d', False)]


def _fib_inputs(grid, heads, with_cls, dtype=torch.float64, device='cpu', dim=4, batch=2):
    tokens = grid[0] * grid[1] + int(with_cls)
    return [randn(batch, heads, tokens, dim, seed=s, dtype=dtype, device=device) * 2 for s in range(3)]


def _fib_op_args(q, k, v, pattern, mode, with_cls, algorithm):
    pattern = pattern.to(q.device)
    index, valid = pattern.neighbours()
    mask = pattern.dense_mask(mode, with_cls, q.dtype) if algorithm == 'dense' else None
    return (q, k, v, pattern.displacements, pattern.counts, index, valid, mask, list(pattern.grid), 0.5,
            mode, with_cls)


def _fib_triton_op_args(q, k, v, pattern, mode, with_cls):
    pattern = pattern.to(q.device)
    return (q, k, v, pattern.displacements, pattern.counts, list(pattern.grid), 0.5, mode, with_cls)


# opcheck takes ~5 s a call: every case and mode once; each algorithm meets each mode,
# each layout, CLS and no CLS, and both dtypes.
F64, F32 = torch.float64, torch.float32
OPCHECK_CASES = [('dense', FIB_CASES[0], 'sparse', F64), ('sparse', FIB_CASES[0], 'official', F32),
                 ('sparse', FIB_CASES[1], 'sparse', F64), ('dense', FIB_CASES[1], 'official', F32),
                 ('sparse', FIB_CASES[2], 'sparse', F32), ('dense', FIB_CASES[2], 'official', F64),
                 ('dense', FIB_CASES[3], 'sparse', F32), ('sparse', FIB_CASES[3], 'official', F64)]


@pytest.mark.parametrize('algo, case, mode, dtype', OPCHECK_CASES, ids=str)
def test_fibottention_opcheck(algo, case, mode, dtype):
    grid, heads, layout, with_cls = case
    pattern = fibottention_pattern(grid, heads, 1, layout=layout)
    q, k, v = _leaves(*_fib_inputs(grid, heads, with_cls, dtype))
    torch.library.opcheck(FIB_OP, _fib_op_args(q, k, v, pattern, mode, with_cls, algo), test_utils=OPCHECK_FAST)


@needs_kernels
@pytest.mark.parametrize('mode', ['sparse', 'official'])
@pytest.mark.parametrize('case', [FIB_CASES[0], FIB_CASES[3]], ids=str)   # 1-D with CLS, 2-D without
def test_fibottention_opcheck_triton(case, mode):
    """Both triton ops: the forward (its autograd registration too) and the backward, on its outputs."""
    grid, heads, layout, with_cls = case
    pattern = fibottention_pattern(grid, heads, 0, layout=layout)
    q, k, v = _leaves(*_fib_inputs(grid, heads, with_cls, device=DEVICE))
    args = _fib_triton_op_args(q, k, v, pattern, mode, with_cls)
    torch.library.opcheck(FIB_TRITON_OP, args, test_utils=OPCHECK_FAST)
    detached = [a.detach() if torch.is_tensor(a) else a for a in args]
    out, lse, p0 = FIB_TRITON_OP(*detached)
    grad = randn(*out.shape, seed=4, device=DEVICE)
    torch.library.opcheck(FIB_TRITON_BACKWARD_OP, (grad, *detached[:3], out, lse, p0, *detached[3:]),
                          test_utils=OPCHECK_FAST)


@pytest.mark.parametrize('mode', ['sparse', 'official'])
@pytest.mark.parametrize('case', FIB_CASES, ids=str)
def test_fibottention_op_and_gradients_match_naive_masking(algorithm, case, mode):
    """Output and q/k/v gradients through the custom op equal the dense naive masking (O(T^2))."""
    grid, heads, layout, with_cls = case
    pattern = fibottention_pattern(grid, heads, 1, layout=layout)
    inputs = _fib_inputs(grid, heads, with_cls)
    grad = randn(*inputs[0].shape, seed=5)
    leaves = _leaves(*inputs)
    out = fibottention_attention(*leaves, pattern, scale=0.5, mode=mode, with_cls=with_cls, backend='torch')
    naive_leaves = _leaves(*inputs)
    expected = _naive(*naive_leaves, fibottention_mask(pattern, with_cls), 0.5, mode)
    torch.testing.assert_close(out, expected, **TOL)
    for got, want in zip(_grads(out, grad, leaves), _grads(expected, grad, naive_leaves)):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize('mode', ['sparse', 'official'])
def test_fibottention_gradcheck(algorithm, mode):
    pattern = fibottention_pattern((2, 3), 2, 0)
    inputs = tuple(_leaves(*_fib_inputs((2, 3), 2, True, dim=3, batch=1)))
    assert torch.autograd.gradcheck(
        lambda q, k, v: fibottention_attention(q, k, v, pattern, mode=mode, backend='torch'), inputs)


@needs_kernels
@pytest.mark.parametrize('mode', ['sparse', 'official'])
def test_fibottention_triton_gradients_through_op(mode):
    pattern = fibottention_pattern((5, 7), 3, 1)
    inputs = [t.to(DEVICE) for t in _fib_inputs((5, 7), 3, True, dim=8)]
    grad = randn(*inputs[0].shape, seed=6, device=DEVICE)
    results = []
    for backend in ('triton', 'torch'):
        leaves = _leaves(*inputs)
        out = fibottention_attention(*leaves, pattern, mode=mode, backend=backend)
        results.append([out.detach(), *_grads(out, grad, leaves)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **TOL)


@needs_kernels
def test_fibottention_triton_compiled_equals_eager():
    """``torch.compile(fullgraph=True)`` of the triton backend: the output and gradients of eager."""
    pattern = fibottention_pattern((3, 4), 2, 1)
    inputs = [t.to(DEVICE) for t in _fib_inputs((3, 4), 2, True)]
    grad = randn(*inputs[0].shape, seed=6, device=DEVICE)

    def fn(q, k, v):
        return fibottention_attention(q, k, v, pattern, scale=0.5, mode='official', backend='triton') * 2

    results = []
    for call in (fn, torch.compile(fn, fullgraph=True)):
        leaves = _leaves(*inputs)
        out = call(*leaves)
        results.append([out.detach(), *_grads(out, grad, leaves)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **TOL)


@needs_kernels
@pytest.mark.parametrize('with_cls', [True, False])
def test_fibottention_triton_backward_runs_no_forward_kernel(monkeypatch, with_cls):
    """The forward saves its LSE and p0: the backward launches the backward kernels only."""
    launched = []
    launch = fib_kernels.launch_triton
    monkeypatch.setattr(fib_kernels, 'launch_triton',
                        lambda kernel, *a, **kw: launched.append(kernel.__name__) or launch(kernel, *a, **kw))
    pattern = fibottention_pattern((3, 4), 2, 0)
    leaves = _leaves(*(t.to(DEVICE) for t in _fib_inputs((3, 4), 2, with_cls)))
    out = fibottention_attention(*leaves, pattern, mode='official', with_cls=with_cls, backend='triton')
    forward = ['_fwd_patch', '_fwd_cls'][:1 + with_cls]
    assert launched == forward
    out.backward(randn(*out.shape, seed=3, device=DEVICE))
    assert launched[len(forward):] == ['_bwd_dq_patch', '_bwd_dkdv_patch', '_bwd_dq_cls'][:2 + with_cls]
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in leaves)


@needs_kernels
@pytest.mark.parametrize('mode', ['sparse', 'official'])
def test_fibottention_triton_empty_batch(mode):
    """B = 0 launches nothing (Triton rejects empty grids): the reference's empty output, zero gradients."""
    pattern = fibottention_pattern((3, 4), 2, 0)
    leaves = _leaves(*(torch.zeros(0, 2, 13, 4, dtype=torch.float64, device=DEVICE) for _ in range(3)))
    out = fibottention_attention(*leaves, pattern, mode=mode, backend='triton')
    torch.testing.assert_close(out, fibottention_attention(*leaves, pattern, mode=mode, backend='torch'), **TOL)
    out.sum().backward()
    assert all(t.grad.shape == t.shape for t in leaves)


def test_pattern_compiled_once(monkeypatch, algorithm):
    """A call builds no index or mask: both come from the pattern's cache after the first call."""
    pattern = fibottention_pattern((3, 4), 2, 5)
    q = randn(1, 2, 13, 4)
    fibottention_attention(q, q, q, pattern, backend='torch')
    built = []
    monkeypatch.setattr(fib_pkg, 'neighbor_index', lambda *a: built.append('index'))
    monkeypatch.setattr(fib_pkg, 'fibottention_mask', lambda *a: built.append('mask'))
    fibottention_attention(q, q, q, pattern, backend='torch')
    assert built == []
    assert pattern.to('cpu') is pattern and pattern.to('meta') is pattern.to('meta')


def test_dense_exclusion_matches_mask():
    pattern = fibottention_pattern((1, 49), 12, 0)
    mask = fibottention_mask(pattern, with_cls=False)
    assert torch.equal(pattern.dense_exclusion('official', False), ~mask)
    sparse = pattern.dense_exclusion('sparse', False)
    empty = ~mask.any(-1)
    assert empty.any() and not sparse[empty].any()          # empty rows stay unmasked
    assert torch.equal(sparse[~empty], ~mask[~empty])
    # The float masks of the dense algorithm: additive in sparse mode, the 0/1 official mask.
    additive = pattern.dense_mask('sparse', False, torch.float64)
    assert additive.dtype == torch.float64 and torch.equal(additive == float('-inf'), sparse)
    assert torch.equal(additive[~sparse], torch.zeros_like(additive[~sparse]))
    assert torch.equal(pattern.dense_mask('official', False, torch.float32), mask.float())
    assert pattern.dense_mask('official', False, torch.float32) is pattern.dense_mask('official', False, torch.float32)


def test_dense_algorithm_is_the_default_at_vit_s_size():
    """ViT-S at 224 (197 tokens) runs the dense algorithm by default; it equals the gather one."""
    assert dispatch.torch_algorithm('fibottention_attention', 197) == 'dense'
    pattern = fibottention_pattern((14, 14), 6, 3)
    q, k, v = _fib_inputs((14, 14), 6, True, dtype=torch.float32, dim=8, batch=1)
    dense = fibottention_attention(q, k, v, pattern, mode='official', backend='torch')
    index, valid = pattern.neighbours()
    gather = fib_pkg.fibottention_gather(q, k, v, index, valid, 8**-0.5, 'official', True)
    torch.testing.assert_close(dense, gather, atol=1e-5, rtol=1e-5)


def test_fibottention_trace_records_one_node():
    pattern = fibottention_pattern((3, 4), 2, 0)
    q, k, v = _fib_inputs((3, 4), 2, True, dtype=torch.float32)
    fibottention_attention(q, k, v, pattern, backend='torch')   # compile the pattern: traces agree
    graph = torch.jit.trace(lambda q, k, v: fibottention_attention(q, k, v, pattern, backend='torch'),
                            (q, k, v)).graph
    nodes = [n for n in graph.nodes() if n.kind().startswith('mmsparse::')]
    assert [n.kind() for n in nodes] == ['mmsparse::fibottention_attention']
    shapes = [i.type().sizes() for i in list(nodes[0].inputs())[:5]]
    assert shapes == [list(q.shape)] * 3 + [list(pattern.displacements.shape), [2]]


@pytest.mark.parametrize('mode', ['sparse', 'official'])
@pytest.mark.parametrize('case', FIB_CASES, ids=str)
def test_fibottention_probe(algorithm, case, mode):
    grid, heads, layout, with_cls = case
    pattern = fibottention_pattern(grid, heads, 1, layout=layout)
    q, k, v = _fib_inputs(grid, heads, with_cls)
    with record_op_calls() as calls:
        out = fibottention_attention(q, k, v, pattern, mode=mode, with_cls=with_cls, backend='torch')
    assert [c.op for c in calls] == ['fibottention_attention']
    assert calls[0].arguments['pattern'] is pattern and calls[0].arguments['scale'] == 0.5
    queries = torch.tensor([0, 1, q.shape[2] - 1, 5, 0])   # CLS (with_cls) twice, first and last patch
    probs, key_index = attention_probabilities(calls[0], queries)
    _check_probe(probs, key_index, v, out[:, :, queries])
    sums = probs.sum(-1)
    kept = fibottention_mask(pattern, with_cls)[:, queries].any(-1) | (mode == 'official')
    torch.testing.assert_close(sums, kept.to(sums.dtype).expand_as(sums), atol=1e-12, rtol=0)
    assert ((key_index >= 0) | (probs == 0)).all()


def _check_probe(probs, key_index, values, expected):
    """``probs @ values[key_index]`` == ``expected``; values (B, heads, L, d) per head."""
    gathered = torch.stack([values[b][torch.arange(values.shape[1])[:, None, None], key_index[b].clamp(min=0)]
                            for b in range(values.shape[0])])                # (B, heads, Q, K, d)
    torch.testing.assert_close((probs.unsqueeze(-1) * gathered).sum(-2), expected, atol=1e-12, rtol=0)


def test_onnx_export_runs_inline(monkeypatch, algorithm):
    """Under ONNX export the ops run their torch implementation as plain aten ops, no custom op."""
    monkeypatch.setattr(dispatch, 'inline_reference', lambda: True)
    pattern = fibottention_pattern((3, 4), 2, 0)
    q, k, v = _fib_inputs((3, 4), 2, True, dtype=torch.float32)
    x = randn(1, 4, 5, 6, dtype=torch.float32)
    # (call, whether its torch implementation may use SDPA: the dense Fibottention algorithm
    # does; H-MHSA's SDPA is its 'triton' path, which must not run here)
    calls = [(lambda: fibottention_attention(q, k, v, pattern, backend='triton'), algorithm == 'dense'),
             (lambda: grid_attention(x, x, x, 2, 4, backend='triton'), False),
             (lambda: global_attention(x, x, x, 2, backend='triton'), False),
             (lambda: cell_average_pool(x, 2), False)]
    for call, sdpa in calls:
        call()   # compile the pattern first: the trace and its check trace agree
        graph = torch.jit.trace(call, ()).graph
        kinds = {n.kind() for n in graph.nodes()}
        assert not any(kind.startswith('mmsparse::') for kind in kinds), kinds
        assert ('aten::scaled_dot_product_attention' in kinds) == sdpa, kinds   # the reference


# ---------------------------------------------------------------------------- H-MHSA

# (H, W, G): G divides both sides; pads both sides; a map smaller than one window.
GRID_SIZES = [(4, 6, 2), (5, 7, 3), (3, 2, 4)]


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('backend', ['torch', 'triton'])
@pytest.mark.parametrize('h,w,g', GRID_SIZES)
def test_grid_attention_opcheck(h, w, g, backend, dtype):
    q, k, v = _leaves(*(randn(2, 8, h, w, seed=s, dtype=dtype) for s in range(3)))
    torch.library.opcheck(GRID_OP, (q, k, v, 2, g, 0.4, backend), test_utils=OPCHECK_FAST)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('backend', ['torch', 'triton'])
def test_global_attention_opcheck(backend, dtype):
    q = randn(2, 8, 4, 5, dtype=dtype)
    k, v = (randn(2, 8, 2, 3, seed=s, dtype=dtype) for s in (1, 2))
    torch.library.opcheck(GLOBAL_OP, (*_leaves(q, k, v), 2, 0.4, backend), test_utils=OPCHECK_FAST)


@pytest.mark.slow
@pytest.mark.parametrize('op', ['fibottention', 'grid', 'global'])
def test_opcheck_dynamic_shapes(op):
    """The full opcheck, dynamic-shape AOT dispatch included, once per op (30-80 s each on CPU)."""
    if op == 'fibottention':
        pattern = fibottention_pattern((3, 4), 2, 1)
        q, k, v = _leaves(*_fib_inputs((3, 4), 2, True))
        torch.library.opcheck(FIB_OP, _fib_op_args(q, k, v, pattern, 'official', True, 'sparse'))
        return
    q, k, v = _leaves(*(randn(1, 4, 5, 7, seed=s) for s in range(3)))   # 3 x 3 windows pad both sides
    if op == 'grid':
        torch.library.opcheck(GRID_OP, (q, k, v, 2, 3, 0.4, 'torch'))
    else:
        torch.library.opcheck(GLOBAL_OP, (q, k, v, 2, 0.4, 'torch'))


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('h,w,r', [(4, 6, 2), (5, 7, 3), (3, 2, 4)])
def test_cell_average_pool_opcheck(h, w, r, dtype):
    torch.library.opcheck(POOL_OP, (*_leaves(randn(2, 3, h, w, dtype=dtype)), r))


@pytest.mark.parametrize('h,w,g', GRID_SIZES)
def test_hmhsa_gradcheck(h, w, g):
    inputs = tuple(_leaves(*(randn(1, 4, h, w, seed=s) for s in range(3))))
    assert torch.autograd.gradcheck(lambda q, k, v: grid_attention(q, k, v, 2, g, backend='torch'), inputs)
    assert torch.autograd.gradcheck(
        lambda q, k, v: global_attention(q, k[..., :2, :2], v[..., :2, :2], 2, backend='triton'), inputs)
    assert torch.autograd.gradcheck(lambda x: cell_average_pool(x, g), inputs[:1])


@pytest.mark.parametrize('h,w,g', GRID_SIZES)
def test_hmhsa_gradients_match_reference(h, w, g):
    """Through the custom op vs the implementation called directly (its own autograd graph)."""
    inputs = [randn(2, 8, h, w, seed=s) for s in range(3)]
    grad = randn(2, 8, h, w, seed=7)
    for op, direct in ((lambda *t: grid_attention(*t, 2, g, backend='torch'),
                        lambda *t: hmhsa_pkg._grid_implementation(*t, 2, g, 4**-0.5, 'torch')),
                       (lambda *t: global_attention(*t, 2, backend='torch'),
                        lambda *t: hmhsa_pkg._global_implementation(*t, 2, 4**-0.5, 'torch'))):
        results = []
        for fn in (op, direct):
            leaves = _leaves(*inputs)
            out = fn(*leaves)
            results.append([out.detach(), *_grads(out, grad, leaves)])
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, **TOL)


def test_hmhsa_trace_records_one_node_each():
    q, k = randn(1, 8, 5, 7, dtype=torch.float32), randn(1, 8, 2, 3, dtype=torch.float32)
    for fn, kind in ((lambda q: grid_attention(q, q, q, 2, 3), 'mmsparse::grid_attention'),
                     (lambda q: global_attention(q, k, k, 2), 'mmsparse::global_attention'),
                     (lambda q: cell_average_pool(q, 2), 'mmsparse::cell_average_pool')):
        nodes = [n for n in torch.jit.trace(fn, (q, )).graph.nodes() if n.kind().startswith('mmsparse::')]
        assert [n.kind() for n in nodes] == [kind]


@pytest.mark.parametrize('backend', ['torch', 'triton'])
@pytest.mark.parametrize('h,w,g', GRID_SIZES + [(13, 22, 7)])
def test_grid_attention_probe(h, w, g, backend):
    q, k, v = (randn(2, 8, h, w, seed=s) for s in range(3))
    with record_op_calls() as calls:
        out = grid_attention(q, k, v, 2, g, backend=backend)
    assert [c.op for c in calls] == ['grid_attention']
    queries = torch.tensor([0, h * w - 1, w - 1, (h - 1) * w, min(w + 1, h * w - 1)])
    probs, key_index = attention_probabilities(calls[0], queries)
    assert probs.shape == key_index.shape == (2, 2, len(queries), g * g)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, len(queries), dtype=probs.dtype), atol=1e-12, rtol=0)
    assert ((key_index >= 0) | (probs == 0)).all()
    # Keys lie in the query's window.
    y, x = queries // w, queries % w
    ky, kx = key_index // w, key_index % w
    real = key_index >= 0
    assert ((ky // g == (y // g)[:, None]) | ~real).all() and ((kx // g == (x // g)[:, None]) | ~real).all()
    tokens = lambda t: t.reshape(2, 2, 4, h * w).transpose(-1, -2)  # noqa: E731
    _check_probe(probs, key_index, tokens(v), tokens(out)[:, :, queries])


def test_global_attention_probe():
    q = randn(2, 8, 4, 5)
    k, v = (randn(2, 8, 2, 3, seed=s) for s in (1, 2))
    with record_op_calls() as calls:
        out = global_attention(q, k, v, 2, scale=0.3)
    queries = torch.tensor([0, 7, 19])
    probs, key_index = attention_probabilities(calls[0], queries)
    assert probs.shape == (2, 2, 3, 6) and torch.equal(key_index[0, 0, 0], torch.arange(6))
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 3, dtype=probs.dtype), atol=1e-12, rtol=0)
    tokens = lambda t: t.reshape(2, 2, 4, -1).transpose(-1, -2)  # noqa: E731
    _check_probe(probs, key_index, tokens(v), tokens(out)[:, :, queries])
