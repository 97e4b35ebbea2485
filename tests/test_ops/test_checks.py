"""Edge cases of every op: named argument errors, empty batches, -inf logits, strides.

Small shapes only; without a GPU the Triton kernels run in the interpreter
(``TRITON_INTERPRET=1``, set by ``tests/test_ops/kernels.py`` before triton is imported).
"""
import math

import pytest
import torch

# Imported first: it sets TRITON_INTERPRET=1 (no GPU) before anything can import triton.
from .kernels import DEVICE, KERNELS_RUNNABLE, ON_GPU, needs_kernels
from mmsparse.ops import (bi_level_routing_attention, fibottention_attention,
                          fibottention_pattern, global_attention, grid_attention,
                          neighborhood_attention_2d)
from mmsparse.ops.bra import bra_attention_reference
from mmsparse.ops.na2d import na2d_reference

BACKENDS = ('torch', 'triton') if KERNELS_RUNNABLE else ('torch', )
PATTERN = fibottention_pattern((2, 2), 2, 0)


# One call per op; ``x`` replaces q, k or v, the keyword arguments override the defaults.
def _bra(q=None, k=None, v=None, backend='torch', **kw):
    x = torch.randn(1, 4, 4, 8, device=DEVICE)
    args = dict(num_heads=2, n_win=2, topk=2)
    args.update(kw)
    return bi_level_routing_attention(x if q is None else q, x if k is None else k,
                                      x if v is None else v, backend=backend, **args)


def _na(q=None, k=None, v=None, backend='torch', **kw):
    x = torch.randn(1, 2, 5, 5, 8, device=DEVICE)
    args = dict(kernel_size=3)
    args.update(kw)
    return neighborhood_attention_2d(x if q is None else q, x if k is None else k,
                                     x if v is None else v, backend=backend, **args)


def _fib(q=None, k=None, v=None, backend='torch', **kw):
    x = torch.randn(1, 2, 5, 4, device=DEVICE)
    return fibottention_attention(x if q is None else q, x if k is None else k,
                                  x if v is None else v, PATTERN, backend=backend, **kw)


def _grid(q=None, k=None, v=None, backend='torch', **kw):
    x = torch.randn(1, 4, 4, 4, device=DEVICE)
    args = dict(num_heads=2, grid_size=2)
    args.update(kw)
    return grid_attention(x if q is None else q, x if k is None else k, x if v is None else v,
                          backend=backend, **args)


def _global(q=None, k=None, v=None, backend='torch', **kw):
    x = torch.randn(1, 4, 4, 4, device=DEVICE)
    args = dict(num_heads=2)
    args.update(kw)
    return global_attention(x if q is None else q, x if k is None else k, x if v is None else v,
                            backend=backend, **args)


OPS = {'bra': (_bra, (1, 4, 4, 8)), 'na2d': (_na, (1, 2, 5, 5, 8)), 'fib': (_fib, (1, 2, 5, 4)),
       'grid': (_grid, (1, 4, 4, 4)), 'global': (_global, (1, 4, 4, 4))}
WITH_HEADS = ('bra', 'grid', 'global')


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('op', OPS)
def test_dtype_mismatch_is_named(op, backend):
    call, shape = OPS[op]
    with pytest.raises(TypeError, match=r'k\.dtype=torch\.float64 must equal q\.dtype=torch\.float32'):
        call(k=torch.randn(shape, dtype=torch.float64, device=DEVICE), backend=backend)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('op', OPS)
@pytest.mark.parametrize('dtype', (torch.int64, torch.int32))
def test_integer_tensors_are_refused(op, backend, dtype):
    call, shape = OPS[op]
    x = torch.ones(shape, dtype=dtype, device=DEVICE)
    with pytest.raises(TypeError, match=rf'q\.dtype={dtype} is not supported; expected a floating'):
        call(x, x, x, backend=backend)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('op', WITH_HEADS)
@pytest.mark.parametrize('value', (2.0, True, '2'))
def test_num_heads_must_be_an_int(op, backend, value):
    with pytest.raises(TypeError, match=f'num_heads={value!r} must be a positive int'):
        OPS[op][0](num_heads=value, backend=backend)


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('op', OPS)
@pytest.mark.parametrize('value', (float('nan'), float('inf'), 0.0, -0.5))
def test_scale_must_be_finite_positive(op, backend, value):
    with pytest.raises(ValueError, match=f'scale={value!r} must be a finite positive float or None'):
        OPS[op][0](scale=value, backend=backend)


@pytest.mark.parametrize('op', OPS)
def test_scale_of_wrong_type(op):
    with pytest.raises(TypeError, match="scale='0.5' must be a finite positive float"):
        OPS[op][0](scale='0.5')


@pytest.mark.parametrize('backend', BACKENDS)
@pytest.mark.parametrize('value,error', [(2.5, TypeError), (0, ValueError), (5, ValueError)])
def test_bra_topk(backend, value, error):
    with pytest.raises(error, match=f'topk={value!r}'):
        _bra(topk=value, backend=backend)


def test_bra_validates_before_routing(monkeypatch):
    import mmsparse.ops.bra as bra_pkg
    monkeypatch.setattr(bra_pkg, 'route_regions', lambda *a: pytest.fail('routing ran first'))
    with pytest.raises(TypeError, match='k.dtype'):
        _bra(k=torch.randn(1, 4, 4, 8, dtype=torch.float64, device=DEVICE))


@needs_kernels
@pytest.mark.skipif(ON_GPU, reason='meta refusal under the interpreter')
@pytest.mark.parametrize('op', ('bra', 'na2d', 'fib'))
def test_meta_tensors_are_refused_by_triton(op):
    call, shape = OPS[op]
    x = torch.empty(shape, device='meta')
    with pytest.raises(ValueError, match='q is on the meta device; the triton backend needs CUDA'):
        call(x, x, x, backend='triton')


# ----------------------------------------------------------------------------- empty batch

@pytest.mark.parametrize('backend', BACKENDS)
def test_bra_empty_batch(backend):
    q, k, v = (torch.randn(0, 8, 8, c, device=DEVICE, requires_grad=True) for c in (16, 16, 8))
    out, idx = bi_level_routing_attention(q, k, v, 2, 2, 3, return_routing=True, backend=backend)
    assert out.shape == (0, 8, 8, 8) and idx.shape == (0, 4, 3)
    out.sum().backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape and v.grad.shape == v.shape


def test_biformer_empty_batch():
    from mmsparse.models.backbones import BiFormer
    arch = dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128), head_dim=8)
    model = BiFormer(arch=arch, n_win=2, topks=(1, 2, 4, -1)).eval()
    with torch.no_grad():
        for size in ((64, 64), (50, 46)):
            want = [o.shape[1:] for o in model(torch.randn(1, 3, *size))]
            got = model(torch.zeros(0, 3, *size))
            assert [tuple(o.shape) for o in got] == [(0, *w) for w in want]
    model.train()
    x = torch.zeros(0, 3, 64, 64, requires_grad=True)
    sum(o.sum() for o in model(x)).backward()
    assert x.grad.shape == x.shape


# ----------------------------------------------------------------------------- -inf logits

def _grads(out, grad_out, tensors):
    return torch.autograd.grad(out, tensors, grad_out)


@needs_kernels
@pytest.mark.parametrize('dilation', (1, 2))
def test_na2d_triton_minus_inf_bias_on_first_neighbour(dilation):
    torch.manual_seed(0)
    size = 3 * dilation + 1
    q, k, v = (torch.randn(1, 2, size, size, 8, dtype=torch.float64, device=DEVICE, requires_grad=True)
               for _ in range(3))
    rpb = torch.randn(2, 5, 5, dtype=torch.float64, device=DEVICE)
    rpb[:, 0, :] = float('-inf')          # the whole first row of neighbours of many queries
    rpb[0, :, 0] = float('-inf')          # and the first column in head 0
    rpb.requires_grad_(True)
    grad_out = torch.randn(1, 2, size, size, 8, dtype=torch.float64, device=DEVICE)
    ref = na2d_reference(q, k, v, 3, dilation, rpb, 0.3)
    assert ref.isfinite().all()
    out = neighborhood_attention_2d(q, k, v, 3, dilation, rpb, 0.3, backend='triton')
    torch.testing.assert_close(out, ref)
    for got, want in zip(_grads(out, grad_out, (q, k, v, rpb)), _grads(ref, grad_out, (q, k, v, rpb))):
        assert got.isfinite().all()
        torch.testing.assert_close(got, want)


@needs_kernels
def test_na2d_triton_rows_of_only_minus_inf_follow_the_reference():
    q = torch.randn(1, 1, 4, 4, 8, dtype=torch.float64, device=DEVICE)
    rpb = torch.full((1, 5, 5), float('-inf'), dtype=torch.float64, device=DEVICE)
    ref = na2d_reference(q, q, q, 3, 1, rpb, 0.3)
    out = neighborhood_attention_2d(q, q, q, 3, 1, rpb, 0.3, backend='triton')
    assert ref.isnan().all()               # softmax of an all -inf row
    torch.testing.assert_close(out, ref, equal_nan=True)


@needs_kernels
def test_bra_triton_minus_inf_first_key_block(monkeypatch):
    from mmsparse.ops.bra import triton_kernels
    monkeypatch.setattr(triton_kernels, '_BLOCK_CAP', 16)   # one routed 4x4 region per key block
    torch.manual_seed(0)
    q = (torch.rand(1, 8, 8, 8, dtype=torch.float64, device=DEVICE) + 0.1).requires_grad_(True)
    k = torch.randn(1, 8, 8, 8, dtype=torch.float64, device=DEVICE)
    k[:, :4, :4] = float('-inf')          # region 0: every logit against it is -inf
    k.requires_grad_(True)
    v = torch.randn(1, 8, 8, 8, dtype=torch.float64, device=DEVICE, requires_grad=True)
    idx = torch.tensor([[[0, 1], [0, 2], [0, 3], [0, 1]]], device=DEVICE)  # region 0 first
    ref = bra_attention_reference(q, k, v, idx, 2, 2, 0.3)
    assert ref.isfinite().all()
    out = triton_kernels.bra_attention_triton(q, k, v, idx, 2, 2, 0.3)
    torch.testing.assert_close(out, ref)
    grad_out = torch.randn_like(ref)
    # dq meets 0 * inf through the infinite keys in both implementations; dk and dv are finite.
    for got, want in zip(_grads(out, grad_out, (k, v)), _grads(ref, grad_out, (k, v))):
        assert got.isfinite().all()
        torch.testing.assert_close(got, want)


# ----------------------------------------------------------------------------- strides

@needs_kernels
@pytest.mark.parametrize('mode', ('sparse', 'official'))
def test_fibottention_triton_accepts_head_dim_stride(mode):
    torch.manual_seed(0)
    pattern = fibottention_pattern((3, 3), 2, 0)
    base = torch.randn(3, 1, 2, 8, 10, dtype=torch.float64, device=DEVICE)
    q, k, v = (t.transpose(-1, -2).requires_grad_(True) for t in base.unbind(0))   # (1, 2, 10, 8)
    assert q.stride(-1) != 1
    ref = fibottention_attention(q, k, v, pattern, mode=mode, backend='torch')
    out = fibottention_attention(q, k, v, pattern, mode=mode, backend='triton')
    torch.testing.assert_close(out, ref)
    grad_out = torch.randn_like(ref)
    for got, want in zip(_grads(out, grad_out, (q, k, v)), _grads(ref, grad_out, (q, k, v))):
        torch.testing.assert_close(got, want)


def test_defaults_still_accepted():
    # scale=None, numpy ints and plain python floats pass the checks.
    import numpy as np
    assert _bra(num_heads=np.int64(2), scale=0.5).shape == (1, 4, 4, 8)
    assert _global(scale=1).shape == (1, 4, 4, 4)
    assert math.isfinite(_na(scale=None).sum().item())
