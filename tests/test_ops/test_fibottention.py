"""Fibottention op: offsets and masks vs the official fixtures, both torch algorithms (gather
and dense masked) vs naive dense masking and the official op fixture, Triton kernels vs the
reference (outputs and all gradients, both modes), dispatch.

Without a GPU the Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``, set by
``tests/test_ops/kernels.py`` before triton is imported), so the kernel shapes are tiny; they
cover odd grids, 1-D and 2-D layouts, with and without CLS, several query blocks, a head dim
that is not a power of two, rows with no kept key, and q/k/v sliced from one fused tensor
(non-contiguous).
"""
import pytest
import torch

# Imported first: it sets TRITON_INTERPRET=1 (no GPU) before anything can import triton.
from .kernels import DEVICE, needs_kernels
from mmsparse.ops import fibottention_attention
from mmsparse.ops._dispatch import DENSE_BELOW_TOKENS, ENV_VAR
from mmsparse.ops.fibottention import (fibonacci_offsets, fibottention_dense, fibottention_mask,
                                       fibottention_pattern, fibottention_reference, head_permutation)


# ----------------------------------------------------------------------------- patterns

def test_masks_match_official(load_official):
    fixture = load_official('fibottention_mask.pt')
    for name, entry in fixture['masks'].items():
        n_patch, heads, layer = entry['N_total'] - 1, entry['num_heads'], entry['depth_id']
        assert head_permutation(heads, layer) == entry['perm'], name
        offsets = fibonacci_offsets(n_patch, heads, layer, is_modified=entry['is_modified'])
        assert offsets == entry['offsets_per_head'], name
        assert fibonacci_offsets(n_patch, heads, layer, shuffle='none',
                                 is_modified=entry['is_modified']) == entry['offsets_unshuffled'], name
        mask = fibottention_mask(fibottention_pattern((1, n_patch), heads, layer,
                                                      is_modified=entry['is_modified']))
        assert torch.equal(mask, entry['mask']), name
        assert mask[:, 0, :].all() and mask[:, :, 0].all(), name
        assert torch.equal(mask, mask.transpose(-1, -2)), name
    for name, perm in fixture['shuffle_perms'].items():
        heads, layer = (int(s) for s in name[1:].split('_layer'))
        assert head_permutation(heads, layer) == perm, name


def test_worked_example_vit_b():
    """ViT-B/16 at 224 keeps 1.99% of the patch block (configs/fibottention/README.md), heads disjoint."""
    offsets = fibonacci_offsets(196, 12, 0)
    assert offsets[0] == [4, 7] and offsets[9] == [1, 2, 3, 5] and offsets[10] == [30, 49]
    flat = [d for run in offsets for d in run]
    assert len(flat) == len(set(flat))                  # disjoint offset sets across heads
    mask = fibottention_mask(fibottention_pattern((14, 14), 12, 0))
    assert mask.shape == (12, 197, 197)
    assert mask[:, 1:, 1:].float().mean().item() == pytest.approx(0.0199, abs=5e-5)
    assert mask.float().mean().item() == pytest.approx(0.0299, abs=5e-5)
    assert fibonacci_offsets(1024, 12, 0, shuffle='none')[11] == [30, 49, 79, 128, 207, 335]


def test_global_rng_untouched():
    state = __import__('random').getstate()
    fibonacci_offsets(196, 12, 3)
    assert __import__('random').getstate() == state


def test_2d_layout_axial_without_wrap():
    pattern = fibottention_pattern((5, 7), 3, 1, layout='2d')
    assert pattern.grid == (5, 7)
    mask = fibottention_mask(pattern, with_cls=False)
    kept = mask.nonzero()
    qy, qx, ky, kx = kept[:, 1] // 7, kept[:, 1] % 7, kept[:, 2] // 7, kept[:, 2] % 7
    assert ((qy == ky) | (qx == kx)).all()               # axial: same row or same column
    assert torch.equal(mask, mask.transpose(-1, -2))
    # The 1-D layout of the same grid is the official flattened pattern.
    one_d = fibottention_pattern((5, 7), 3, 1)
    assert one_d.grid == (1, 35)
    assert torch.equal(fibottention_mask(one_d), fibottention_mask(fibottention_pattern((1, 35), 3, 1)))


@pytest.mark.parametrize('kwargs, match', [
    (dict(shuffle='random'), 'shuffle'),
    (dict(layout='3d'), 'layout'),
])
def test_pattern_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fibottention_pattern((4, 4), 3, 0, **kwargs)


# ----------------------------------------------------------------------- reference op

def _naive(q, k, v, mask, scale, mode):
    """Dense softmax with the official multiplicative mask or -inf masking (O(T^2))."""
    logits = (q * scale) @ k.transpose(-1, -2)
    logits = logits * mask if mode == 'official' else logits.masked_fill(~mask, float('-inf'))
    empty = ~mask.any(-1, keepdim=True) & (mode == 'sparse')   # zero-logit rows are never empty
    probs = logits.masked_fill(empty, 0.).softmax(-1).masked_fill(empty, 0.)
    return probs @ v


# (grid, heads, layout, with_cls) of the comparisons with naive masking
NAIVE_CASES = [
    ((1, 49), 12, '1d', False),     # head 12 keeps only offset 30: rows 19..29 are empty
    ((7, 9), 3, '1d', True),
    ((6, 5), 2, '2d', True),
    ((6, 5), 2, '2d', False),
]


@pytest.mark.parametrize('mode', ['sparse', 'official'])
@pytest.mark.parametrize('grid, heads, layout, with_cls', NAIVE_CASES)
def test_reference_matches_naive_masking(mode, grid, heads, layout, with_cls):
    pattern = fibottention_pattern(grid, heads, 2, layout=layout)
    mask = fibottention_mask(pattern, with_cls=with_cls)
    tokens = mask.shape[-1]
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, tokens, 4, generator=gen, dtype=torch.float64) * 2 for _ in range(3))
    grad = torch.randn(2, heads, tokens, 4, generator=gen, dtype=torch.float64)
    results = []
    index, valid = pattern.neighbours()
    dense_mask = pattern.dense_mask(mode, with_cls, q.dtype)
    for fn in (lambda *a: fibottention_reference(*a, pattern, 0.5, mode, with_cls),
               lambda *a: fibottention_dense(*a, dense_mask, valid, 0.5, mode, with_cls),
               lambda *a: _naive(*a, mask, 0.5, mode)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves)
        out.backward(grad)
        results.append([out.detach()] + [t.grad for t in leaves])
    for result in results[:2]:   # the gather and the dense algorithm
        for got, expected in zip(result, results[2]):
            assert torch.isfinite(got).all()
            torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)


def _op_fixture_check(fixture, backend):
    q, k, v = (fixture[n].clone().requires_grad_() for n in 'qkv')
    pattern = fibottention_pattern((1, 49), 3, fixture['config']['depth_id'])
    assert torch.equal(fibottention_mask(pattern), fixture['mask'])
    out = fibottention_attention(q, k, v, pattern, scale=fixture['scale'], mode='official', backend=backend)
    tol = dict(atol=fixture['atol'], rtol=fixture['rtol'])
    torch.testing.assert_close(out, fixture['attn_out_heads'], **tol)
    out.backward(fixture['grad_attn_out_heads'])
    for name, t in zip('qkv', (q, k, v)):
        torch.testing.assert_close(t.grad, fixture[f'grad_{name}'], **tol)
    # Sparse mode is a different function: the fixture must tell them apart.
    sparse = fibottention_attention(q, k, v, pattern, scale=fixture['scale'], mode='sparse', backend=backend)
    assert (sparse - fixture['attn_out_heads']).abs().max() > 1e-2


@pytest.mark.parametrize('dense_below', [0, 10**9], ids=['gather', 'dense'])
def test_reference_reproduces_official_op(load_official, monkeypatch, dense_below):
    """Both torch algorithms (the gather one and the dense masked one) against the fixture."""
    monkeypatch.setitem(DENSE_BELOW_TOKENS, 'fibottention_attention', dense_below)
    _op_fixture_check(load_official('fibottention_attn_op.pt'), 'torch')


# ---------------------------------------------------------------------- Triton kernels

@needs_kernels
def test_triton_reproduces_official_op(load_official):
    fixture = load_official('fibottention_attn_op.pt')
    _op_fixture_check({k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in fixture.items()}, 'triton')


def _run(backend, fused, pattern, mode, with_cls, grad):
    leaf = fused.detach().clone().requires_grad_()
    q, k, v = leaf.unbind(2)           # (B, heads, 3, T, D) -> strided views, no copy
    out = fibottention_attention(q, k, v, pattern, mode=mode, with_cls=with_cls, backend=backend)
    out.backward(grad)
    return out.detach(), leaf.grad


# (batch, heads, grid, head dim, layout, with_cls, mode)
KERNEL_CASES = [
    (2, 3, (5, 7), 8, '1d', True, 'official'),
    (2, 3, (5, 7), 8, '1d', True, 'sparse'),
    (1, 2, (6, 5), 6, '2d', True, 'official'),
    (1, 2, (6, 5), 6, '2d', False, 'sparse'),
    (1, 3, (3, 50), 5, '1d', False, 'official'),     # 150 patches: 2 blocks in the interpreter
    (1, 12, (1, 49), 4, '1d', False, 'sparse'),      # empty rows -> zero output, zero grads
]


@needs_kernels
@pytest.mark.parametrize('case', KERNEL_CASES, ids=lambda c: '-'.join(map(str, c)).replace(' ', ''))
def test_triton_matches_reference(case):
    batch, heads, grid, dim, layout, with_cls, mode = case
    pattern = fibottention_pattern(grid, heads, 1, layout=layout)
    tokens = grid[0] * grid[1] + int(with_cls)
    gen = torch.Generator().manual_seed(1)
    fused = (torch.randn(batch, heads, 3, tokens, dim, generator=gen, dtype=torch.float64) * 2).to(DEVICE)
    grad = torch.randn(batch, heads, tokens, dim, generator=gen, dtype=torch.float64).to(DEVICE)
    out_t, grad_t = _run('triton', fused, pattern, mode, with_cls, grad)
    out_r, grad_r = _run('torch', fused, pattern, mode, with_cls, grad)
    assert torch.isfinite(grad_t).all()
    torch.testing.assert_close(out_t, out_r, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(grad_t, grad_r, atol=1e-12, rtol=1e-10)


@needs_kernels
@pytest.mark.parametrize('mode', ['sparse', 'official'])
def test_triton_float32(mode):
    pattern = fibottention_pattern((4, 6), 2, 0)
    gen = torch.Generator().manual_seed(2)
    fused = torch.randn(2, 2, 3, 25, 16, generator=gen).to(DEVICE)
    grad = torch.randn(2, 2, 25, 16, generator=gen).to(DEVICE)
    out_t, grad_t = _run('triton', fused, pattern, mode, True, grad)
    out_r, grad_r = _run('torch', fused.double(), pattern, mode, True, grad.double())
    assert out_t.dtype == torch.float32 and grad_t.dtype == torch.float32
    torch.testing.assert_close(out_t.double(), out_r, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grad_t.double(), grad_r, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- dispatch

@needs_kernels
def test_env_var_selects_backend_and_argument_wins(monkeypatch):
    import mmsparse.ops.fibottention.triton_kernels as kernels
    calls = []
    monkeypatch.setattr(kernels, 'fibottention_triton', lambda *a: calls.append('triton') or a[0])
    pattern = fibottention_pattern((2, 2), 1, 0)
    q = torch.randn(1, 1, 5, 4)
    monkeypatch.setenv(ENV_VAR, 'triton')
    fibottention_attention(q, q, q, pattern)
    assert calls == ['triton']
    fibottention_attention(q, q, q, pattern, backend='torch')
    assert calls == ['triton']
    monkeypatch.setenv(ENV_VAR, 'cuda')
    with pytest.raises(ValueError, match=f"{ENV_VAR}='cuda'"):
        fibottention_attention(q, q, q, pattern)


@pytest.mark.parametrize('kwargs, shape, match', [
    (dict(mode='zero'), (1, 2, 5, 4), "mode='zero'"),
    (dict(), (1, 2, 6, 4), r'q.shape\[2\]=6'),
    (dict(with_cls=False), (1, 2, 5, 4), r'q.shape\[2\]=5'),
    (dict(), (1, 3, 5, 4), r'q.shape\[1\]=3'),
])
def test_op_rejects_bad_input(kwargs, shape, match):
    pattern = fibottention_pattern((2, 2), 2, 0)
    q = torch.randn(*shape)
    with pytest.raises(ValueError, match=match):
        fibottention_attention(q, q, q, pattern, backend='torch', **kwargs)
