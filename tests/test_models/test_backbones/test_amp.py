"""Mixed precision: every backbone under ``torch.autocast`` stays finite and close to float32.

Each of the four backbones, in a tiny configuration (the ones the other backbone tests
use) on a seeded 2x3x64x64 input, in eval mode (no dropout / drop path), runs once in
float32 and once under autocast with the same weights. Checks:

* every output and the gradients of the input and of the stem's first conv weight are
  finite under autocast;
* relative error ``||amp - fp32|| / ||fp32||`` of the concatenated outputs < 5e-2, and of
  the input gradient and of the first conv weight gradient < 1e-1 each.

The loss is a fixed random projection of all outputs (``sum_i <o_i, w_i>``), computed in
float32, so that its gradient reaches every output element with a generic weight.

CPU: ``torch.autocast('cpu', dtype=torch.bfloat16)``. With a CUDA GPU the same checks run
under ``torch.autocast('cuda')`` with float16 and bfloat16 (the float32 baseline then also
runs on the GPU, i.e. through the Triton kernels).
"""
import pytest
import torch
import torch.nn as nn

from mmsparse.models.backbones import NAT, BiFormer, FibottentionViT, HATNet

OUT_RTOL = 5e-2
GRAD_RTOL = 1e-1
INPUT_SHAPE = (2, 3, 64, 64)

BACKBONES = {
    'biformer': lambda: BiFormer(dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128), head_dim=8),
                                 n_win=2, topks=(1, 2, 4, -1)),
    'nat': lambda: NAT(dict(embed_dims=16, depths=(1, 2, 2, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2.),
                       dilations=[[4], [1, 2], [1, 3], [1]]),
    'hat_net': lambda: HATNet(dict(embed_dims=(16, 32, 48, 64), head_dim=8, depths=(1, 1, 1, 1),
                                   expansions=(2, 2, 2, 2), grid_sizes=(8, 7, 7, 1), ds_ratios=(8, 4, 2, 1),
                                   kernel_sizes=(3, 3, 3, 3))),
    'fibottention_vit': lambda: FibottentionViT(dict(embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=2),
                                                img_size=64),
}

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
PRECISIONS = [
    pytest.param('cpu', torch.bfloat16, id='cpu-bf16'),
    pytest.param('cuda', torch.float16, id='cuda-fp16', marks=needs_cuda),
    pytest.param('cuda', torch.bfloat16, id='cuda-bf16', marks=needs_cuda),
]


def _first_conv(model):
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3)


def _run(model, x, weights, device, dtype):
    """Outputs (float32, flattened and concatenated), input grad, first conv weight grad."""
    model.zero_grad(set_to_none=True)
    leaf = x.detach().clone().requires_grad_()
    with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
        outs = model(leaf)
    outs = [o.float() for o in outs]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    loss.backward()
    flat = torch.cat([o.detach().flatten() for o in outs])
    return flat, leaf.grad.detach().float(), _first_conv(model).weight.grad.detach().float()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize('device,dtype', PRECISIONS)
@pytest.mark.parametrize('name', list(BACKBONES))
def test_autocast_close_to_float32(name, device, dtype):
    torch.manual_seed(0)
    model = BACKBONES[name]().to(device).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(INPUT_SHAPE, generator=gen).to(device)
    with torch.no_grad():
        shapes = [o.shape for o in model(x)]
    weights = [torch.randn(s, generator=gen).to(device) for s in shapes]

    ref_out, ref_dx, ref_dw = _run(model, x, weights, device, None)
    out, dx, dw = _run(model, x, weights, device, dtype)

    for label, t in (('outputs', out), ('input grad', dx), ('first conv weight grad', dw)):
        assert torch.isfinite(t).all(), f'{name} {dtype}: non-finite {label}'
    assert ref_dx.norm() > 0 and ref_dw.norm() > 0
    errors = dict(out=_rel(out, ref_out), dx=_rel(dx, ref_dx), dw=_rel(dw, ref_dw))
    assert errors['out'] < OUT_RTOL, (name, dtype, errors)
    assert errors['dx'] < GRAD_RTOL, (name, dtype, errors)
    assert errors['dw'] < GRAD_RTOL, (name, dtype, errors)
