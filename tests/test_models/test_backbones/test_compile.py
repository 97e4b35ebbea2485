"""``torch.compile(backbone, fullgraph=True)``: no graph break in any of the four backbones.

Every op is a ``torch.library`` custom op (one node for Dynamo, with a fake implementation
for shape propagation), so a whole backbone must trace into one graph. Each backbone, in a
tiny configuration (one block per stage) on a seeded 1x3x64x64 input in eval mode,
is compiled with the torch backend of the ops and compared with eager in float32:
outputs and the input gradient of a fixed random projection of the outputs within
``atol=rtol=1e-5``.

Compile time on 2 CPU cores: AOTAutograd (``backend='aot_eager'``: Dynamo capture,
functionalisation, fake-tensor propagation and the joint forward/backward graph, without
code generation) takes 5-20 s per backbone; Inductor's C++ code generation about
2-4 minutes per backbone (cold cache), so Inductor compiles one backbone only
(BiFormer, forward only: about 130 s with a cold Inductor cache, 30 s warm).
"""
import pytest
import torch

from mmsparse.ops._dispatch import ENV_VAR
from .utils import TINY_BACKBONES, tiny_backbone

TOL = dict(atol=1e-5, rtol=1e-5)
INPUT_SHAPE = (1, 3, 64, 64)


@pytest.fixture(autouse=True)
def torch_backend(monkeypatch):
    """The ops' torch backend, also where a GPU would pick Triton (this test is about tracing)."""
    monkeypatch.setenv(ENV_VAR, 'torch')
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _model_and_input(name):
    torch.manual_seed(0)
    model = tiny_backbone(name).eval()
    x = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    return model, x


def _outputs_and_input_grad(model, x, weights=None):
    leaf = x.detach().clone().requires_grad_()
    outs = model(leaf)
    if weights is None:  # a fixed random projection, so every output element gets a generic gradient
        gen = torch.Generator().manual_seed(2)
        weights = [torch.randn(o.shape, generator=gen) for o in outs]
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    (grad, ) = torch.autograd.grad(loss, leaf)
    return [o.detach() for o in outs], grad, weights


@pytest.mark.slow
@pytest.mark.parametrize('name', list(TINY_BACKBONES))
def test_compile_fullgraph_aot_eager_matches_eager(name):
    model, x = _model_and_input(name)
    want_outs, want_grad, weights = _outputs_and_input_grad(model, x)
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    got_outs, got_grad, _ = _outputs_and_input_grad(compiled, x, weights)
    assert len(got_outs) == len(want_outs)
    for got, want in zip(got_outs, want_outs):
        torch.testing.assert_close(got, want, **TOL)
    torch.testing.assert_close(got_grad, want_grad, **TOL)


@pytest.mark.slow
def test_compile_fullgraph_inductor_matches_eager():
    model, x = _model_and_input('biformer')
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, fullgraph=True, backend='inductor')(x)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **TOL)
