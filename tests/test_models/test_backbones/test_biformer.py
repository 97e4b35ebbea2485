"""mmsparse.BiFormer: presets, shapes, options, official outputs and checkpoint loading."""
import math

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from mmsparse.models.backbones import BiFormer
from .utils import assert_checkpointing_keeps_gradients

TINY_ARCH = dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128), head_dim=8)


def official_config_to_kwargs(config):
    """The fixture's official constructor kwargs -> mmsparse.BiFormer kwargs."""
    topks = tuple(-1 if t == -2 else t for t in config['topks'])
    return dict(arch=dict(depths=config['depth'], embed_dims=config['embed_dim'], head_dim=config['head_dim']),
                n_win=config['n_win'], topks=topks, mlp_ratios=config['mlp_ratios'], auto_pad=config['auto_pad'])


@pytest.fixture(scope='module')
def backbone_fixture(load_official):
    return load_official('biformer_backbone_tiny_reduced.pt')


def official_model(fixture):
    from mmsparse.models.utils import biformer_official_to_mmsparse
    model = BiFormer(**official_config_to_kwargs(fixture['config'])).double().eval()
    model.load_state_dict(biformer_official_to_mmsparse(fixture['state_dict']), strict=True)
    return model


@pytest.mark.parametrize('arch,backbone_params,classifier_params', [
    ('tiny', 12_630_656, 13_142_760),
    ('small', 25_024_128, 25_536_232),
    ('base', 56_037_312, 56_804_968),
])
def test_preset_parameter_counts(arch, backbone_params, classifier_params):
    model = BiFormer(arch)
    count = sum(p.numel() for p in model.parameters())
    assert count == backbone_params
    # The official classifier swaps the 4 output LayerNorms for a final BN and a 1000-way head.
    dims = model.embed_dims
    with_head = count - 2 * sum(dims) + 2 * dims[-1] + dims[-1] * 1000 + 1000
    assert with_head == classifier_params


@pytest.mark.parametrize('input_key,output_key', [('input', 'outputs'), ('input_odd', 'outputs_odd')])
def test_reproduces_official_outputs(backbone_fixture, input_key, output_key):
    model = official_model(backbone_fixture)
    with torch.no_grad():
        outs = model(backbone_fixture[input_key])
    assert len(outs) == 4
    for out, expected in zip(outs, backbone_fixture[output_key]):
        assert out.shape == expected.shape
        torch.testing.assert_close(out, expected, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize('size', [(511, 511), (112, 137), (17, 9)])
def test_any_input_size(size):
    model = BiFormer(TINY_ARCH, n_win=8).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    for i, out in enumerate(outs):
        stride = 2**(i + 2)
        assert out.shape == (1, TINY_ARCH['embed_dims'][i], math.ceil(size[0] / stride),
                             math.ceil(size[1] / stride))


def test_preset_any_input_size():
    model = BiFormer('tiny', n_win=8).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 112, 137))
    assert [o.shape[1:] for o in outs] == [(64, 28, 35), (128, 14, 18), (256, 7, 9), (512, 4, 5)]


def test_out_indices_select_maps_and_norms():
    model = BiFormer(TINY_ARCH, n_win=2, topks=(1, 2, 4, -1), out_indices=(1, 3))
    outs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape for o in outs] == [(2, 32, 8, 8), (2, 128, 2, 2)]
    assert hasattr(model, 'norm1') and not hasattr(model, 'norm0')
    # Every parameter takes part in the loss (no unused parameters under DDP).
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_frozen_stages():
    model = BiFormer(TINY_ARCH, n_win=2, topks=(1, 2, 4, -1), frozen_stages=1)
    model.train()
    for i in range(4):
        frozen = i <= 1
        for module in (model.downsample_layers[i], model.stages[i], getattr(model, f'norm{i}')):
            assert all(p.requires_grad != frozen for p in module.parameters())
            assert all(m.training != frozen for m in module.modules())


def test_norm_eval_keeps_batchnorm_statistics():
    model = BiFormer(TINY_ARCH, n_win=2, topks=(1, 2, 4, -1), norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and not any(m.training for m in bns)
    before = bns[0].running_mean.clone()
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(bns[0].running_mean, before)


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    plain = BiFormer(TINY_ARCH, n_win=2, topks=(1, 2, 4, -1), drop_path_rate=0.)
    checkpointed = BiFormer(TINY_ARCH, n_win=2, topks=(1, 2, 4, -1), with_cp=True)
    assert_checkpointing_keeps_gradients(plain, checkpointed, torch.randn(2, 3, 40, 48))


def test_drop_path_rate_is_linear_over_blocks():
    model = BiFormer(TINY_ARCH, drop_path_rate=0.4)
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, 'drop_prob') else 0.
             for stage in model.stages for b in stage]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.4, 5))


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), "arch='huge'"),
    (dict(arch=dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128))), 'head_dim'),
    (dict(arch=dict(depths=(1, 1, 1), embed_dims=(16, 32, 64, 128), head_dim=8)), 'depths'),
    (dict(arch=TINY_ARCH, out_indices=(4, )), 'out_indices'),
    (dict(arch=TINY_ARCH, frozen_stages=4), 'frozen_stages=4'),
    (dict(arch=TINY_ARCH, topks=(1, 4, 16)), 'topks'),
    (dict(arch=TINY_ARCH, topks=(1, 4, 16, -2)), 'topk=-2'),
    (dict(arch=TINY_ARCH, n_win=3, topks=(1, 4, 16, -1)), 'topk=16'),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BiFormer(**kwargs)


def save_official_checkpoint(fixture, path, extra=None):
    """Write the fixture's weights the way the official ImageNet checkpoints store them."""
    state_dict = {k: v for k, v in fixture['state_dict'].items() if not k.startswith('extra_norms.')}
    state_dict.update(fixture['cls_head_norm_state_dict'])
    state_dict.update(extra or {})
    torch.save({'model': state_dict, 'epoch': 300}, path)


def test_init_cfg_loads_official_imagenet_checkpoint(backbone_fixture, tmp_path):
    path = str(tmp_path / 'biformer_official_in1k.pth')
    save_official_checkpoint(backbone_fixture, path)
    kwargs = official_config_to_kwargs(backbone_fixture['config'])
    model = BiFormer(**kwargs, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    reference = official_model(backbone_fixture)
    for key, value in reference.state_dict().items():
        if key.startswith('norm'):  # output norms are absent from ImageNet weights: default init
            expected = torch.ones_like(value) if key.endswith('weight') else torch.zeros_like(value)
            torch.testing.assert_close(model.state_dict()[key].double(), expected)
        else:
            torch.testing.assert_close(model.state_dict()[key].to(value.dtype), value, msg=key)


def test_init_cfg_refuses_unexpected_keys(backbone_fixture, tmp_path):
    path = str(tmp_path / 'bad.pth')
    save_official_checkpoint(backbone_fixture, path, extra={'stages.0.0.attn.extra.weight': torch.ones(2)})
    kwargs = official_config_to_kwargs(backbone_fixture['config'])
    model = BiFormer(**kwargs, init_cfg=dict(type='Pretrained', checkpoint=path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match='stages.0.0.attn.extra.weight'):
        model.init_weights()
    # Nothing was loaded: a failed load never leaves a half-initialised model.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_init_cfg_refuses_shape_mismatch(backbone_fixture, tmp_path):
    path = str(tmp_path / 'official.pth')
    save_official_checkpoint(backbone_fixture, path)
    kwargs = official_config_to_kwargs(backbone_fixture['config'])
    kwargs['mlp_ratios'] = (4, 3, 3, 3)
    model = BiFormer(**kwargs, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(RuntimeError, match='shape mismatches'):
        model.init_weights()


def test_init_cfg_missing_file_is_a_clear_error(tmp_path):
    model = BiFormer(TINY_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nope.pth')))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        model.init_weights()
