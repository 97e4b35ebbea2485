"""Bi-level routing attention: the torch backend's SDPA algorithm and the Triton kernels vs
the PyTorch reference, and dispatch.

Without a GPU the Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``, set
by ``tests/test_ops/kernels.py`` before triton is imported; if triton was already imported
in compiled mode, the kernel tests skip and say so). With CUDA the same tests run the
compiled kernels on the GPU.

The interpreter is slow, so the shapes are tiny; they are picked to cover odd
region sizes (3x5, 1x1, 4x3, 5x5, 1x2), single and full top-k, 1-4 heads, head
dims 8/16/24/32, a value head dim that differs from the qk head dim, and several
query/key blocks per region.
"""
import pytest
import torch

# Imported first: it sets TRITON_INTERPRET=1 (no GPU) before anything can import triton.
from .kernels import DEVICE, needs_kernels, needs_triton
import mmsparse.ops.bra as bra_pkg
from mmsparse.ops import bi_level_routing_attention
from mmsparse.ops._dispatch import ENV_VAR, resolve_backend, triton_available
from mmsparse.ops.bra import bra_attention_reference, bra_attention_sdpa, route_regions


def _qkv_views(n, n_win, region, heads, d_qk, d_v, dtype=torch.float32, seed=0):
    """A fused (N, H, W, 2*Cqk + Cv) tensor; ``_run`` slices q/k/v from it (non-contiguous)."""
    gen = torch.Generator().manual_seed(seed)
    height, width = n_win * region[0], n_win * region[1]
    c_qk, c_v = heads * d_qk, heads * d_v
    qkv = torch.randn(n, height, width, 2 * c_qk + c_v, generator=gen, dtype=dtype)
    return qkv.to(DEVICE), (c_qk, c_v)


def _run(backend, qkv, c_qk, heads, n_win, topk, grad_out):
    leaf = qkv.detach().clone().requires_grad_()
    q, k, v = leaf[..., :c_qk], leaf[..., c_qk:2 * c_qk], leaf[..., 2 * c_qk:]
    out, region_index = bi_level_routing_attention(q, k, v, heads, n_win, topk,
                                                   return_routing=True, backend=backend)
    q.retain_grad(), k.retain_grad(), v.retain_grad()
    out.backward(grad_out)
    return out.detach(), region_index, (q.grad, k.grad, v.grad)


# (batch, n_win, region (h, w), heads, Dqk, Dv, topk, block cap or None)
CASES = [
    (1, 2, (3, 5), 2, 8, 8, 1, None),       # odd 15-token region, topk 1
    (2, 3, (1, 1), 1, 16, 16, 9, None),     # 1x1 regions, topk = n_win**2, batch 2
    (1, 4, (4, 3), 1, 8, 8, 5, None),       # 4x3 regions, n_win 4
    (1, 2, (2, 2), 4, 8, 8, 4, None),       # 4 heads, full top-k
    (2, 2, (3, 5), 3, 32, 16, 2, None),     # Dv != Dqk, 3 heads
    (1, 2, (5, 5), 2, 16, 8, 3, 16),        # 25 tokens, 16-blocks: 2 query blocks, straddling key blocks
    (1, 3, (1, 2), 2, 8, 24, 7, 16),        # Dv 24 (padded to 32), keys straddle 1x2 regions
    (1, 4, (3, 5), 1, 16, 16, 16, 32),      # topk 16 = n_win**2: 240 keys in 8 blocks
]


@needs_kernels
@pytest.mark.parametrize('n,n_win,region,heads,d_qk,d_v,topk,cap', CASES)
def test_triton_matches_reference(monkeypatch, n, n_win, region, heads, d_qk, d_v, topk, cap):
    from mmsparse.ops.bra import triton_kernels
    monkeypatch.setattr(triton_kernels, '_BLOCK_CAP', cap)
    qkv, (c_qk, c_v) = _qkv_views(n, n_win, region, heads, d_qk, d_v, seed=n_win * 100 + topk)
    grad_out = torch.randn(qkv.shape[:3] + (c_v,), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    ref_out, ref_idx, ref_grads = _run('torch', qkv, c_qk, heads, n_win, topk, grad_out)
    tri_out, tri_idx, tri_grads = _run('triton', qkv, c_qk, heads, n_win, topk, grad_out)
    assert torch.equal(ref_idx, tri_idx)
    torch.testing.assert_close(tri_out, ref_out, atol=1e-4, rtol=1e-4)
    for name, got, want in zip(('dq', 'dk', 'dv'), tri_grads, ref_grads):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3, msg=lambda m, name=name: f'{name}: {m}')


@pytest.mark.parametrize('n,n_win,region,heads,d_qk,d_v,topk,cap', CASES)
def test_sdpa_algorithm_matches_reference(n, n_win, region, heads, d_qk, d_v, topk, cap):
    """The torch backend's fused SDPA over the routed regions = the explicit matmul-softmax
    (float64, strided q/k/v views of one fused tensor): output and gradients."""
    qkv, (c_qk, _) = _qkv_views(n, n_win, region, heads, d_qk, d_v, dtype=torch.float64)
    grad_out = torch.randn(qkv.shape[:3] + (heads * d_v, ), generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64).to(DEVICE)
    scale = c_qk ** -0.5
    region_index = route_regions(qkv[..., :c_qk], qkv[..., c_qk:2 * c_qk], n_win, topk, scale)
    results = []
    for fn in (bra_attention_reference, bra_attention_sdpa):
        leaf = qkv.detach().clone().requires_grad_()
        out = fn(leaf[..., :c_qk], leaf[..., c_qk:2 * c_qk], leaf[..., 2 * c_qk:], region_index, heads, n_win, scale)
        out.backward(grad_out)
        results.append((out.detach(), leaf.grad))
    torch.testing.assert_close(results[1], results[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize('shape,c_qk', [((0, 4, 4, 8), 8), ((1, 4, 4, 8), 0)])
def test_sdpa_algorithm_on_empty_batch_and_zero_width_heads(shape, c_qk):
    """An empty batch, and q/k with no channels (uniform attention over the routed keys): as the reference."""
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(shape, generator=gen, dtype=torch.float64)
    qk = torch.randn(shape[:3] + (c_qk, ), generator=gen, dtype=torch.float64)
    region_index = torch.tensor([[1, 0], [2, 3], [3, 0], [0, 1]]).expand(shape[0], -1, -1)
    results = []
    for fn in (bra_attention_reference, bra_attention_sdpa):
        leaves = [t.clone().requires_grad_() for t in (qk, qk, v)]
        out = fn(*leaves, region_index, 2, 2, 0.5)
        out.backward(torch.ones_like(out))
        results.append((out.detach(), [t.grad for t in leaves]))
    torch.testing.assert_close(results[1], results[0], atol=1e-12, rtol=0)


@needs_kernels
def test_triton_direct_call_strided_inputs_and_grad():
    """Direct call with separately strided q/k/v (a permuted view) and a non-contiguous dO."""
    from mmsparse.ops.bra.triton_kernels import bra_attention_triton
    gen = torch.Generator().manual_seed(3)
    n_win, heads, scale = 2, 2, 0.3
    q = torch.randn(1, 6, 4, 16, generator=gen).to(DEVICE)
    k = torch.randn(1, 4, 6, 16, generator=gen).to(DEVICE).transpose(1, 2)   # (1, 6, 4, 16), strided
    v = torch.randn(1, 6, 4, 48, generator=gen).to(DEVICE)[..., ::3]        # channel stride 3
    region_index = route_regions(q, k, n_win, 2, scale)
    grad_out = torch.randn(1, 4, 6, 16, generator=gen).to(DEVICE).transpose(1, 2)
    results = []
    for fn in (bra_attention_reference, bra_attention_triton):
        leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, region_index, heads, n_win, scale)
        out.backward(grad_out)
        results.append((out.detach(), [t.grad for t in leaves]))
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-4, rtol=1e-4)
    for got, want in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


@needs_kernels
@pytest.mark.parametrize('dtype,atol', [(torch.float64, 1e-10), (torch.float16, 5e-3),
                                        (torch.bfloat16, 3e-2)])
def test_triton_dtypes(dtype, atol):
    """fp64 end to end; fp16/bf16 in, fp32 accumulation, grads back in the input dtype."""
    from mmsparse.ops.bra.triton_kernels import bra_attention_triton
    gen = torch.Generator().manual_seed(5)
    n_win, heads, scale = 2, 2, 16 ** -0.5
    q, k, v = (torch.randn(1, 6, 10, 16, generator=gen, dtype=torch.float64).to(DEVICE) for _ in range(3))
    region_index = route_regions(q, k, n_win, 3, scale)
    grad_out = torch.randn(1, 6, 10, 16, generator=gen, dtype=torch.float64).to(DEVICE)
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_out = bra_attention_reference(*ref, region_index, heads, n_win, scale)
    ref_out.backward(grad_out)
    low = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    out = bra_attention_triton(*low, region_index, heads, n_win, scale)
    out.backward(grad_out.to(dtype))
    assert out.dtype == dtype and all(t.grad.dtype == dtype for t in low)
    torch.testing.assert_close(out.double(), ref_out.detach(), atol=atol, rtol=atol)
    for got, want in zip(low, ref):
        torch.testing.assert_close(got.grad.double(), want.grad, atol=4 * atol, rtol=4 * atol)


@needs_kernels
def test_triton_errors(monkeypatch):
    from mmsparse.ops.bra.triton_kernels import bra_attention_triton
    q = torch.randn(1, 4, 4, 8, device=DEVICE)
    idx = route_regions(q, q, 2, 2, 1.0)
    with pytest.raises(ValueError, match='region_index'):
        bra_attention_triton(q, q, q, idx[:, :3], 2, 2, 1.0)
    with pytest.raises(TypeError, match='k.dtype'):
        bra_attention_triton(q, q.double(), q, idx, 2, 2, 1.0)
    with pytest.raises(ValueError, match='num_heads=3'):
        bra_attention_triton(q, q, q, idx, 3, 2, 1.0)
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    q, idx = q.cpu(), idx.cpu()
    with pytest.raises(RuntimeError, match=r'^q: .*CUDA.*cpu'):
        bra_attention_triton(q, q, q, idx, 2, 2, 1.0)


# ----------------------------------------------------------------------------- dispatch

@pytest.fixture
def spies(monkeypatch):
    """Record which implementation bi_level_routing_attention calls (both stubbed)."""
    calls = []

    def fake(name):
        def impl(q, k, v, region_index, num_heads, n_win, scale):
            calls.append(name)
            return v.new_zeros(v.shape)
        return impl

    from mmsparse.ops.bra import triton_kernels
    monkeypatch.setattr(bra_pkg, 'bra_attention_sdpa', fake('torch'))
    monkeypatch.setattr(triton_kernels, 'bra_attention_triton', fake('triton'))
    monkeypatch.delenv(ENV_VAR, raising=False)
    return calls


def _call(backend=None, shape=(1, 4, 4, 8), n_win=2, topk=2, num_heads=2):
    x = torch.randn(*shape)
    return bi_level_routing_attention(x, x, x, num_heads, n_win, topk, backend=backend)


@needs_triton
def test_dispatch_priority(spies, monkeypatch):
    _call()                                     # auto on CPU -> reference
    _call(backend='auto')
    monkeypatch.setenv(ENV_VAR, 'triton')       # env beats the device default
    _call()
    _call(backend='torch')                      # the argument beats the env var
    monkeypatch.setenv(ENV_VAR, ' Torch ')      # env is trimmed and case-insensitive
    _call()
    _call(backend='triton')
    monkeypatch.setenv(ENV_VAR, '')             # empty means auto
    _call()
    assert spies == ['torch', 'torch', 'triton', 'torch', 'torch', 'triton', 'torch']


def test_dispatch_resolve_backend_rules(monkeypatch):
    cpu = torch.zeros(1)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend(None, cpu) == 'torch'
    assert resolve_backend('auto', cpu) == 'torch'
    assert resolve_backend('torch', cpu) == 'torch'
    monkeypatch.setenv(ENV_VAR, 'torch')
    assert resolve_backend('auto', cpu) == 'torch'
    if triton_available():
        assert resolve_backend('triton', cpu) == 'triton'
        monkeypatch.setenv(ENV_VAR, 'triton')
        assert resolve_backend(None, cpu) == 'triton'


def test_dispatch_invalid_values(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ValueError, match="backend='cuda'"):
        _call(backend='cuda')
    monkeypatch.setenv(ENV_VAR, 'bogus')
    with pytest.raises(ValueError, match=f"{ENV_VAR}='bogus'"):
        _call()


@pytest.mark.parametrize('kwargs,match', [
    (dict(shape=(1, 5, 4, 8)), 'n_win=2'),                    # H not divisible by n_win
    (dict(shape=(1, 4, 6, 8), n_win=4), 'n_win=4'),           # W not divisible by n_win
    (dict(topk=5), 'topk=5'),                                 # topk > n_win**2
    (dict(topk=0), 'topk=0'),
    (dict(num_heads=3), 'num_heads=3'),                       # heads not dividing C
    (dict(shape=(4, 4, 8)), 'NHWC'),
])
def test_bad_shapes_raise(monkeypatch, kwargs, match):
    monkeypatch.delenv(ENV_VAR, raising=False)
    for backend in ('torch', 'triton') if triton_available() else ('torch',):
        with pytest.raises(ValueError, match=match):
            _call(backend=backend, **kwargs)
