"""HierarchicalMHSA against the official H-MHSA fixtures (float64) and a padding-free oracle.

The official module includes the block's pre-norm, so the tests use HAT-Net's
:class:`HATAttention` (HierarchicalMHSA plus that norm, under the official key).

Official fixtures (hatnet_hmhsa_op.pt, see tests/data/official/README.md): outputs, input and
parameter gradients, for both backends ('torch' reference, 'triton' = SDPA), at
atol 1e-10 / rtol 1e-8 (observed <= 2e-13). At sizes that are not multiples of the
window or pooling cell, the module is compared with an oracle that never pads:
dense local attention restricted to same-window pairs and an averaging matrix for
the pooling (docs/design.md, "H-MHSA at any input size"), at atol 1e-12.
"""
import math

import pytest
import torch

from mmsparse.models.attentions import HierarchicalMHSA
from mmsparse.models.backbones.hat_net import HATAttention
from mmsparse.ops import cell_average_pool, grid_attention
from ...test_ops.test_hmhsa import oracle_grid_attention, pooling_matrix, tokens

CASES = ['local_global', 'global_only', 'window49']


@pytest.fixture(scope='module')
def hmhsa_fixture(load_official):
    return load_official('hatnet_hmhsa_op.pt')


def build_module(case, backend='torch'):
    cfg = case['config']
    module = HATAttention(cfg['dim'], cfg['dim'] // cfg['head_dim'], cfg['grid_size'], cfg['ds_ratio'],
                          cfg['drop'], backend=backend).double().eval()
    # The official proj_norm is never used by its forward; this module does not create it.
    state_dict = {k: v for k, v in case['state_dict'].items() if not k.startswith('proj_norm.')}
    module.load_state_dict(state_dict, strict=True)
    return module


@pytest.mark.parametrize('backend', ['torch', 'triton'])
@pytest.mark.parametrize('name', CASES)
def test_matches_official(hmhsa_fixture, name, backend):
    case = hmhsa_fixture[name]
    atol, rtol = hmhsa_fixture['atol'], hmhsa_fixture['rtol']
    module = build_module(case, backend)
    x = case['input'].clone().requires_grad_()
    out = module(x)
    torch.testing.assert_close(out, case['output'], atol=atol, rtol=rtol)
    (out * case['grad_output']).sum().backward()
    torch.testing.assert_close(x.grad, case['grad_input'], atol=atol, rtol=rtol)
    grads = {k: p.grad for k, p in module.named_parameters()}
    assert set(grads) == set(case['grad_params'])
    assert set(case['unused_params']) == {'proj_norm.weight', 'proj_norm.bias'}
    for key, expected in case['grad_params'].items():
        torch.testing.assert_close(grads[key], expected, atol=atol, rtol=rtol, msg=lambda m, k=key: f'{k}: {m}')


def test_intermediates_match_official(hmhsa_fixture):
    """Localises a mismatch: the local step (grid_x), the pooled map and kv of the local+global case."""
    case = hmhsa_fixture['local_global']
    module = build_module(case)
    inter, x = case['intermediates'], case['input']
    with torch.no_grad():
        q, k, v = module.qkv(module.norm(x)).chunk(3, dim=1)
        grid_x = module.grid_norm(x + grid_attention(q, k, v, module.num_heads, module.grid_size))
        pooled = cell_average_pool(grid_x, module.ds_ratio)
        for got, key in ((grid_x, 'grid_norm_out'), (pooled, 'avg_pool_out'),
                         (module.kv(module.ds_norm(pooled)), 'kv_out')):
            torch.testing.assert_close(got, inter[key], atol=1e-10, rtol=1e-8, msg=lambda m, k=key: f'{k}: {m}')


def test_float32_close_to_official(hmhsa_fixture):
    case = hmhsa_fixture['local_global']
    for backend in ('torch', 'triton'):
        module = build_module(case, backend).float()
        out = module(case['input'].float())
        torch.testing.assert_close(out, case['output'].float(), atol=1e-4, rtol=1e-4)


def oracle_module(module, x):
    """The padded H-MHSA written without padding: dense masked local step, matrix pooling."""
    heads, g, r = module.num_heads, module.grid_size, module.ds_ratio
    b, c, h, w = x.shape
    q, k, v = module.qkv(module.norm(x)).chunk(3, dim=1)
    grid_x = module.grid_norm(x + oracle_grid_attention(q, k, v, heads, g))
    pooled = (grid_x.flatten(2) @ pooling_matrix(h, w, r).T).reshape(b, c, math.ceil(h / r), math.ceil(w / r))
    k, v = module.kv(module.ds_norm(pooled)).chunk(2, dim=1)
    attn = ((tokens(module.q(grid_x), heads) * module.scale) @ tokens(k, heads).transpose(-1, -2)).softmax(-1)
    glob = (attn @ tokens(v, heads)).transpose(-1, -2).reshape(b, c, h, w)
    return module.proj(glob + grid_x)


@pytest.mark.parametrize('backend', ['torch', 'triton'])
@pytest.mark.parametrize('h,w,g,r', [(13, 22, 7, 4), (17, 9, 8, 8), (14, 15, 7, 2)])
def test_any_size_matches_padding_free_oracle(backend, h, w, g, r):
    torch.manual_seed(0)
    module = HATAttention(16, 2, g, r, 0., backend=backend).double().eval()
    for p in module.parameters():   # non-trivial norms and biases
        torch.nn.init.normal_(p, 0.3 if p.dim() == 1 else 0., 0.3)
    x = torch.randn(2, 16, h, w, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(module(x), oracle_module(module, x), atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize('kwargs,match', [
    (dict(embed_dims=32, num_heads=3), 'num_heads=3'),
    (dict(embed_dims=32, num_heads=4, grid_size=0), 'grid_size=0'),
    (dict(embed_dims=32, num_heads=4, grid_size=4, ds_ratio=1.5), 'ds_ratio=1.5'),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HierarchicalMHSA(**kwargs)


def test_registered_mixer_is_the_hat_net_attention_on_nhwc_maps():
    """The NHWC mixer fed the normalised map and the raw map as identity is HAT-Net's attention."""
    torch.manual_seed(0)
    hat = HATAttention(16, 2, 4, 2, 0., backend='torch').double().eval()
    mixer = HierarchicalMHSA(16, 2, grid_size=4, ds_ratio=2, backend='torch').double().eval()
    mixer.load_state_dict({k: v for k, v in hat.state_dict().items() if not k.startswith('norm.')})
    x = torch.randn(2, 16, 9, 10, dtype=torch.float64)
    with torch.no_grad():
        out = mixer(hat.norm(x).permute(0, 2, 3, 1), identity=x.permute(0, 2, 3, 1))
        torch.testing.assert_close(out, hat(x).permute(0, 2, 3, 1), atol=1e-12, rtol=1e-10)
