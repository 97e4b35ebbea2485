"""The shape every backbone shares: init in init_weights() (never at construction), backend to the mixers.

Trunc-normal init (MMEngine's and torch's) is the only user of ``Tensor.erfinv_`` here, so
counting its calls tells whether a build or an ``init_weights`` initialised anything.
"""
import pytest
import torch

from mmsparse.models.attentions import NeighborhoodAttention2d, WindowAttention
from mmsparse.models.backbones import NAT, BiFormer, FibottentionViT, HATNet, SparseTransformer

BUILDERS = {
    'biformer': lambda **kw: BiFormer(dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 48, 64), head_dim=8), n_win=2,
                                      topks=(1, 2, 2, -1), **kw),
    'nat': lambda **kw: NAT(dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2.),
                            kernel_size=3, **kw),
    'hat_net': lambda **kw: HATNet(dict(embed_dims=(16, 32, 48, 64), head_dim=8, depths=(1, 1, 1, 1),
                                        expansions=(2, 2, 2, 2), grid_sizes=(4, 4, 2, 1), ds_ratios=(4, 2, 2, 1),
                                        kernel_sizes=(3, 3, 3, 3)), **kw),
    'fibottention_vit': lambda **kw: FibottentionViT(dict(embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=2),
                                                     img_size=32, **kw),
    'sparse_transformer': lambda **kw: SparseTransformer(
        dict(embed_dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), head_dim=8, mlp_ratio=2.),
        attn_cfg=[dict(type='mmsparse.WindowAttention', window_size=4),
                  dict(type='mmsparse.NeighborhoodAttention2d', kernel_size=3),
                  dict(type='mmsparse.Fibottention2d'), dict(type='mmsparse.HierarchicalMHSA')], **kw),
}


@pytest.fixture
def trunc_normal_calls(monkeypatch):
    calls = []
    erfinv_ = torch.Tensor.erfinv_

    def counting(self):
        calls.append(tuple(self.shape))
        return erfinv_(self)

    monkeypatch.setattr(torch.Tensor, 'erfinv_', counting)
    return calls


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_building_does_not_initialise_and_init_weights_does(name, trunc_normal_calls):
    model = BUILDERS[name]()
    assert trunc_normal_calls == []
    model.init_weights()
    # HAT-Net has no Linear; its official init covers the convs.
    layer = torch.nn.Conv2d if name == 'hat_net' else torch.nn.Linear
    linears = [m for m in model.modules() if isinstance(m, layer)]
    assert len(trunc_normal_calls) >= len(linears) > 0
    # The families' init: trunc-normal(0.02) weights and zero biases.
    weights = torch.cat([m.weight.flatten() for m in linears])
    assert abs(weights.std().item() - 0.02) < 2e-3 and weights.abs().max() <= 2.
    assert all(m.bias is None or not m.bias.any() for m in linears)
    # A second call changes nothing (MMEngine's once-only init).
    before = {k: v.clone() for k, v in model.state_dict().items()}
    del trunc_normal_calls[:]
    model.init_weights()
    assert trunc_normal_calls == []
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize('name,cls,attr', [('nat', NeighborhoodAttention2d, 'rpb'),
                                           ('sparse_transformer', WindowAttention, 'relative_position_bias_table')])
def test_relative_position_biases_are_initialised_by_init_weights(name, cls, attr):
    torch.manual_seed(0)
    model = BUILDERS[name]()
    tables = [getattr(m, attr) for m in model.modules() if isinstance(m, cls)]
    assert tables and not any(t.any() for t in tables)
    model.init_weights()
    values = torch.cat([t.detach().flatten() for t in tables])
    assert abs(values.std().item() - 0.02) < 4e-3 and all(t.any() for t in tables)


def test_vit_position_embedding_and_cls_token_are_initialised_by_init_weights():
    model = BUILDERS['fibottention_vit']()
    assert not model.pos_embed.any() and not model.cls_token.any()
    model.init_weights()
    assert abs(model.pos_embed.std().item() - 0.02) < 4e-3 and model.cls_token.any()


def test_keys_a_loose_checkpoint_lacks_keep_the_random_init(tmp_path):
    torch.manual_seed(0)
    source = BUILDERS['nat']()
    source.init_weights()
    path = tmp_path / 'no_rpb.pth'
    torch.save({'state_dict': {k: v for k, v in source.state_dict().items() if not k.endswith('.rpb')}}, path)
    model = BUILDERS['nat'](init_cfg=dict(type='Pretrained', checkpoint=str(path), strict=False))
    model.init_weights()
    for key, value in model.state_dict().items():
        if key.endswith('.rpb'):
            assert value.any() and not torch.equal(value, source.state_dict()[key]), key
        else:
            assert torch.equal(value, source.state_dict()[key]), key


@pytest.mark.parametrize('name', sorted(BUILDERS))
def test_backend_reaches_every_attention_that_takes_one(name):
    model = BUILDERS[name](backend='torch')
    with_backend = [m for m in model.modules() if hasattr(m, 'backend')]
    assert with_backend and all(m.backend == 'torch' for m in with_backend)
