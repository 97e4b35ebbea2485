"""2-D neighborhood attention: the reference vs the official NATTEN 0.14.4 fixture, the
Triton kernels vs the reference, the window rules, and dispatch.

The torch backend has three exact algorithms (the gather of the reference, masked SDPA
over all pairs, and masked SDPA over tiles of queries and the keys their windows cover);
the fixture test runs each and the public op, and ``test_dense_matches_gather`` and
``test_tiled_matches_gather`` compare them on random inputs.

Without a GPU the Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``
is set before triton is first imported; see ``tests/test_ops/test_bra.py``), so the
shapes are tiny. They cover maps exactly ``k*d`` wide, non-square maps, dilations
1-3 with unequal residue classes, head dims 8/16/32/64/128, several query blocks
per program grid, strided inputs, no rpb, and fp64/fp32/fp16/bf16.

Tolerances: float64 atol 1e-10 / rtol 1e-8 (fixture and kernel); float32 atol 2e-5 /
rtol 1e-4 (a correct float32 implementation stays within ~2e-6 of the official float64 op).
The fixture nat_op.pt is described in ``tests/data/official/README.md``.
"""
import random
import subprocess
import sys

import torch
import torch.nn.functional as F

import pytest

# Imported first: it sets TRITON_INTERPRET=1 (no GPU) before anything can import triton.
from .kernels import DEVICE, needs_kernels, needs_triton
import mmsparse.ops.na2d as na2d_pkg
from mmsparse.ops import neighborhood_attention_2d
from mmsparse.ops._dispatch import ENV_VAR, triton_available
import mmsparse.ops.na2d.reference as reference_module
from mmsparse.ops.na2d.reference import na2d_tiled
from mmsparse.ops.na2d import na2d_dense, na2d_logits_reference, na2d_reference, neighborhood_indices
from ..conftest import REPO_ROOT

F64_TOL = dict(atol=1e-10, rtol=1e-8)
F32_TOL = dict(atol=2e-5, rtol=1e-4)
FIXTURE_CASES = ['d1_7x11', 'd2_13x10', 'd1_5x9', 'd3_16x15']


@pytest.fixture(scope='module')
def op_fixture(load_official):
    return load_official('nat_op.pt')


def _forward_backward(fn, tensors, grad_out):
    """Run ``fn(q, k, v, rpb)`` on fresh leaves; return the output and the 4 gradients."""
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    wrt = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, wrt, grad_out)
    return out.detach(), grads


# ----------------------------------------------------------------------------- window rules

def test_window_rules_worked_example():
    """The worked example of docs/design.md: rows, k=5, d=2, L=13 (residue classes of 7 and 6)."""
    neighbors, bias = neighborhood_indices(13, 5, 2)
    assert neighbors[12].tolist() == [4, 6, 8, 10, 12] and bias[12].tolist() == [0, 1, 2, 3, 4]
    assert neighbors[11].tolist() == [3, 5, 7, 9, 11] and bias[11].tolist() == [0, 1, 2, 3, 4]
    assert neighbors[1].tolist() == [1, 3, 5, 7, 9] and bias[1].tolist() == [4, 5, 6, 7, 8]
    assert neighbors[6].tolist() == [2, 4, 6, 8, 10] and bias[6].tolist() == [2, 3, 4, 5, 6]  # centred


def test_dilation_equals_undilated_na_on_subgrids():
    """Dilated NA = undilated NA (same rpb) on each of the d x d sub-grids x[a::d, b::d]."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 11, 13, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(2, 5, 5, generator=gen, dtype=torch.float64)
    out = na2d_reference(q, k, v, 3, 3, rpb, 0.5)
    for a in range(3):
        for b in range(3):
            sub = [t[:, :, a::3, b::3] for t in (q, k, v)]
            torch.testing.assert_close(out[:, :, a::3, b::3], na2d_reference(*sub, 3, 1, rpb, 0.5), **F64_TOL)


# ----------------------------------------------------------------------------- official fixture

def _fixture_case(fixture, case):
    get = lambda name: fixture[f'{case}.{name}']  # noqa: E731
    return get, (get('q'), get('k'), get('v'), get('rpb')), get('dilation')


# The public op (whichever algorithm it picks) and each torch algorithm.
TORCH_ALGORITHMS = {
    'op': lambda q, k, v, ks, dilation, rpb, scale: neighborhood_attention_2d(q, k, v, ks, dilation, rpb, scale),
    'dense': na2d_dense,
    'tiled': na2d_tiled,
    'gather': na2d_reference,
}


@pytest.mark.parametrize('algorithm', TORCH_ALGORITHMS)
@pytest.mark.parametrize('case', FIXTURE_CASES)
def test_reference_matches_official_fixture(op_fixture, case, algorithm):
    """Every torch algorithm and the public op (and the gather's logits) = NATTEN 0.14.4."""
    get, tensors, dilation = _fixture_case(op_fixture, case)
    ks, scale = op_fixture['kernel_size'], op_fixture['scale']
    torch.testing.assert_close(na2d_logits_reference(tensors[0], tensors[1], ks, dilation, tensors[3], scale),
                               get('logits'), **F64_TOL)
    out, grads = _forward_backward(lambda *t: TORCH_ALGORITHMS[algorithm](*t[:3], ks, dilation, t[3], scale),
                                   tensors, get('grad_out'))
    torch.testing.assert_close(out, get('out'), **F64_TOL)
    for name, grad in zip(('grad_q', 'grad_k', 'grad_v', 'grad_rpb'), grads):
        torch.testing.assert_close(grad, get(name), **F64_TOL, msg=lambda m, name=name: f'{name}: {m}')


@needs_kernels
@pytest.mark.parametrize('case', ['d1_7x11', 'd3_16x15'])
def test_triton_matches_official_fixture(op_fixture, case):
    get, tensors, dilation = _fixture_case(op_fixture, case)
    ks, scale = op_fixture['kernel_size'], op_fixture['scale']
    out, grads = _forward_backward(
        lambda *t: neighborhood_attention_2d(*t[:3], ks, dilation, t[3], scale, backend='triton'),
        [t.to(DEVICE) for t in tensors], get('grad_out').to(DEVICE))
    torch.testing.assert_close(out.cpu(), get('out'), **F64_TOL)
    for name, grad in zip(('grad_q', 'grad_k', 'grad_v', 'grad_rpb'), grads):
        torch.testing.assert_close(grad.cpu(), get(name), **F64_TOL, msg=lambda m, name=name: f'{name}: {m}')


# ----------------------------------------------------------------------------- triton vs reference

# (batch, heads, H, W, head_dim, kernel_size, dilation, with rpb)
CASES = [
    (1, 1, 6, 6, 16, 3, 2, True),       # both sides exactly k*d
    (2, 2, 7, 10, 32, 5, 1, True),      # non-square, batch 2, 2 heads
    (1, 2, 9, 13, 8, 3, 3, True),       # H = k*d; W classes of 5/4/4; head dim 8 (padded to 16)
    (1, 1, 5, 7, 64, 5, 1, False),      # no rpb, H = k
    (1, 1, 5, 6, 128, 5, 1, True),      # head dim 128
    (1, 1, 17, 16, 16, 3, 1, True),     # 272 tokens: two query blocks in the interpreter
    (1, 2, 14, 15, 64, 7, 2, True),     # the presets' k=7, dilated, head dim 64 with rpb
    (1, 1, 22, 23, 32, 11, 2, True),    # k=11 (DiNAT-L kernels), W classes of 12/11
]


def _random_case(seed):
    """A random shape: k in 3..7, d in 1..3, sides in [k*d, k*d + 7], head dim 16/32/64/128."""
    rng = random.Random(seed)
    kernel_size, dilation = rng.choice((3, 5, 7)), rng.randint(1, 3)
    height, width = (kernel_size * dilation + rng.randint(0, 7) for _ in range(2))
    return (1, rng.randint(1, 2), height, width, rng.choice((16, 32, 64, 128)),
            kernel_size, dilation, rng.random() < 0.75)


CASES += [_random_case(seed) for seed in range(3)]


def _random_inputs(batch, heads, height, width, head_dim, kernel_size, with_rpb, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, heads, height, width, head_dim)
    q, k, v, grad_out = (torch.randn(shape, generator=gen, dtype=dtype).to(DEVICE) for _ in range(4))
    rpb = torch.randn(heads, 2 * kernel_size - 1, 2 * kernel_size - 1, generator=gen, dtype=dtype).to(DEVICE)
    return (q, k, v, rpb if with_rpb else None), grad_out


# Every case in float64, two in float32 (the interpreter is slow). The random shapes are
# seeded, so a failure names a reproducible case.
DTYPE_CASES = [case + (torch.float64, ) for case in CASES] + [CASES[i] + (torch.float32, ) for i in (1, 4)]


@needs_kernels
@pytest.mark.parametrize('batch,heads,height,width,head_dim,ks,dilation,with_rpb,dtype', DTYPE_CASES)
def test_triton_matches_reference(batch, heads, height, width, head_dim, ks, dilation, with_rpb, dtype):
    tensors, grad_out = _random_inputs(batch, heads, height, width, head_dim, ks, with_rpb, dtype,
                                       seed=height * 100 + width)
    tol = F64_TOL if dtype == torch.float64 else F32_TOL
    results = [
        _forward_backward(lambda *t: neighborhood_attention_2d(*t[:3], ks, dilation, t[3], backend=backend),
                          tensors, grad_out) for backend in ('torch', 'triton')
    ]
    (ref_out, ref_grads), (tri_out, tri_grads) = results
    torch.testing.assert_close(tri_out, ref_out, **tol)
    for name, got, want in zip(('dq', 'dk', 'dv', 'drpb'), tri_grads, ref_grads):
        torch.testing.assert_close(got, want, **tol, msg=lambda m, name=name: f'{name}: {m}')


@needs_kernels
def test_triton_strided_inputs():
    """q/k/v as permuted views of one fused qkv tensor (the attention module's layout)."""
    gen = torch.Generator().manual_seed(7)
    qkv = torch.randn(1, 6, 7, 3, 2, 16, generator=gen, dtype=torch.float64).to(DEVICE)
    rpb = torch.randn(2, 5, 5, generator=gen, dtype=torch.float64).to(DEVICE)
    grad_out = torch.randn(1, 2, 6, 7, 16, generator=gen, dtype=torch.float64).to(DEVICE)
    results = []
    for backend in ('torch', 'triton'):
        leaf = qkv.clone().requires_grad_()
        r = rpb.clone().requires_grad_()
        q, k, v = leaf.permute(3, 0, 4, 1, 2, 5)
        out = neighborhood_attention_2d(q, k, v, 3, 2, rpb=r, backend=backend)
        out.backward(grad_out)
        results.append((out.detach(), leaf.grad, r.grad))
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, **F64_TOL)


@pytest.mark.parametrize('traced,algorithms', [(False, ['tiled', 'dense', 'tiled', 'gather', 'gather']),
                                               (True, ['gather', 'dense', 'dense', 'gather', 'dense'])])
def test_torch_algorithm_follows_the_crossover(monkeypatch, traced, algorithms):
    """na2d_torch: dense below the crossover, from there on the tiled algorithm (eager; its
    crossover in key tokens scaled by the keys of a tile at k = 7 over those at k) or the gather
    (traced); the gather for an rpb holding -inf and (eager) for an empty batch."""
    from mmsparse.ops import _dispatch
    calls = []
    for name, algorithm in (('na2d_dense', 'dense'), ('na2d_tiled', 'tiled'), ('na2d_reference', 'gather')):
        monkeypatch.setattr(reference_module, name, lambda *a, algorithm=algorithm: calls.append(algorithm))
    monkeypatch.setattr(reference_module, '_traced', lambda q: traced)
    for op in ('neighborhood_attention_2d', 'neighborhood_attention_2d_tiled'):
        monkeypatch.setitem(_dispatch.DENSE_BELOW_TOKENS, op, 42)
    x, y = torch.zeros(1, 1, 6, 7, 4), torch.zeros(1, 1, 6, 6, 4)   # 42 and 36 key tokens
    reference_module.na2d_torch(x, x, x, 7, 1, None, 1.0)
    reference_module.na2d_torch(y, y, y, 7, 1, None, 1.0)
    reference_module.na2d_torch(y, y, y, 3, 1, None, 1.0)         # tiles of 10 x 10 keys: as 36 * 1.96 = 70
    reference_module.na2d_torch(x, x, x, 7, 1, torch.full((1, 13, 13), float('-inf')), 1.0)
    reference_module.na2d_torch(y[:0], y[:0], y[:0], 7, 1, None, 1.0)
    assert calls == algorithms


@pytest.mark.parametrize('dilation', [1, 2])
@pytest.mark.parametrize('with_rpb', [True, False])
@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
def test_dense_matches_gather(dilation, with_rpb, dtype):
    """The two torch algorithms agree (forward and gradients), queries on a corner included."""
    tensors, grad_out = _random_inputs(2, 2, 9, 11, 8, 3, with_rpb, dtype, seed=dilation)
    tensors = [None if t is None else t.cpu() for t in tensors]
    tol = F64_TOL if dtype == torch.float64 else F32_TOL
    for rows, cols in ((9, 11), (5, 7)):
        results = [_forward_backward(lambda q, k, v, rpb: fn(q[:, :, :rows, :cols], k, v, 3, dilation, rpb, 0.3),
                                     tensors, grad_out.cpu()[:, :, :rows, :cols])
                   for fn in (na2d_dense, na2d_reference)]
        (dense_out, dense_grads), (ref_out, ref_grads) = results
        torch.testing.assert_close(dense_out, ref_out, **tol)
        for got, want in zip(dense_grads, ref_grads):
            torch.testing.assert_close(got, want, **tol)


# (H, W, Hq, Wq, kernel_size, dilation, tile, with rpb)
TILED_CASES = [
    (16, 16, 16, 16, 7, 1, 8, True),    # sides a multiple of the tile
    (13, 19, 13, 19, 5, 1, 8, True),    # not a multiple: the last tiles overlap their neighbours
    (20, 17, 11, 9, 3, 1, 4, True),     # queries on the top-left corner
    (14, 15, 14, 15, 7, 2, 8, True),    # dilation 2: classes of 7 and 7 / 8 and 7 positions
    (17, 16, 10, 16, 3, 3, 4, False),   # dilation 3, classes of 6/6/5 keys and 4/3/3 query rows
    (9, 12, 2, 12, 3, 3, 8, True),      # fewer query rows than classes, tile larger than a class
    (12, 12, 12, 12, 5, 2, 3, False),   # the key runs longer than some classes
    (10, 23, 10, 23, 5, 1, 1, True),    # one query per tile
]


@pytest.mark.parametrize('height,width,rows,cols,ks,dilation,tile,with_rpb', TILED_CASES)
def test_tiled_matches_gather(height, width, rows, cols, ks, dilation, tile, with_rpb):
    """na2d_tiled = the gather, outputs and the gradients of q, k, v and rpb (float64)."""
    tensors, grad_out = _random_inputs(2, 2, height, width, 8, ks, with_rpb, torch.float64, seed=height * width)
    tensors = [None if t is None else t.cpu() for t in tensors]
    grad_out = grad_out.cpu()[:, :, :rows, :cols]
    results = [_forward_backward(lambda q, k, v, rpb: fn(q[:, :, :rows, :cols], k, v, ks, dilation, rpb, 0.3),
                                 tensors, grad_out)
               for fn in (lambda *a: na2d_tiled(*a, tile=tile), na2d_reference)]
    (tiled_out, tiled_grads), (ref_out, ref_grads) = results
    tol = dict(atol=1e-10, rtol=0)
    torch.testing.assert_close(tiled_out, ref_out, **tol)
    for name, got, want in zip(('dq', 'dk', 'dv', 'drpb'), tiled_grads, ref_grads):
        torch.testing.assert_close(got, want, **tol, msg=lambda m, name=name: f'{name}: {m}')


def test_tiled_float32():
    """na2d_tiled in float32 (the dtype it is picked for) against the float64 gather."""
    tensors, grad_out = _random_inputs(1, 2, 19, 21, 32, 7, True, torch.float64, seed=3)
    tensors, grad_out = [t.cpu() for t in tensors], grad_out.cpu()
    ref_out, ref_grads = _forward_backward(lambda q, k, v, rpb: na2d_reference(q, k, v, 7, 1, rpb, 0.2),
                                           tensors, grad_out)
    out, grads = _forward_backward(lambda q, k, v, rpb: na2d_tiled(q, k, v, 7, 1, rpb, 0.2),
                                   [t.float() for t in tensors], grad_out.float())
    torch.testing.assert_close(out.double(), ref_out, **F32_TOL)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, **F32_TOL)


def test_empty_batch():
    """An empty batch: an empty output and zero gradients (the torch op takes the gather there)."""
    tensors, _ = _random_inputs(0, 2, 7, 8, 8, 3, True, torch.float64, seed=1)
    tensors = [t.cpu() for t in tensors]
    out, grads = _forward_backward(lambda *t: neighborhood_attention_2d(*t[:3], 3, 2, t[3], backend='torch'),
                                   tensors, torch.zeros(0, 2, 7, 8, 8, dtype=torch.float64))
    assert out.shape == (0, 2, 7, 8, 8)
    assert [g.shape for g in grads] == [t.shape for t in tensors]
    assert all(not g.any() for g in grads)


@pytest.mark.parametrize('algorithm,size,caches', [
    ('dense', (9, 11), ('_cached_dense_mask', )),
    ('tiled', (13, 11), ('_cached_tile_index', '_cached_tile_mask')),
])
def test_masks_are_built_once(monkeypatch, algorithm, size, caches):
    """na2d_dense and na2d_tiled build each mask once per geometry and dtype, not per call (the
    bias index table serves every dtype, the additive mask does not); a first call under
    inference mode does not poison the cache for training; the cached masks still give the
    gather's output and gradients."""
    for cache in caches:
        getattr(reference_module, cache).cache_clear()
    builds = []
    build = reference_module._build_dense_mask
    monkeypatch.setattr(reference_module, '_build_dense_mask', lambda *a: builds.append(a[3]) or build(*a))
    tensors, grad_out = _random_inputs(1, 2, *size, 8, 3, True, torch.float64, seed=4)
    tensors, grad_out = [t.cpu() for t in tensors], grad_out.cpu()

    def masked(q, k, v, rpb):
        if algorithm == 'dense':
            return na2d_dense(q, k, v, 3, 2, rpb, 0.3)
        return na2d_tiled(q, k, v, 3, 2, rpb, 0.3, tile=4)

    with torch.inference_mode():
        masked(*tensors)
        masked(*tensors[:3], None)
    for _ in range(2):
        out, grads = _forward_backward(masked, tensors, grad_out)
        _forward_backward(masked, tensors[:3] + [None], grad_out)
    assert builds == [None, torch.float64]          # the bias index table, then the additive mask
    masked(*[t.float() for t in tensors])
    masked(*[t.float() for t in tensors[:3]], None)
    assert builds == [None, torch.float64, torch.float32]
    if algorithm == 'tiled':
        assert reference_module._cached_tile_index.cache_info().misses == 1
    ref_out, ref_grads = _forward_backward(lambda q, k, v, rpb: na2d_reference(q, k, v, 3, 2, rpb, 0.3),
                                           tensors, grad_out)
    torch.testing.assert_close(out, ref_out, **F64_TOL)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, **F64_TOL)


@pytest.mark.parametrize('with_rpb', [True, False])
def test_dense_masks_are_built_in_the_graph_when_traced(with_rpb):
    """Fake tensors (torch.compile, export) and torch.jit.trace (TorchScript ONNX) build the mask inside
    the graph: no cached real tensor enters it, no quadratic constant is stored."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    reference_module._cached_dense_mask.cache_clear()
    tensors, _ = _random_inputs(1, 2, 9, 11, 8, 3, with_rpb, torch.float64, seed=6)
    tensors = [None if t is None else t.cpu() for t in tensors]
    inputs = [t for t in tensors if t is not None]

    def dense(q, k, v, rpb=None):
        return na2d_dense(q, k, v, 3, 2, rpb, 0.3)

    with FakeTensorMode() as mode:
        assert dense(*[mode.from_tensor(t) for t in inputs]).shape == tensors[0].shape
    traced = torch.jit.trace(dense, inputs, check_trace=False)  # the check would run it untraced
    assert reference_module._cached_dense_mask.cache_info().currsize == 0
    constants = [node.output().toIValue() for node in traced.graph.findAllNodes('prim::Constant')]
    sizes = [c.numel() for c in constants if isinstance(c, torch.Tensor)]
    assert max(sizes, default=0) < 9 * 11 * 9 * 11  # the (Nq, k*k) window indices at most, not an (Nq, Nk) mask
    torch.testing.assert_close(traced(*inputs), na2d_reference(*tensors[:3], 3, 2, tensors[3], 0.3), **F64_TOL)


@pytest.mark.parametrize('backend', ['torch', pytest.param('triton', marks=needs_kernels)])
def test_queries_at_the_top_left_corner(backend):
    """q covering the top-left Hq x Wq corner = the full op cropped, gradients included."""
    tensors, grad_out = _random_inputs(1, 2, 10, 9, 16, 3, True, torch.float64, seed=5)
    full_out, full_grads = _forward_backward(
        lambda *t: neighborhood_attention_2d(*t[:3], 3, 3, t[3], backend='torch'),
        tensors, F.pad(grad_out[:, :, :4, :7], (0, 0, 0, 2, 0, 6)))
    out, grads = _forward_backward(
        lambda *t: neighborhood_attention_2d(t[0][:, :, :4, :7], *t[1:3], 3, 3, t[3], backend=backend),
        tensors, grad_out[:, :, :4, :7])
    torch.testing.assert_close(out, full_out[:, :, :4, :7], **F64_TOL)
    for got, want in zip(grads, full_grads):
        torch.testing.assert_close(got, want, **F64_TOL)


@needs_kernels
@pytest.mark.parametrize('dtype,atol', [(torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_triton_half_precision(dtype, atol):
    """fp16/bf16 in, fp32 accumulation, output and grads (rpb included) back in the input dtype."""
    tensors, grad_out = _random_inputs(1, 2, 7, 8, 16, 3, True, torch.float64, seed=11)
    ref_out, ref_grads = _forward_backward(lambda *t: na2d_reference(*t[:3], 3, 2, t[3], 0.25),
                                           tensors, grad_out)
    out, grads = _forward_backward(
        lambda *t: neighborhood_attention_2d(*t[:3], 3, 2, t[3], 0.25, backend='triton'),
        [t.to(dtype) for t in tensors], grad_out.to(dtype))
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    torch.testing.assert_close(out.double(), ref_out, atol=atol, rtol=atol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, atol=8 * atol, rtol=8 * atol)


@needs_kernels
def test_triton_errors(monkeypatch):
    from mmsparse.ops.na2d.triton_kernels import na2d_triton
    q = torch.randn(1, 1, 6, 6, 16, device=DEVICE)
    with pytest.raises(TypeError, match='k.dtype'):
        na2d_triton(q, q.double(), q, 3, 1, None, 1.0)
    with pytest.raises(TypeError, match='q.dtype=torch.int64'):
        na2d_triton(*(torch.zeros(1, 1, 6, 6, 16, dtype=torch.long, device=DEVICE), ) * 3, 3, 1, None, 1.0)
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    with pytest.raises(RuntimeError, match=r'^q: .*CUDA.*cpu'):
        na2d_triton(q.cpu(), q.cpu(), q.cpu(), 3, 1, None, 1.0)


# ----------------------------------------------------------------------------- dispatch and errors

@needs_triton
def test_dispatch_priority(monkeypatch):
    calls = []
    from mmsparse.ops.na2d import triton_kernels
    # Fresh outputs: a custom op may not return its input.
    monkeypatch.setattr(na2d_pkg, 'na2d_torch', lambda q, *a: calls.append('torch') or q.clone())
    monkeypatch.setattr(triton_kernels, 'na2d_triton', lambda q, *a: calls.append('triton') or q.clone())
    x = torch.randn(1, 1, 3, 3, 8)
    neighborhood_attention_2d(x, x, x, 3)                      # auto on CPU -> reference
    monkeypatch.setenv(ENV_VAR, 'triton')                      # env beats the device default
    neighborhood_attention_2d(x, x, x, 3)
    neighborhood_attention_2d(x, x, x, 3, backend='torch')     # the argument beats the env var
    assert calls == ['torch', 'triton', 'torch']


@pytest.mark.parametrize('kwargs,match', [
    (dict(kernel_size=4), 'kernel_size=4'),
    (dict(kernel_size=1), 'kernel_size=1'),
    (dict(dilation=0), 'dilation=0'),
    (dict(dilation=2), r'5x7 .* 3 \* 2 = 6'),                  # map smaller than k*d
    (dict(rpb=torch.zeros(2, 3, 3)), r'rpb.shape=\(2, 3, 3\)'),
    (dict(k=torch.zeros(1, 2, 5, 6, 8)), 'same shape'),
    (dict(q=torch.zeros(1, 2, 6, 7, 8)), r'Hq <= H'),              # more queries than keys
])
def test_bad_arguments_raise(kwargs, match):
    x = torch.zeros(1, 2, 5, 7, 8)
    args = dict(q=x, k=x, v=x, kernel_size=3)
    args.update(kwargs)
    for backend in ('torch', 'triton') if triton_available() else ('torch', ):
        with pytest.raises(ValueError, match=match):
            neighborhood_attention_2d(**args, backend=backend)


def test_ops_import_without_mmengine():
    code = ("import sys; sys.modules['mmengine'] = None; sys.modules['mmcv'] = None; "
            "from mmsparse.ops import neighborhood_attention_2d; import mmsparse.ops.na2d.triton_kernels")
    subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, check=True)
