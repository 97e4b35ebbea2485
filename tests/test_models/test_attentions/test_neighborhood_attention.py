"""NeighborhoodAttention2d: the NATTEN 0.14.4 small-input path (pad the input, crop before proj)."""
import pytest
import torch
import torch.nn.functional as F

from mmsparse.models.attentions import NeighborhoodAttention2d
from mmsparse.ops import neighborhood_attention_2d
from ...test_ops.kernels import needs_kernels

F64_TOL = dict(atol=1e-10, rtol=1e-8)


def build(kernel_size=5, dilation=2, backend='torch', seed=0):
    torch.manual_seed(seed)
    module = NeighborhoodAttention2d(16, 2, kernel_size, dilation, backend=backend).double()
    torch.nn.init.normal_(module.qkv.bias)  # non-zero, so padded tokens are real keys
    return module


def expected_output(module, x):
    """NATTEN 0.14.4's ``NeighborhoodAttention2D.forward`` written out (``docs/design.md``):
    pad the input to k*d, qkv, NA, crop, proj."""
    height, width = x.shape[1:3]
    window = module.kernel_size * module.dilation
    padded = F.pad(x, (0, 0, 0, max(window - width, 0), 0, max(window - height, 0)))
    n, pad_h, pad_w, c = padded.shape
    q, k, v = module.qkv(padded).reshape(n, pad_h, pad_w, 3, 2, c // 2).permute(3, 0, 4, 1, 2, 5)
    out = neighborhood_attention_2d(q, k, v, module.kernel_size, module.dilation, module.rpb, backend='torch')
    return module.proj(out.permute(0, 2, 3, 1, 4).reshape(n, pad_h, pad_w, c)[:, :height, :width])


@pytest.mark.parametrize('size', [(3, 5), (12, 4), (10, 10), (1, 1)])
def test_small_inputs_pad_the_input_not_qkv(size):
    module = build()
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    out = module(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, expected_output(module, x), **F64_TOL)


def test_zero_padding_qkv_instead_would_differ():
    """Guards the test above: padded tokens carry q = k = v = qkv.bias, which changes the result."""
    module = build()
    x = torch.randn(1, 4, 6, 16, dtype=torch.float64)
    n, c = 1, 16
    q, k, v = module.qkv(x).reshape(1, 4, 6, 3, 2, 8).permute(3, 0, 4, 1, 2, 5)
    q, k, v = (F.pad(t, (0, 0, 0, 4, 0, 6)) for t in (q, k, v))
    wrong = neighborhood_attention_2d(q, k, v, 5, 2, module.rpb, backend='torch')
    wrong = module.proj(wrong.permute(0, 2, 3, 1, 4).reshape(n, 10, 10, c)[:, :4, :6])
    assert (module(x) - wrong).abs().max() > 1e-3


@needs_kernels
def test_triton_backend_matches_torch_on_padded_input():
    """Padding path with the fused kernels: output and all parameter/input gradients."""
    x = torch.randn(1, 3, 7, 16, dtype=torch.float64)
    results = []
    for backend in ('torch', 'triton'):
        module = build(backend=backend)
        leaf = x.clone().requires_grad_()
        out = module(leaf)
        out.square().sum().backward()
        results.append([out.detach(), leaf.grad] + [p.grad for p in module.parameters()])
    for got, want in zip(results[1], results[0]):
        torch.testing.assert_close(got, want, **F64_TOL)


@pytest.mark.parametrize('kwargs,match', [
    (dict(embed_dims=16, num_heads=3), 'num_heads=3'),
    (dict(embed_dims=16, num_heads=2, kernel_size=4), 'kernel_size=4'),
    (dict(embed_dims=16, num_heads=2, dilation=0), 'dilation=0'),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeighborhoodAttention2d(**kwargs)
