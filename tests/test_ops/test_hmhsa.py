"""H-MHSA ops: padded/masked windows and partial pooling cells vs dense oracles, and dispatch.

The oracles follow docs/design.md ("H-MHSA at any input size"): local attention is dense attention over
all ``H*W`` tokens with the mask ``same_window(i, j)``, and pooling is an averaging
matrix over the valid pixels of each cell. They never pad, so they test that the
padding of :func:`grid_attention` has no effect. Tolerances: float64 1e-12 (observed
~1e-15); SDPA vs reference in float32 1e-5.
"""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import mmsparse.ops.hmhsa as hmhsa_pkg
from mmsparse.ops import cell_average_pool, global_attention, grid_attention
from mmsparse.ops._dispatch import ENV_VAR
from mmsparse.ops.hmhsa import reference

BACKENDS = ('torch', 'triton')   # 'triton' = the SDPA fast path for H-MHSA
# (H, W, G, r): padded windows in one or both directions, a map smaller than one window,
# exact multiples.
SIZES = [(13, 22, 7, 4), (17, 9, 8, 8), (14, 15, 7, 2), (5, 3, 8, 8), (8, 12, 4, 2)]


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def tokens(x, num_heads):
    """(B, C, H, W) -> (B, heads, H*W, d)."""
    b, c, h, w = x.shape
    return x.reshape(b, num_heads, c // num_heads, h * w).transpose(-1, -2)


def oracle_grid_attention(q, k, v, num_heads, grid_size):
    """Dense attention over all tokens, restricted to pairs in the same G x G window."""
    b, c, h, w = q.shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    window = (ys // grid_size * w + xs // grid_size).flatten()
    same_window = window[:, None] == window[None, :]
    scale = (c // num_heads)**-0.5
    logits = (tokens(q, num_heads) * scale) @ tokens(k, num_heads).transpose(-1, -2)
    out = logits.masked_fill(~same_window, float('-inf')).softmax(-1) @ tokens(v, num_heads)
    return out.transpose(-1, -2).reshape(b, c, h, w)


def pooling_matrix(h, w, r, dtype=torch.float64):
    """(ceil(h/r)*ceil(w/r), h*w): row c is 1/|cell c| on the pixels of cell c."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    cell = (ys // r * math.ceil(w / r) + xs // r).flatten()
    member = (cell[None, :] == torch.arange(math.ceil(h / r) * math.ceil(w / r))[:, None]).to(dtype)
    return member / member.sum(1, keepdim=True)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('h,w,g,r', SIZES)
def test_grid_attention_matches_dense_oracle(backend, h, w, g, r):
    q, k, v = (randn(2, 12, h, w, seed=s) for s in range(3))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = grid_attention(*leaves, num_heads=3, grid_size=g, backend=backend)
    oracle_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    expected = oracle_grid_attention(*oracle_leaves, 3, g)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)
    grad_out = randn(2, 12, h, w, seed=9)
    out.backward(grad_out)
    expected.backward(grad_out)
    for name, got, want in zip('qkv', leaves, oracle_leaves):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-12, rtol=1e-10, msg=lambda m, n=name: f'd{n}: {m}')


@pytest.mark.parametrize('h,w,g,r', SIZES)
def test_cell_average_pool_matches_averaging_matrix(h, w, g, r):
    x = randn(2, 5, h, w)
    pooled = cell_average_pool(x, r)
    assert pooled.shape == (2, 5, math.ceil(h / r), math.ceil(w / r))
    expected = (x.flatten(2) @ pooling_matrix(h, w, r).T).reshape(pooled.shape)
    torch.testing.assert_close(pooled, expected, atol=1e-13, rtol=1e-12)
    if h % r == 0 and w % r == 0:   # the official AvgPool2d(r, r) where r divides
        torch.testing.assert_close(pooled, torch.nn.AvgPool2d(r, r)(x), atol=0, rtol=0)
    assert cell_average_pool(x, 1) is x


@pytest.mark.parametrize('backend', BACKENDS)
def test_global_attention_matches_oracle(backend):
    q, k, v = randn(2, 16, 6, 7, seed=0), randn(2, 16, 2, 3, seed=1), randn(2, 16, 2, 3, seed=2)
    out = global_attention(q, k, v, num_heads=4, scale=0.3, backend=backend)
    qt, kt, vt = (tokens(t, 4) for t in (q, k, v))
    weights = torch.einsum('bhqd,bhkd->bhqk', qt * 0.3, kt).softmax(-1)
    expected = torch.einsum('bhqk,bhkd->bhqd', weights, vt).transpose(-1, -2).reshape(2, 16, 6, 7)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize('h,w,g', [(13, 22, 7), (17, 9, 8)])
def test_padding_content_has_no_effect(monkeypatch, h, w, g):
    """Fill the internal padding with large garbage instead of zeros: the output is unchanged."""
    q, k, v = (randn(1, 8, h, w, seed=s) for s in range(3))
    clean = grid_attention(q, k, v, num_heads=2, grid_size=g, backend='torch')

    def garbage_pad(x, pad):
        padded = F.pad(x, pad)
        garbage = 1e3 * randn(*padded.shape, seed=7)
        keep = torch.zeros_like(padded, dtype=torch.bool)
        keep[..., :x.shape[-2], :x.shape[-1]] = True
        return torch.where(keep, padded, garbage)

    monkeypatch.setattr(reference, 'F', SimpleNamespace(pad=garbage_pad))
    for backend in BACKENDS:
        dirty = grid_attention(q, k, v, num_heads=2, grid_size=g, backend=backend)
        torch.testing.assert_close(dirty, clean, atol=1e-12, rtol=1e-10)


def test_embedded_in_garbage_canvas():
    """Content at its own size vs the same content in a larger garbage canvas.

    Windows that lie wholly inside the content see the same tokens in both runs and
    must agree; border windows of the small map see only its valid tokens, so they
    differ from the canvas run, which attends to the garbage as real tokens.
    """
    h, w, g = 13, 22, 7
    q, k, v = (randn(1, 8, h, w, seed=s) for s in range(3))
    canvas = [100 * randn(1, 8, 21, 28, seed=10 + s) for s in range(3)]
    for big, small in zip(canvas, (q, k, v)):
        big[..., :h, :w] = small
    for backend in BACKENDS:
        own = grid_attention(q, k, v, num_heads=2, grid_size=g, backend=backend)
        embedded = grid_attention(*canvas, num_heads=2, grid_size=g, backend=backend)[..., :h, :w]
        full_h, full_w = h // g * g, w // g * g
        torch.testing.assert_close(own[..., :full_h, :full_w], embedded[..., :full_h, :full_w],
                                   atol=1e-12, rtol=1e-10)
        assert not torch.allclose(own[..., full_h:, :], embedded[..., full_h:, :])


def test_sdpa_matches_reference_float32():
    q, k, v = (randn(2, 16, 19, 11, seed=s, dtype=torch.float32) for s in range(3))
    ref = grid_attention(q, k, v, 2, 8, backend='torch')
    fast = grid_attention(q, k, v, 2, 8, backend='triton')
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('h,w,g', [(16, 16, 8), (13, 22, 7)])
def test_sdpa_path_runs_on_fused_kernels_only(h, w, g):
    """Both steps must reach a fused kernel: with the math fallback disabled, SDPA raises
    "No available kernel" unless q/k/v have a unit stride on the head dim."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q, k, v = (randn(1, 16, h, w, seed=s, dtype=torch.float32) for s in range(3))
    pooled_k, pooled_v = cell_average_pool(k, 4), cell_average_pool(v, 4)
    expected = (grid_attention(q, k, v, 2, g, backend='torch'),
                global_attention(q, pooled_k, pooled_v, 2, backend='torch'))
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        fused = (grid_attention(q, k, v, 2, g, backend='triton'),
                 global_attention(q, pooled_k, pooled_v, 2, backend='triton'))
    for out, ref in zip(fused, expected):
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


class _CopyCounter(TorchDispatchMode):
    """Counts the aten ops that copy tensor data (clone, contiguous copies, pad, cat, stack)."""
    COPIES = ('aten.clone.', 'aten.copy_.', 'aten.constant_pad_nd.', 'aten.cat.', 'aten.stack.')

    def __init__(self):
        super().__init__()
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func).startswith(self.COPIES):
            self.copies.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('grad', [False, True])
def test_eager_steps_copy_only_what_the_official_reshapes_copy(grad):
    """On a map that G divides, the local step copies each of q, k, v once (into windows) and
    its output once (back to the map), as the official reshapes do: no stack, no pad by zero,
    no slice whose backward fills zeros; its backward copies each gradient back once. The
    one-head global step's forward copies nothing (its output is a view of the token-major
    product)."""
    q, k, v = (randn(2, 8, 16, 16, seed=s).requires_grad_(grad) for s in range(3))
    with _CopyCounter() as local:
        out = grid_attention(q, k, v, 1, 8, backend='torch')
        if grad:
            out.backward(torch.randn_like(out))
    assert local.copies == ['aten.clone.default'] * (8 if grad else 4)
    pooled_k, pooled_v = (cell_average_pool(t.detach(), 8).requires_grad_(grad) for t in (k, v))
    with _CopyCounter() as glob:
        global_attention(q.detach().requires_grad_(grad), pooled_k, pooled_v, 1, backend='torch')
    assert glob.copies == []


# ----------------------------------------------------------------------------- dispatch

@pytest.fixture
def spies(monkeypatch):
    calls = []

    def fake(name, real):
        def impl(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        return impl

    monkeypatch.setattr(hmhsa_pkg, 'attention_reference', fake('torch', reference.attention_reference))
    monkeypatch.setattr(hmhsa_pkg, 'attention_sdpa', fake('sdpa', hmhsa_pkg.attention_sdpa))
    return calls


def test_dispatch(spies, monkeypatch):
    x = randn(1, 4, 5, 6)
    grid_attention(x, x, x, 2, 4)                      # auto on CPU -> reference
    global_attention(x, x, x, 2, backend='triton')     # 'triton' -> the SDPA fast path
    monkeypatch.setenv(ENV_VAR, 'triton')              # env beats the device default
    grid_attention(x, x, x, 2, 4)
    grid_attention(x, x, x, 2, 4, backend='torch')     # the argument beats the env var
    assert spies == ['torch', 'sdpa', 'sdpa', 'torch']
    with pytest.raises(ValueError, match="backend='cuda'"):
        grid_attention(x, x, x, 2, 4, backend='cuda')


def test_sdpa_fast_path_does_not_need_triton(spies, monkeypatch):
    """H-MHSA's fast path is PyTorch's SDPA: asking for it must work without triton."""
    monkeypatch.setattr('mmsparse.ops._dispatch.triton_available', lambda: False)
    x = randn(1, 4, 5, 6)
    grid_attention(x, x, x, 2, 4, backend='triton')
    assert spies == ['sdpa']


@pytest.mark.parametrize('call,match', [
    (lambda x: grid_attention(x, x, x, 3, 4), 'num_heads=3'),
    (lambda x: grid_attention(x, x, x, 2, 0), 'grid_size=0'),
    (lambda x: grid_attention(x, x, x[:, :, :4], 2, 4), 'same shape'),
    (lambda x: grid_attention(x[0], x[0], x[0], 2, 4), 'NCHW'),
    (lambda x: global_attention(x, x[:, :2], x[:, :2], 2), 'share'),
    (lambda x: cell_average_pool(x, 0), 'ratio=0'),
])
def test_bad_inputs_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(randn(1, 4, 5, 6))
