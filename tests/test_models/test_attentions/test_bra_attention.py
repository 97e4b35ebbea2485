"""BiLevelRoutingAttention module against the official legacy BRA outputs (float64); LePE kernel checks."""
import pytest
import torch

from mmsparse.models.attentions import BiLevelRoutingAttention, GlobalAttentionLePE
from mmsparse.ops import bi_level_routing_attention

# Official module key -> mmsparse key.
KEY_MAP = {'qkv.qkv.weight': 'qkv.weight', 'qkv.qkv.bias': 'qkv.bias', 'wo.weight': 'proj.weight',
           'wo.bias': 'proj.bias', 'lepe.weight': 'lepe.weight', 'lepe.bias': 'lepe.bias'}


@pytest.fixture(scope='module')
def bra_fixture(load_official):
    return load_official('biformer_bra_op.pt')


def build_module(fixture):
    cfg = fixture['config']
    module = BiLevelRoutingAttention(cfg['dim'], cfg['num_heads'], cfg['n_win'], cfg['topk'],
                                     qk_dims=cfg['qk_dim'], lepe_kernel=cfg['side_dwconv'],
                                     auto_pad=cfg['auto_pad'], backend='torch').double().eval()
    module.load_state_dict({KEY_MAP[k]: v for k, v in fixture['state_dict'].items()}, strict=True)
    return module


@pytest.mark.parametrize('case', ['padded_13x11', 'nopad_2x8x8'])
def test_matches_official(bra_fixture, case):
    data = bra_fixture if case == 'padded_13x11' else bra_fixture['cases'][case]
    module = build_module(bra_fixture)
    x = data['input'].clone().requires_grad_()
    out = module(x)
    torch.testing.assert_close(out, data['output'], atol=1e-10, rtol=1e-8)
    (out * data['upstream']).sum().backward()
    torch.testing.assert_close(x.grad, data['grad_input'], atol=1e-9, rtol=1e-8)
    for official_key, key in KEY_MAP.items():
        grad = dict(module.named_parameters())[key].grad
        torch.testing.assert_close(grad, data['grad_params'][official_key], atol=1e-9, rtol=1e-8)


@pytest.mark.parametrize('case', ['padded_13x11', 'nopad_2x8x8'])
def test_routing_matches_official(bra_fixture, case):
    """Region partition, padding, region means and top-k agree exactly."""
    data = bra_fixture if case == 'padded_13x11' else bra_fixture['cases'][case]
    module = build_module(bra_fixture)
    with torch.no_grad():
        x = torch.nn.functional.pad(data['input'], (0, 0, 0, (-data['input'].shape[2]) % 4,
                                                    0, (-data['input'].shape[1]) % 4))
        q, k, v = module.qkv(x).split([64, 64, 64], dim=-1)
        _, region_index = bi_level_routing_attention(q, k, v, 2, 4, 3, scale=module.scale,
                                                     return_routing=True, backend='torch')
    assert torch.equal(region_index, data['r_idx'])


def test_float32_close_to_official(bra_fixture):
    module = build_module(bra_fixture).float()
    out = module(bra_fixture['input'].float())
    torch.testing.assert_close(out, bra_fixture['output'].float(), atol=1e-4, rtol=1e-4)


def test_rejects_indivisible_input_without_auto_pad():
    module = BiLevelRoutingAttention(32, 2, n_win=4, topk=2, auto_pad=False)
    with pytest.raises(ValueError, match='n_win=4'):
        module(torch.randn(1, 13, 12, 32))


@pytest.mark.parametrize('cls,args', [(BiLevelRoutingAttention, (32, 2, 4, 2)), (GlobalAttentionLePE, (32, 2))],
                         ids=['bra', 'global'])
@pytest.mark.parametrize('kernel', [2, 0, -1, 3.0])
def test_rejects_bad_lepe_kernel(cls, args, kernel):
    with pytest.raises(ValueError, match=f'lepe_kernel={kernel} is not allowed.*positive odd int'):
        cls(*args, lepe_kernel=kernel)
