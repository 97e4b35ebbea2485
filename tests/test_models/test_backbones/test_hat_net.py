"""mmsparse.HATNet: presets, shapes, options, official outputs and checkpoint loading.

Official outputs: fixtures hatnet_backbone_reduced.pt (official HAT_Net, float64, 224x224),
compared at the fixture's atol 1e-9 / rtol 1e-7 (observed ~1e-14).
"""
import math

import pytest
import torch

from mmsparse.models.backbones import HATNet
from mmsparse.models.utils import hatnet_official_to_mmsparse
from .utils import (BAD_OUT_INDICES, assert_checkpointing_keeps_gradients, assert_drop_path_linear,
                    assert_frozen_stages, assert_imagenet_weights_loaded, assert_load_refused)

ARCH_KEYS = ('embed_dims', 'head_dim', 'depths', 'expansions', 'grid_sizes', 'ds_ratios', 'kernel_sizes')
SMALL_ARCH = dict(embed_dims=(16, 32, 48, 64), head_dim=8, depths=(1, 1, 1, 1), expansions=(2, 2, 2, 2),
                  grid_sizes=(8, 7, 7, 1), ds_ratios=(8, 4, 2, 1), kernel_sizes=(3, 3, 3, 3))


def official_config_to_kwargs(config):
    """The fixture's official HAT_Net constructor kwargs -> mmsparse.HATNet kwargs."""
    # The official names the stage widths ``dims``; mmsparse, like every backbone, ``embed_dims``.
    official = dict(config, embed_dims=config['dims'])
    return dict(arch={k: tuple(official[k]) if k != 'head_dim' else official[k] for k in ARCH_KEYS},
                drop_path_rate=config['drop_path_rate'])


@pytest.fixture(scope='module')
def backbone_fixture(load_official):
    return load_official('hatnet_backbone_reduced.pt')


def official_model(fixture, **kwargs):
    model = HATNet(**official_config_to_kwargs(fixture['config']), **kwargs).double().eval()
    model.load_state_dict(hatnet_official_to_mmsparse(fixture['state_dict']), strict=True)
    return model


@pytest.mark.parametrize('arch,total_official,backbone_official', [
    ('tiny', 12_655_912, 12_265_152),
    ('small', 25_747_784, 25_225_568),
    ('medium', 42_942_472, 42_412_960),
    ('large', 63_132_488, 62_467_936),
])
def test_preset_parameter_counts(arch, total_official, backbone_official):
    model = HATNet(arch)
    count = sum(p.numel() for p in model.parameters())
    assert count == backbone_official
    # The official model adds a 1000-way classifier and the unused attn.proj_norm (2C per block).
    proj_norm = sum(2 * dim * depth for dim, depth in zip(model.embed_dims, model.depths))
    assert count + proj_norm + model.embed_dims[-1] * 1000 + 1000 == total_official


@pytest.mark.parametrize('backend', ['torch', 'triton'])
def test_reproduces_official_outputs(backbone_fixture, backend):
    model = official_model(backbone_fixture, backend=backend)
    atol, rtol = backbone_fixture['atol'], backbone_fixture['rtol']
    with torch.no_grad():
        torch.testing.assert_close(model.patch_embed(backbone_fixture['input']), backbone_fixture['stem'],
                                   atol=atol, rtol=rtol)
        outs = model(backbone_fixture['input'])
    assert len(outs) == 4
    for out, expected in zip(outs, backbone_fixture['outs']):
        assert out.shape == expected.shape
        torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)
    classifier = backbone_fixture['state_dict']
    logits = outs[3].mean((2, 3)) @ classifier['classifier.1.weight'].T + classifier['classifier.1.bias']
    torch.testing.assert_close(logits, backbone_fixture['logits'], atol=atol, rtol=rtol)


@pytest.mark.parametrize('size', [(511, 511), (112, 137), (200, 300), (97, 131), (17, 9)])
def test_any_input_size(size):
    model = HATNet(SMALL_ARCH).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    for i, out in enumerate(outs):
        stride = 2**(i + 2)
        assert out.shape == (1, SMALL_ARCH['embed_dims'][i], math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        assert torch.isfinite(out).all()


def test_preset_any_input_size_and_backends_agree():
    """Padded windows and partial cells at every stage: reference and SDPA paths agree (float64)."""
    model = HATNet('tiny', backend='torch').double().eval()
    fast_model = HATNet('tiny', backend='triton').double().eval()
    fast_model.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 112, 137, dtype=torch.float64)
    with torch.no_grad():
        outs, fast = model(x), fast_model(x)
    assert [o.shape[1:] for o in outs] == [(48, 28, 35), (96, 14, 18), (240, 7, 9), (384, 4, 5)]
    for out, other in zip(outs, fast):
        torch.testing.assert_close(other, out, atol=1e-10, rtol=1e-8)


def test_out_indices_and_out_norms():
    model = HATNet(SMALL_ARCH, out_indices=(1, 3), out_norms=True)
    outs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape for o in outs] == [(2, 32, 8, 8), (2, 64, 2, 2)]
    assert hasattr(model, 'norm1') and not hasattr(model, 'norm0')
    for out in outs:   # LayerNorm2d at init: zero mean over channels at every position
        torch.testing.assert_close(out.mean(1), torch.zeros_like(out.mean(1)), atol=1e-5, rtol=0)
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not any(n.startswith('norm') for n, _ in HATNet(SMALL_ARCH).named_parameters())


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 4])
def test_frozen_stages(frozen_stages):
    """mmdet's convention: 0 freezes the stem (patch_embed) only, k the stem and stages 0..k-1."""
    model = HATNet(SMALL_ARCH, frozen_stages=frozen_stages, out_norms=True)
    entries = [None, model.ds2, model.ds3, model.ds4]
    stages = [([entries[i]] if i else []) + [model.blocks[i], getattr(model, f'norm{i}')] for i in range(4)]
    assert_frozen_stages(model, [model.patch_embed], stages, frozen_stages)


@pytest.mark.parametrize('out_indices,error,match', BAD_OUT_INDICES)
def test_bad_out_indices_are_named(out_indices, error, match):
    with pytest.raises(error, match=match):
        HATNet(SMALL_ARCH, out_indices=out_indices)


def test_negative_out_indices_count_from_the_end():
    model = HATNet(SMALL_ARCH, out_indices=(-1, )).eval()
    assert model.out_indices == (3, )
    assert [o.shape[1] for o in model(torch.randn(1, 3, 32, 32))] == [64]


def test_norm_eval_is_accepted_and_model_has_no_batchnorm():
    model = HATNet(SMALL_ARCH, norm_eval=True).train()
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model.blocks[0][0].training


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    plain = HATNet(SMALL_ARCH)
    checkpointed = HATNet(SMALL_ARCH, with_cp=True)
    assert_checkpointing_keeps_gradients(plain, checkpointed, torch.randn(2, 3, 40, 48))


def test_drop_path_rate_is_linear_over_blocks():
    model = HATNet(SMALL_ARCH, drop_path_rate=0.3)
    assert_drop_path_linear(model.blocks, 0.3, 4)


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), "arch='huge'"),
    (dict(arch={k: v for k, v in SMALL_ARCH.items() if k != 'kernel_sizes'}), 'kernel_sizes'),
    (dict(arch=dict(SMALL_ARCH, depths=(1, 1, 1))), 'depths'),
    (dict(arch=dict(SMALL_ARCH, head_dim=12)), 'head_dim'),
    (dict(arch=SMALL_ARCH, out_indices=(4, )), 'out_indices'),
    (dict(arch=SMALL_ARCH, frozen_stages=5), r'frozen_stages=5 must be an int in \[-1, 4\]'),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HATNet(**kwargs)


def save_official_checkpoint(fixture, path, extra=None):
    """Write the fixture's weights as a PVT-style training run saves them (DDP prefix included)."""
    state_dict = dict(fixture['state_dict'], **(extra or {}))
    torch.save({'model': {f'module.{k}': v for k, v in state_dict.items()}, 'epoch': 300}, path)


def test_init_cfg_loads_official_imagenet_checkpoint(backbone_fixture, tmp_path):
    path = str(tmp_path / 'HAT-Net_official.pth')
    save_official_checkpoint(backbone_fixture, path)
    model = HATNet(**official_config_to_kwargs(backbone_fixture['config']), out_norms=True,
                   init_cfg=dict(type='Pretrained', checkpoint=path)).double()
    model.init_weights()
    assert_imagenet_weights_loaded(model, official_model(backbone_fixture), atol=0, rtol=0)
    with torch.no_grad():
        outs = model.eval()(backbone_fixture['input'])
    torch.testing.assert_close(outs[3], torch.nn.functional.layer_norm(
        backbone_fixture['outs'][3].permute(0, 2, 3, 1), (64, ), eps=1e-6).permute(0, 3, 1, 2),
                               atol=1e-9, rtol=1e-7)


def test_init_cfg_refuses_unexpected_keys(backbone_fixture, tmp_path):
    path = str(tmp_path / 'bad.pth')
    save_official_checkpoint(backbone_fixture, path, extra={'blocks.0.0.attn.extra.weight': torch.ones(2)})
    model = HATNet(**official_config_to_kwargs(backbone_fixture['config']),
                   init_cfg=dict(type='Pretrained', checkpoint=path))
    assert_load_refused(model, model.init_weights, 'blocks.0.0.attn.extra.weight')


def test_init_cfg_refuses_missing_and_mismatched_keys(backbone_fixture, tmp_path):
    path = str(tmp_path / 'official.pth')
    save_official_checkpoint(backbone_fixture, path)
    kwargs = official_config_to_kwargs(backbone_fixture['config'])
    kwargs['arch'] = dict(kwargs['arch'], depths=(1, 2, 3, 1), kernel_sizes=(3, 3, 5, 3))
    model = HATNet(**kwargs, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(RuntimeError, match=r'missing keys: blocks\.2\.2\..*shape mismatches: blocks\.0\.0\.conv'):
        model.init_weights()


def test_init_cfg_missing_file_is_a_clear_error(tmp_path):
    model = HATNet(SMALL_ARCH, init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nope.pth')))
    with pytest.raises(FileNotFoundError, match='nope.pth'):
        model.init_weights()


def test_feed_forward_silu_runs_in_place_with_the_same_outputs_and_gradients():
    from mmsparse.models.backbones.hat_net import InvertedResidual
    torch.manual_seed(0)
    model = HATNet(SMALL_ARCH).double()
    model.init_weights()
    silus = [m for ffn in model.modules() if isinstance(ffn, InvertedResidual) for m in ffn.modules()
             if isinstance(m, torch.nn.SiLU)]
    assert len(silus) == 2 * sum(SMALL_ARCH['depths']) and all(m.inplace for m in silus)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    results = []
    for inplace in (True, False):
        for m in silus:
            m.inplace = inplace
        model.zero_grad()
        outs = model(x)
        sum(o.square().sum() for o in outs).backward()
        results.append(([o.detach() for o in outs], [p.grad.clone() for p in model.parameters()]))
    for got, expected in zip(*(outs + grads for outs, grads in results)):
        torch.testing.assert_close(got, expected, atol=0, rtol=0)
