"""Neighborhood attention and bi-level routing attention as ``torch.library`` custom ops,
and their probe (recorded calls and attention probabilities).

* ``torch.library.opcheck`` of ``mmsparse::neighborhood_attention_2d`` and
  ``mmsparse::bi_level_routing_attention`` (schema, fake tensors, autograd registration,
  AOT dispatch) in float64 and float32, and of their Triton ``triton_op`` forward and
  backward (``mmsparse::*_triton``, ``mmsparse::*_triton_backward``; the CPU interpreter
  without a GPU).
* Gradients through the custom ops equal those of the reference called directly, and
  pass ``gradcheck`` (float64, tiny shapes). The Triton backward runs the backward kernels
  only (the forward saved its log-sum-exp), and ``torch.compile(fullgraph=True)`` of the
  Triton ops equals eager, output and gradients.
* ``torch.jit.trace`` records one ``mmsparse::`` node with ``q, k, v`` as its first
  inputs (the FLOP counter reads them); under ONNX export the reference runs inline.
* The probe: every row of the probabilities sums to 1, and ``probs @ V[key_index]``
  reproduces the op output of those queries (float64, 1e-12).

The Triton cases run in the interpreter (``TRITON_INTERPRET=1``) that ``tests/test_ops/kernels.py`` sets.
"""
import sys

import torch

import pytest

# Imported first: it sets TRITON_INTERPRET=1 (no GPU) before anything can import triton.
from .kernels import DEVICE, needs_kernels
import mmsparse.ops.bra as bra_pkg
import mmsparse.ops.fibottention as fib_pkg
import mmsparse.ops.hmhsa as hmhsa_pkg
import mmsparse.ops.na2d as na2d_pkg
import mmsparse.ops.na2d.reference as reference_module
from mmsparse.ops import (bi_level_routing_attention, cell_average_pool, fibottention_attention,
                          fibottention_pattern, global_attention, grid_attention, neighborhood_attention_2d)
import mmsparse.ops._dispatch as dispatch
from mmsparse.ops._dispatch import through_custom_ops
from mmsparse.ops.bra import bra_attention_reference, route_regions
from mmsparse.ops.na2d import na2d_reference
from mmsparse.ops.probe import attention_probabilities, record_op_calls

NA_OP = torch.ops.mmsparse.neighborhood_attention_2d.default
NA_BACKWARD_OP = torch.ops.mmsparse.neighborhood_attention_2d_backward.default
BRA_OP = torch.ops.mmsparse.bi_level_routing_attention.default
# The dynamic-shape AOT test of opcheck retraces the interpreted kernels' launches (minutes).
OPCHECK_STATIC = ('test_schema', 'test_autograd_registration', 'test_faketensor', 'test_aot_dispatch_static')
PROBE_TOL = dict(atol=1e-12, rtol=0)


# Eager calls take the custom ops and their registered backward here, as under torch.compile.
pytestmark = pytest.mark.usefixtures('through_the_custom_ops')


def _na_inputs(dtype, with_rpb, shape=(1, 2, 7, 8, 4), kernel_size=3, seed=0, device='cpu'):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(shape, generator=gen, dtype=dtype).to(device).requires_grad_() for _ in range(3))
    table = 2 * kernel_size - 1
    rpb = torch.randn(shape[1], table, table, generator=gen, dtype=dtype).to(device).requires_grad_()
    return q, k, v, rpb if with_rpb else None


def _bra_inputs(dtype, n=1, size=(4, 6), c_qk=8, c_v=4, seed=0, device='cpu'):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(n, *size, c_qk, generator=gen, dtype=dtype).to(device).requires_grad_() for _ in range(2))
    v = torch.randn(n, *size, c_v, generator=gen, dtype=dtype).to(device).requires_grad_()
    return q, k, v


# ----------------------------------------------------------------------------- opcheck

# Pairwise cover of dtype x dilation x rpb (each opcheck traces with dynamic shapes: seconds).
@pytest.mark.parametrize('dtype,dilation,with_rpb', [(torch.float64, 1, True), (torch.float64, 2, False),
                                                     (torch.float32, 2, True), (torch.float32, 1, False)])
def test_na2d_opcheck_torch(dtype, dilation, with_rpb):
    q, k, v, rpb = _na_inputs(dtype, with_rpb)
    torch.library.opcheck(NA_OP, (q, k, v, 3, dilation, rpb, 0.4))


@needs_kernels
@pytest.mark.parametrize('with_rpb', [True, False])
def test_na2d_triton_opcheck(with_rpb):
    from mmsparse.ops.na2d import triton_kernels
    q, k, v, rpb = _na_inputs(torch.float64, with_rpb, device=DEVICE)
    torch.library.opcheck(triton_kernels._na2d_triton_op, (q, k, v, 3, 2, rpb, 0.4), test_utils=OPCHECK_STATIC)
    out, lse = (t.detach() for t in triton_kernels._na2d_triton_op(q, k, v, 3, 2, rpb, 0.4))
    leaves = [None if t is None else t.detach() for t in (q, k, v, rpb)]
    torch.library.opcheck(triton_kernels._na2d_triton_backward_op,
                          (torch.randn_like(out), *leaves, out, lse, 3, 2, 0.4), test_utils=OPCHECK_STATIC)


@pytest.mark.parametrize('dtype,topk', [(torch.float64, 1), (torch.float64, 3), (torch.float32, 3)])
def test_bra_opcheck_torch(dtype, topk):
    q, k, v = _bra_inputs(dtype, size=(4, 4), c_qk=4, c_v=4)
    torch.library.opcheck(BRA_OP, (q, k, v, 2, 2, topk, 0.4))


@needs_kernels
@pytest.mark.parametrize('topk', [1, 3])
def test_bra_triton_opcheck(topk):
    from mmsparse.ops.bra import triton_kernels
    q, k, v = _bra_inputs(torch.float64, device=DEVICE)
    region_index = route_regions(q, k, 2, topk, 0.4)
    args = (region_index, 2, 2, 0.4)
    torch.library.opcheck(triton_kernels._bra_triton_op, (q, k, v, *args), test_utils=OPCHECK_STATIC)
    out, lse = (t.detach() for t in triton_kernels._bra_triton_op(q, k, v, *args))
    torch.library.opcheck(triton_kernels._bra_triton_backward_op,
                          (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out, lse, *args),
                          test_utils=OPCHECK_STATIC)


# ----------------------------------------------------------------------------- gradients

def _grads(fn, inputs):
    """Output and gradients of ``fn`` at fresh leaves, for a fixed upstream gradient."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    wrt = [t for t in leaves if t is not None]
    return out.detach(), torch.autograd.grad(out, wrt, upstream.to(out.device))


@pytest.mark.parametrize('dilation,with_rpb', [(1, True), (2, True), (2, False)])
def test_na2d_custom_op_gradients_equal_reference(dilation, with_rpb):
    """The custom op's recomputing backward = autograd through the reference; and gradcheck."""
    inputs = _na_inputs(torch.float64, with_rpb)
    out, grads = _grads(lambda q, k, v, rpb: neighborhood_attention_2d(q, k, v, 3, dilation, rpb, 0.4), inputs)
    ref_out, ref_grads = _grads(lambda q, k, v, rpb: na2d_reference(q, k, v, 3, dilation, rpb, 0.4), inputs)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    small = _na_inputs(torch.float64, with_rpb, shape=(1, 1, 6, 6, 2))
    wrt = [t for t in small if t is not None]
    assert torch.autograd.gradcheck(
        lambda *t: neighborhood_attention_2d(*t[:3], 3, dilation, t[3] if with_rpb else None, 0.4), wrt)


@pytest.mark.parametrize('with_rpb', [True, False])
def test_na2d_compiled_backward_recomputes_with_the_eager_algorithm(with_rpb, monkeypatch, eager_calls_inline):
    """A compiled graph's NA backward (``mmsparse::neighborhood_attention_2d_backward``) runs on
    real tensors and recomputes the forward with the eager algorithm: the tiled one on this
    30x30 map, as the forward (traced as aten ops, the backward took the dense algorithm here
    and the gather one on larger maps). Its gradients equal eager autograd's."""
    inputs = _na_inputs(torch.float64, with_rpb, shape=(1, 2, 30, 30, 4), kernel_size=7)
    calls = []
    tiled = reference_module.na2d_tiled
    monkeypatch.setattr(reference_module, 'na2d_tiled', lambda *args: calls.append(1) or tiled(*args))

    def na(q, k, v, rpb):
        return neighborhood_attention_2d(q, k, v, 7, 1, rpb, 0.4)

    torch._dynamo.reset()
    out, grads = _grads(torch.compile(na, fullgraph=True), inputs)
    assert len(calls) == 2  # the forward and the backward's recomputation
    eager_out, eager_grads = _grads(na, inputs)  # inline: autograd through the tiled algorithm
    assert len(calls) == 3
    torch.testing.assert_close(out, eager_out, atol=1e-12, rtol=0)
    for got, want in zip(grads, eager_grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def test_na2d_backward_op_fake_matches_real():
    """The backward op's fake outputs have the real outputs' shapes, dtypes and strides
    (opcheck cannot run on it: its checkers trace the implementation's aten calls with a
    dispatch mode, which cannot see through the ``torch.func.vjp`` the implementation uses)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    for with_rpb in (True, False):
        q, k, v, rpb = (None if t is None else t.detach() for t in _na_inputs(torch.float64, with_rpb))
        args = (torch.randn_like(q), q, k, v, 3, 2, rpb, 0.4)
        real = NA_BACKWARD_OP(*args)
        with FakeTensorMode() as mode:
            fake = NA_BACKWARD_OP(*(mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args))
        for r, f in zip(real, fake):
            assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride())
        assert real[3].numel() == (0 if rpb is None else rpb.numel())


@pytest.mark.parametrize('topk', [1, 3])
def test_bra_custom_op_gradients_equal_reference(topk):
    inputs = _bra_inputs(torch.float64)

    def direct(q, k, v):
        return bra_attention_reference(q, k, v, route_regions(q, k, 2, topk, 0.4), 2, 2, 0.4)

    out, grads = _grads(lambda q, k, v: bi_level_routing_attention(q, k, v, 2, 2, topk, 0.4), inputs)
    ref_out, ref_grads = _grads(direct, inputs)
    torch.testing.assert_close(out, ref_out, atol=1e-12, rtol=0)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    small = _bra_inputs(torch.float64, size=(2, 4), c_qk=4, c_v=2)
    assert torch.autograd.gradcheck(lambda q, k, v: bi_level_routing_attention(q, k, v, 2, 2, topk, 0.4), small)


def _triton_cases():
    """Each op's Triton call and its torch twin, on float64 inputs."""
    return {
        'na2d': (_na_inputs(torch.float64, True, device=DEVICE),
                 lambda q, k, v, rpb, backend: neighborhood_attention_2d(q, k, v, 3, 2, rpb, backend=backend)),
        'bra': (_bra_inputs(torch.float64, device=DEVICE),
                lambda q, k, v, backend: bi_level_routing_attention(q, k, v, 2, 2, 2, backend=backend)),
    }


@needs_kernels
@pytest.mark.parametrize('op', ['na2d', 'bra'])
def test_triton_backward_runs_no_forward_kernel(op, monkeypatch):
    """Gradients through the triton ops = the torch backend's, and the backward launches
    the backward kernels only: the forward op saved its log-sum-exp."""
    import mmsparse.ops._triton_op as triton_op
    inputs, fn = _triton_cases()[op]
    launched, launch = [], triton_op.launch_triton
    kernels = {'na2d': 'mmsparse.ops.na2d.triton_kernels', 'bra': 'mmsparse.ops.bra.triton_kernels'}[op]
    monkeypatch.setattr(sys.modules[kernels], 'launch_triton',
                        lambda kernel, *a, **kw: launched.append(kernel.__name__) or launch(kernel, *a, **kw))
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves, 'triton')
    forward_kernels, launched[:] = list(launched), []
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], upstream)
    assert forward_kernels and all('fwd' in name for name in forward_kernels)
    assert launched and not any('fwd' in name for name in launched), launched
    want = _grads(lambda *t: fn(*t, 'torch'), inputs)
    torch.testing.assert_close((out.detach(), grads), want, atol=1e-10, rtol=1e-8)


@needs_kernels
@pytest.mark.parametrize('op', ['na2d', 'bra'])
def test_triton_ops_compile_fullgraph_equal_eager(op):
    """``torch.compile(fullgraph=True)`` of the triton ops: output and gradients equal eager."""
    torch._dynamo.reset()
    inputs, fn = _triton_cases()[op]
    compiled = torch.compile(lambda *t: fn(*t, 'triton'), fullgraph=True)
    got = _grads(compiled, inputs)
    want = _grads(lambda *t: fn(*t, 'triton'), inputs)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.fixture
def eager_calls_inline(through_the_custom_ops):
    """Undoes ``through_the_custom_ops`` for one test. Its teardown comes first (it depends on
    that fixture), so the state that fixture restores is the one left for the next test."""
    previous, dispatch._STATE['through_custom_ops'] = dispatch._STATE['through_custom_ops'], False
    yield
    dispatch._STATE['through_custom_ops'] = previous


@pytest.mark.parametrize('op', ['na2d', 'bra', 'fibottention', 'grid', 'global', 'pool'])
def test_eager_calls_run_inline_with_the_custom_op_gradients(op, monkeypatch, eager_calls_inline):
    """An eager call on plain tensors runs the torch implementation inline (autograd keeps the
    forward's tensors; no recomputing backward), with the custom op's output and gradients;
    a jit trace (the FLOP counter) still records the custom op."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 5, 6, generator=gen, dtype=torch.float64)
    pattern = fibottention_pattern((3, 4), 2, 1)
    calls = {
        'na2d': (na2d_pkg, '_na2d_op', _na_inputs(torch.float64, True),
                 lambda q, k, v, rpb: neighborhood_attention_2d(q, k, v, 3, 2, rpb, 0.4, backend='torch')),
        'bra': (bra_pkg, '_bra_op', _bra_inputs(torch.float64),
                lambda q, k, v: bi_level_routing_attention(q, k, v, 2, 2, 3, 0.4, backend='torch')),
        'fibottention': (fib_pkg, '_fib_op', [torch.randn(2, 2, 13, 4, generator=gen, dtype=torch.float64)
                                              for _ in range(3)],
                         lambda q, k, v: fibottention_attention(q, k, v, pattern, backend='torch')),
        'grid': (hmhsa_pkg, '_grid_op', [x, x + 1, x - 1], lambda q, k, v: grid_attention(q, k, v, 2, 3)),
        'global': (hmhsa_pkg, '_global_op', [x, x[..., :2, :3], x[..., 1:3, :3]],
                   lambda q, k, v: global_attention(q, k, v, 2)),
        'pool': (hmhsa_pkg, '_pool_op', [x], lambda x: cell_average_pool(x, 2)),
    }
    pkg, name, inputs, fn = calls[op]
    custom_op, seen = getattr(pkg, name), []
    monkeypatch.setattr(pkg, name, lambda *a: seen.append(1) or custom_op(*a))
    inline = _grads(fn, inputs)
    assert seen == []
    with through_custom_ops():
        through_op = _grads(fn, inputs)
    assert len(seen) == 1
    torch.testing.assert_close(inline, through_op, atol=1e-12, rtol=0)
    with torch.no_grad():
        fn(*inputs)
    assert len(seen) == 1
    torch.jit.trace(fn, tuple(t.detach() for t in inputs if t is not None), check_trace=False)
    assert len(seen) == 2


def test_na2d_eager_call_with_a_parameter_rpb_runs_inline(monkeypatch, eager_calls_inline):
    """NAT's rpb is an ``nn.Parameter``: an eager call with it runs inline too (no custom op, no
    recomputing backward), and its values are read (an all -inf head takes the gather algorithm,
    whose fully masked rows are NaN as in every other backend, where SDPA gives 0)."""
    q, k, v, rpb = (t.detach() for t in _na_inputs(torch.float64, True))
    rpb = torch.nn.Parameter(rpb)
    custom_op, seen = na2d_pkg._na2d_op, []
    monkeypatch.setattr(na2d_pkg, '_na2d_op', lambda *a: seen.append(1) or custom_op(*a))
    neighborhood_attention_2d(q, k, v, 3, 2, rpb, 0.4).sum().backward()
    assert seen == [] and rpb.grad is not None
    with torch.no_grad():
        rpb[0] = float('-inf')
        out = neighborhood_attention_2d(q, k, v, 3, 2, rpb, 0.4)
    assert out[:, 0].isnan().all() and not out[:, 1].isnan().any()
    torch.testing.assert_close(out, na2d_reference(q, k, v, 3, 2, rpb.detach(), 0.4), equal_nan=True, atol=1e-12,
                               rtol=0)


# ----------------------------------------------------------------------------- tracing

def _traced_kinds(fn, inputs):
    graph = torch.jit.trace(fn, inputs, check_trace=False).graph
    return [node for node in graph.nodes() if node.kind().startswith('mmsparse::')]


def test_jit_trace_records_one_node_with_qkv_first():
    q, k, v, rpb = (t.detach() for t in _na_inputs(torch.float32, True))
    nodes = _traced_kinds(lambda q, k, v, rpb: neighborhood_attention_2d(q, k, v, 3, 2, rpb), (q, k, v, rpb))
    assert [n.kind() for n in nodes] == ['mmsparse::neighborhood_attention_2d']
    assert [i.debugName() for i in list(nodes[0].inputs())[:3]] == ['q', 'k', 'v']
    q, k, v = (t.detach() for t in _bra_inputs(torch.float32))
    nodes = _traced_kinds(lambda q, k, v: bi_level_routing_attention(q, k, v, 2, 2, 3), (q, k, v))
    assert [n.kind() for n in nodes] == ['mmsparse::bi_level_routing_attention']
    assert [i.debugName() for i in list(nodes[0].inputs())[:3]] == ['q', 'k', 'v']


def test_inline_reference_skips_the_custom_ops(monkeypatch):
    """While ONNX export traces, the public functions run their reference as plain aten ops."""
    monkeypatch.setattr(dispatch, 'inline_reference', lambda: True)
    q, k, v, rpb = (t.detach() for t in _na_inputs(torch.float64, True))
    fn = lambda q, k, v, rpb: neighborhood_attention_2d(q, k, v, 3, 2, rpb, 0.4)  # noqa: E731
    assert _traced_kinds(fn, (q, k, v, rpb)) == []
    torch.testing.assert_close(fn(q, k, v, rpb), na2d_reference(q, k, v, 3, 2, rpb, 0.4), atol=1e-12, rtol=0)
    q, k, v = (t.detach() for t in _bra_inputs(torch.float64))
    assert _traced_kinds(lambda q, k, v: bi_level_routing_attention(q, k, v, 2, 2, 3), (q, k, v)) == []


# ----------------------------------------------------------------------------- probe

def _check_probe(call, queries, out_rows, v_rows):
    """Rows sum to 1 and ``probs @ v_rows[key_index]`` = the op output rows of ``queries``.

    ``out_rows``: (B, heads, Q_all, hd) op output per query; ``v_rows``: (B, heads, K_all, hd).
    """
    probs, key_index = attention_probabilities(call, queries)
    assert probs.shape == key_index.shape == out_rows.shape[:2] + (len(queries), probs.shape[-1])
    torch.testing.assert_close(probs.sum(-1), torch.ones_like(probs[..., 0]), **PROBE_TOL)
    values = v_rows.gather(2, key_index.flatten(2)[..., None].expand(-1, -1, -1, v_rows.shape[-1]))
    got = torch.einsum('bnqk,bnqkc->bnqc', probs, values.unflatten(2, key_index.shape[2:]))
    torch.testing.assert_close(got, out_rows[:, :, queries], **PROBE_TOL)


@pytest.mark.parametrize('dilation,with_rpb,q_size', [(1, True, (7, 8)), (2, True, (7, 8)), (2, False, (5, 6))])
def test_na2d_probe(dilation, with_rpb, q_size):
    q, k, v, rpb = (None if t is None else t.detach() for t in _na_inputs(torch.float64, with_rpb))
    q = q[:, :, :q_size[0], :q_size[1]]  # queries on the top-left corner of the key map
    with record_op_calls() as calls:
        out = neighborhood_attention_2d(q, k, v, 3, dilation, rpb)
    (call, ) = calls
    assert call.op == 'neighborhood_attention_2d' and call.arguments['scale'] == 4**-0.5
    assert call.arguments['q'] is q and call.arguments['rpb'] is rpb and call.arguments['dilation'] == dilation
    queries = torch.tensor([0, 1, q_size[1] + 3, q_size[0] * q_size[1] - 1])
    _check_probe(call, queries, out.flatten(2, 3), v.flatten(2, 3))


@pytest.mark.parametrize('topk', [1, 3])
def test_bra_probe(topk):
    q, k, v = (t.detach() for t in _bra_inputs(torch.float64, n=2, c_v=6))
    with record_op_calls() as calls:
        out = bi_level_routing_attention(q, k, v, 2, 2, topk)
    (call, ) = calls
    assert call.op == 'bi_level_routing_attention' and call.arguments['scale'] == 8**-0.5
    assert call.arguments['topk'] == topk and call.arguments['num_heads'] == 2

    def rows(t):  # (N, H, W, C) -> (N, heads, H*W, C/heads)
        return t.flatten(1, 2).unflatten(-1, (2, -1)).transpose(1, 2)

    _check_probe(call, torch.tensor([0, 5, 9, 23]), rows(out), rows(v))
