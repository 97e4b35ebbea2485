"""Property tests (hypothesis): the fast backend of every op equals its PyTorch reference.

For random legal arguments, ``backend='triton'`` and ``backend='torch'`` must agree on the
forward output and on every input gradient (q, k, v, and the rpb for NA). Without a GPU
the Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``, set by
``tests/conftest.py`` and by ``tests/test_ops/kernels.py``), so the shapes are tiny: batch 1-2, heads 1-2,
maps up to 8x8 (NA up to k*d + 3 per side), head dims 4-16.

Examples per test (``derandomize=True``, so every run draws the same cases; each test
is sized to take at most ~20 s on a loaded 2-core CPU in the interpreter):

* ``test_na2d_triton_matches_reference``: 12 drawn + 2 explicit examples (fully masked
  head in float32, ``-inf`` entries in float64). kernel 3/5, dilation 1-3, maps
  ``k*d .. k*d+3`` per side (non-square), queries on a top-left corner, with / without
  rpb, ``-inf`` rpb entries, and a head whose rpb is all ``-inf`` (every row of that
  head fully masked: the reference yields NaN there, the kernel must yield NaN at
  exactly the same positions, everything else must match).
* ``test_bra_triton_matches_reference``: 20 examples. n_win 1-3, region sides 1-3,
  topk 1..n_win**2, Dqk != Dv, routing indices must be identical.
* ``test_bra_module_auto_pad_triton_matches_reference``: 10 examples (maps divisible
  by n_win are rejected by ``assume``). The
  :class:`BiLevelRoutingAttention` module (the op itself refuses maps not divisible by
  n_win; the module pads them with ``auto_pad=True``) on 3..8 sided maps.
* ``test_fibottention_triton_matches_reference``: 30 examples. grids up to 6x6, 1-d and
  2-d layouts, with / without CLS (without CLS in sparse mode rows with no kept key
  output zeros), both modes.
* ``test_hmhsa_sdpa_matches_reference``: 50 examples. H-MHSA has no Triton kernel; its
  fast path (``backend='triton'``) is SDPA: grid attention with windows that do not
  divide the map (masked padding), and global attention against partially pooled keys.

Tolerances, as the existing op tests: float64 atol 1e-10 / rtol 1e-8; float32 atol 1e-4 /
rtol 1e-4 on outputs and atol 1e-4 / rtol 1e-3 on gradients.
"""

import torch

import pytest
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st

# Imported first: it sets TRITON_INTERPRET=1 (no GPU) before anything can import triton.
from .kernels import DEVICE, needs_kernels
from mmsparse.ops import (bi_level_routing_attention, cell_average_pool, fibottention_attention,
                          global_attention, grid_attention, neighborhood_attention_2d)
from mmsparse.ops.fibottention import fibottention_pattern

# The interpreter computes the fully masked rows (exp/log of -inf) in numpy and warns.
pytestmark = pytest.mark.filterwarnings('ignore::RuntimeWarning')
DTYPES = st.sampled_from([torch.float32, torch.float64])
TOL = {
    torch.float64: (dict(atol=1e-10, rtol=1e-8), dict(atol=1e-10, rtol=1e-8)),
    torch.float32: (dict(atol=1e-4, rtol=1e-4), dict(atol=1e-4, rtol=1e-3)),
}
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)


def _randn(shape, dtype, gen):
    return torch.randn(shape, generator=gen, dtype=dtype).to(DEVICE)


def _forward_backward(fn, tensors, grad_out):
    """``fn(*leaves)`` on fresh leaf copies of ``tensors`` (None passes through): out, grads."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], grad_out)
    return out.detach(), grads


def _assert_match(got, want, dtype, names, equal_nan=False):
    out_tol, grad_tol = TOL[dtype]
    (out_g, grads_g), (out_w, grads_w) = got, want
    for name, g, w, tol in [('out', out_g, out_w, out_tol)] + [
            (n, g, w, grad_tol) for n, g, w in zip(names, grads_g, grads_w)]:
        assert g.shape == w.shape and g.dtype == w.dtype, name
        if equal_nan:
            assert torch.equal(g.isnan(), w.isnan()), f'{name}: NaN positions differ'
        else:
            assert torch.isfinite(w).all() and torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, **tol, equal_nan=equal_nan, msg=lambda m, name=name: f'{name}: {m}')


# ----------------------------------------------------------------------------- NA 2-D

@st.composite
def na_cases(draw):
    ks = draw(st.sampled_from([3, 5]))
    dilation = draw(st.integers(1, 3 if ks == 3 else 1))
    window = ks * dilation
    height, width = (window + draw(st.integers(0, 3)) for _ in range(2))
    corner = draw(st.booleans())   # queries only on a top-left corner of the map
    hq, wq = (draw(st.integers(1, height)), draw(st.integers(1, width))) if corner else (height, width)
    rpb_kind = draw(st.sampled_from(['none', 'plain', 'neg_inf', 'masked_head']))
    return dict(batch=draw(st.integers(1, 2)), heads=draw(st.integers(1, 2)), height=height, width=width,
                hq=hq, wq=wq, head_dim=draw(st.sampled_from([4, 8, 16])), ks=ks, dilation=dilation,
                rpb_kind=rpb_kind, dtype=draw(DTYPES), seed=draw(st.integers(0, 2**16)))


@needs_kernels
@settings(max_examples=12, **SETTINGS)
@given(case=na_cases())
# Always run the masked cases in both dtypes, whatever the draw gives.
@example(case=dict(batch=1, heads=2, height=7, width=6, hq=7, wq=6, head_dim=8, ks=3, dilation=2,
                   rpb_kind='masked_head', dtype=torch.float32, seed=1))
@example(case=dict(batch=2, heads=2, height=8, width=5, hq=5, wq=4, head_dim=4, ks=5, dilation=1,
                   rpb_kind='neg_inf', dtype=torch.float64, seed=2))
def test_na2d_triton_matches_reference(case):
    event(f"rpb={case['rpb_kind']}, {case['dtype']}, d={case['dilation']}")
    gen = torch.Generator().manual_seed(case['seed'])
    b, h, dt, ks = case['batch'], case['heads'], case['dtype'], case['ks']
    shape = (b, h, case['height'], case['width'], case['head_dim'])
    q = _randn(shape, dt, gen)[:, :, :case['hq'], :case['wq']]
    k, v = _randn(shape, dt, gen), _randn(shape, dt, gen)
    grad_out = _randn((b, h, case['hq'], case['wq'], case['head_dim']), dt, gen)
    rpb = None
    if case['rpb_kind'] != 'none':
        rpb = _randn((h, 2 * ks - 1, 2 * ks - 1), dt, gen)
        if case['rpb_kind'] == 'neg_inf':   # some offsets excluded, never a whole window
            drop = torch.rand(rpb.shape, generator=gen) < 0.3
            drop[:, ks - 1, ks - 1] = False   # the centre offset (0, 0) is in every window
            rpb[drop.to(DEVICE)] = float('-inf')
        elif case['rpb_kind'] == 'masked_head':   # head h-1: every logit -inf, rows fully masked
            rpb[-1] = float('-inf')
    results = [
        _forward_backward(lambda *t: neighborhood_attention_2d(*t[:3], ks, case['dilation'], t[3],
                                                               backend=backend),
                          (q, k, v, rpb), grad_out) for backend in ('triton', 'torch')
    ]
    names = ('dq', 'dk', 'dv', 'drpb')[:3 + (rpb is not None)]
    masked = case['rpb_kind'] == 'masked_head'
    if masked:   # the reference yields NaN on the fully masked head (and only there, in the output)
        assert results[1][0][:, -1].isnan().all() and not results[1][0][:, :-1].isnan().any()
    _assert_match(*results, dt, names, equal_nan=masked)


# ----------------------------------------------------------------------------- BRA

@st.composite
def bra_cases(draw):
    n_win = draw(st.integers(1, 3))
    region = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    heads = draw(st.integers(1, 2))
    return dict(batch=draw(st.integers(1, 2)), n_win=n_win, region=region, heads=heads,
                d_qk=draw(st.sampled_from([4, 8, 16])), d_v=draw(st.sampled_from([4, 8, 16])),
                topk=draw(st.integers(1, n_win * n_win)), dtype=draw(DTYPES),
                scale=draw(st.sampled_from([None, 0.3])), seed=draw(st.integers(0, 2**16)))


def _bra_run(backend, q, k, v, grad_out, case):
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out, index = bi_level_routing_attention(*leaves, case['heads'], case['n_win'], case['topk'],
                                            scale=case['scale'], return_routing=True, backend=backend)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return (out.detach(), grads), index


@needs_kernels
@settings(max_examples=20, **SETTINGS)
@given(case=bra_cases())
def test_bra_triton_matches_reference(case):
    gen = torch.Generator().manual_seed(case['seed'])
    dt, n_win = case['dtype'], case['n_win']
    hw = (case['batch'], n_win * case['region'][0], n_win * case['region'][1])
    c_qk = case['heads'] * case['d_qk']
    q, k = _randn(hw + (c_qk, ), dt, gen), _randn(hw + (c_qk, ), dt, gen)
    v = _randn(hw + (case['heads'] * case['d_v'], ), dt, gen)
    grad_out = _randn(v.shape, dt, gen)
    got, idx_t = _bra_run('triton', q, k, v, grad_out, case)
    want, idx_r = _bra_run('torch', q, k, v, grad_out, case)
    assert torch.equal(idx_t, idx_r)
    _assert_match(got, want, dt, ('dq', 'dk', 'dv'))


@needs_kernels
@settings(max_examples=10, **SETTINGS)
@given(height=st.integers(3, 8), width=st.integers(3, 8), n_win=st.integers(2, 3), heads=st.integers(1, 2),
       topk_frac=st.floats(0, 1), dtype=DTYPES, seed=st.integers(0, 2**16))
def test_bra_module_auto_pad_triton_matches_reference(height, width, n_win, heads, topk_frac, dtype, seed):
    """Maps not divisible by n_win: the module pads (auto_pad=True); both backends agree."""
    from mmsparse.models.attentions import BiLevelRoutingAttention
    assume(height % n_win or width % n_win)
    topk = 1 + int(topk_frac * (n_win * n_win - 1))
    torch.manual_seed(seed)
    module = BiLevelRoutingAttention(8 * heads, heads, n_win, topk, lepe_kernel=3, auto_pad=True)
    module = module.to(DEVICE, dtype).eval()
    gen = torch.Generator().manual_seed(seed)
    x = _randn((1, height, width, 8 * heads), dtype, gen)
    grad_out = _randn(x.shape, dtype, gen)
    results = []
    for backend in ('triton', 'torch'):
        module.backend = backend
        module.zero_grad()
        leaf = x.detach().clone().requires_grad_()
        out = module(leaf)
        assert out.shape == x.shape
        grads = torch.autograd.grad(out, [leaf] + list(module.parameters()), grad_out, allow_unused=True)
        results.append((out.detach(), [g for g in grads if g is not None]))
    names = ['dx'] + [f'd{n}' for n, p in module.named_parameters()]
    _assert_match(*results, dtype, names)


# ----------------------------------------------------------------------------- Fibottention

@st.composite
def fib_cases(draw):
    return dict(batch=draw(st.integers(1, 2)), heads=draw(st.integers(1, 2)),
                grid=(draw(st.integers(1, 6)), draw(st.integers(1, 6))), head_dim=draw(st.sampled_from([4, 8, 16])),
                layout=draw(st.sampled_from(['1d', '2d'])), with_cls=draw(st.booleans()),
                mode=draw(st.sampled_from(['sparse', 'official'])), layer_id=draw(st.integers(0, 3)),
                scale=draw(st.sampled_from([None, 0.5])), dtype=draw(DTYPES), seed=draw(st.integers(0, 2**16)))


@needs_kernels
@settings(max_examples=30, **SETTINGS)
@given(case=fib_cases())
def test_fibottention_triton_matches_reference(case):
    gen = torch.Generator().manual_seed(case['seed'])
    dt = case['dtype']
    pattern = fibottention_pattern(case['grid'], case['heads'], case['layer_id'], layout=case['layout'])
    tokens = case['grid'][0] * case['grid'][1] + int(case['with_cls'])
    shape = (case['batch'], case['heads'], tokens, case['head_dim'])
    q, k, v, grad_out = (_randn(shape, dt, gen) * 2 for _ in range(4))
    results = [
        _forward_backward(lambda *t: fibottention_attention(*t, pattern.to(DEVICE), scale=case['scale'],
                                                            mode=case['mode'], with_cls=case['with_cls'],
                                                            backend=backend),
                          (q, k, v), grad_out) for backend in ('triton', 'torch')
    ]
    _assert_match(*results, dt, ('dq', 'dk', 'dv'))


# ----------------------------------------------------------------------------- H-MHSA (SDPA)

@st.composite
def hmhsa_cases(draw):
    heads = draw(st.integers(1, 2))
    return dict(batch=draw(st.integers(1, 2)), heads=heads, channels=heads * draw(st.sampled_from([4, 8, 16])),
                height=draw(st.integers(1, 8)), width=draw(st.integers(1, 8)), grid_size=draw(st.integers(1, 5)),
                ratio=draw(st.integers(1, 4)), scale=draw(st.sampled_from([None, 0.4])), dtype=draw(DTYPES),
                seed=draw(st.integers(0, 2**16)))


@settings(max_examples=50, **SETTINGS)
@given(case=hmhsa_cases())
def test_hmhsa_sdpa_matches_reference(case):
    gen = torch.Generator().manual_seed(case['seed'])
    dt, heads = case['dtype'], case['heads']
    shape = (case['batch'], case['channels'], case['height'], case['width'])
    q, k, v, grad_out = (_randn(shape, dt, gen) for _ in range(4))
    local = [
        _forward_backward(lambda *t: grid_attention(*t, heads, case['grid_size'], scale=case['scale'],
                                                    backend=backend), (q, k, v), grad_out)
        for backend in ('triton', 'torch')
    ]
    _assert_match(*local, dt, ('dq', 'dk', 'dv'))
    ratio = case['ratio']
    pooled = [
        _forward_backward(lambda *t: global_attention(t[0], cell_average_pool(t[1], ratio),
                                                      cell_average_pool(t[2], ratio), heads,
                                                      scale=case['scale'], backend=backend),
                          (q, k, v), grad_out) for backend in ('triton', 'torch')
    ]
    _assert_match(*pooled, dt, ('dq', 'dk', 'dv'))
