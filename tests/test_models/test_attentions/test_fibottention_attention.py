"""Fibottention2d: the official attention module (official mode, layer 1, with CLS) and options."""
import pytest
import torch

# Imported first: it sets TRITON_INTERPRET=1 (no GPU) before anything can import triton.
from ...test_ops import kernels  # noqa: F401
from mmsparse.models.attentions import Fibottention2d
from mmsparse.ops._dispatch import triton_available

BACKENDS = ['torch'] + (['triton'] if triton_available() else [])


@pytest.mark.parametrize('backend', BACKENDS)
def test_reproduces_official_module(load_official, backend):
    fixture = load_official('fibottention_attn_op.pt')
    config = fixture['config']
    module = Fibottention2d(config['dim'], config['num_heads'], layer_id=config['depth_id'],
                            mode='official', backend=backend).double()
    module.load_state_dict(fixture['state_dict'], strict=True)
    x = fixture['input'].clone().requires_grad_()
    out = module.forward_tokens(x, (7, 7), with_cls=True)
    tol = dict(atol=fixture['atol'], rtol=fixture['rtol'])
    torch.testing.assert_close(out, fixture['output'], **tol)
    out.backward(fixture['grad_output'])
    torch.testing.assert_close(x.grad, fixture['grad_input'], **tol)
    for name, param in module.named_parameters():
        torch.testing.assert_close(param.grad, fixture['grad_params'][name], **tol)


def test_layer_seed_and_shuffle_choose_the_pattern():
    grid = (7, 7)
    per_layer = [Fibottention2d(48, 3, layer_id=i).pattern(grid, 'cpu') for i in range(3)]
    shared = [Fibottention2d(48, 3, layer_id=i, shuffle='shared').pattern(grid, 'cpu') for i in range(3)]
    assert not torch.equal(per_layer[0].displacements, per_layer[1].displacements)
    assert all(torch.equal(p.displacements, per_layer[0].displacements) for p in shared)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(num_heads=5), ValueError, 'num_heads=5 must be a positive divisor of embed_dims=48'),
    (dict(attention='linear'), TypeError, "does not take the argument\\(s\\) 'attention'"),
    (dict(mode='zero'), ValueError, "mode='zero'"),
])
def test_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Fibottention2d(**dict(dict(embed_dims=48, num_heads=3), **kwargs))
