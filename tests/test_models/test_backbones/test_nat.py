"""mmsparse.NAT (NAT and DiNAT): presets, shapes, options, official outputs and checkpoint loading."""
import math

import pytest
import torch

from mmsparse.models.backbones import NAT
from mmsparse.models.utils import nat_official_to_mmsparse
from .utils import (BAD_OUT_INDICES, assert_checkpointing_keeps_gradients, assert_drop_path_linear,
                    assert_frozen_stages, assert_imagenet_weights_loaded, assert_load_refused,
                    downsampling_stem_and_stages)

TINY_ARCH = dict(embed_dims=16, depths=(1, 2, 2, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2.)
TINY_DILATIONS = [[4], [1, 2], [1, 3], [1]]
# DiNAT dilations of the official ADE20K 512 configs (tiny/small/base):
# segmentation/configs/dinat/upernet_dinat_{tiny,small,base}_512x512_160k_ade20k.py of
# https://github.com/SHI-Labs/Neighborhood-Attention-Transformer (commit 73336ab).
ADE_DILATIONS = [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]]
F64_TOL = dict(atol=1e-9, rtol=1e-7)
F32_TOL = dict(atol=2e-5, rtol=1e-4)


def official_config_to_kwargs(config):
    """The fixture's official constructor kwargs -> mmsparse.NAT kwargs."""
    arch = dict(embed_dims=config['embed_dim'], depths=tuple(config['depths']),
                num_heads=tuple(config['num_heads']), mlp_ratio=config['mlp_ratio'])
    return dict(arch=arch, kernel_size=config['kernel_size'], dilations=config.get('dilations'),
                layer_scale=config['layer_scale'], out_indices=tuple(config['out_indices']),
                drop_path_rate=config['drop_path_rate'])


@pytest.fixture(scope='module', params=['nat_backbone_reduced.pt', 'dinat_backbone_reduced.pt'])
def backbone_fixture(request, load_official):
    return load_official(request.param)


def official_model(fixture):
    model = NAT(**official_config_to_kwargs(fixture['config'])).double().eval()
    model.load_state_dict(nat_official_to_mmsparse(fixture['state_dict']), strict=True)
    return model


@pytest.mark.parametrize('arch,layer_scale,backbone_params,classifier_params', [
    ('mini', None, 19_472_070, 19_984_174),
    ('tiny', None, 27_389_478, 27_901_582),
    ('small', 1e-5, 49_975_641, 50_743_297),    # NAT-S
    ('small', None, 49_952_025, 50_719_681),    # DiNAT-S
    ('base', 1e-5, 88_746_444, 89_769_652),
    ('large', None, 199_409_202, 200_943_514),  # DiNAT-L
])
def test_preset_parameter_counts(arch, layer_scale, backbone_params, classifier_params):
    """The official dense backbones and (swapping norm0..3 for norm + head) classifiers.

    Counts of the official ``detection/nat.py`` and ``classification/{nat,dinat}.py`` presets
    (https://github.com/SHI-Labs/Neighborhood-Attention-Transformer), as listed in
    ``configs/nat/README.md``.
    """
    model = NAT(arch, layer_scale=layer_scale)
    count = sum(p.numel() for p in model.parameters())
    assert count == backbone_params
    dims = model.embed_dims
    with_head = count - 2 * sum(dims) + 2 * dims[-1] + dims[-1] * 1000 + 1000
    assert with_head == classifier_params


@pytest.mark.parametrize('input_key,output_key', [('input', 'outputs'), ('input_small', 'outputs_small')])
def test_reproduces_official_outputs(backbone_fixture, input_key, output_key):
    """Covers d=1/2/3, maps exactly k*d wide and NATTEN 0.14.4's pad-then-crop path of small maps
    (https://github.com/SHI-Labs/NATTEN/blob/v0.14.4/natten/natten2d.py; ``docs/design.md``)."""
    model = official_model(backbone_fixture)
    with torch.no_grad():
        outs = model(backbone_fixture[input_key])
    assert len(outs) == 4
    for out, expected in zip(outs, backbone_fixture[output_key]):
        assert out.shape == expected.shape
        torch.testing.assert_close(out, expected, **F64_TOL)


def test_float32_close_to_official(backbone_fixture):
    model = official_model(backbone_fixture).float()
    with torch.no_grad():
        outs = model(backbone_fixture['input_small'].float())
    for out, expected in zip(outs, backbone_fixture['outputs_small']):
        torch.testing.assert_close(out, expected.float(), **F32_TOL)


@pytest.mark.parametrize('size', [(511, 511), (112, 137), (17, 9), (1, 1)])
def test_any_input_size(size):
    """(17, 9) and (1, 1): every stage is smaller than k*d, so every layer pads."""
    model = NAT(TINY_ARCH, dilations=TINY_DILATIONS).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    height, width = size
    for i, out in enumerate(outs):
        height, width = math.ceil(height / (4 if i == 0 else 2)), math.ceil(width / (4 if i == 0 else 2))
        assert out.shape == (1, 16 * 2**i, height, width)
        assert torch.isfinite(out).all()


def test_dinat_preset_any_input_size():
    model = NAT('mini', dilations=[d[:depth] for d, depth in zip(ADE_DILATIONS, (3, 4, 6, 5))]).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 112, 137))
    assert [o.shape[1:] for o in outs] == [(64, 28, 35), (128, 14, 18), (256, 7, 9), (512, 4, 5)]


def test_out_indices_select_maps_and_norms():
    model = NAT(TINY_ARCH, dilations=TINY_DILATIONS, out_indices=(1, 3))
    outs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape for o in outs] == [(2, 32, 8, 8), (2, 128, 2, 2)]
    assert hasattr(model, 'norm1') and not hasattr(model, 'norm0')
    # Every parameter takes part in the loss (no unused parameters under DDP).
    sum(o.sum() for o in outs).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_none_dilation_means_one():
    model = NAT(TINY_ARCH, dilations=[[None], [1, None], [2, 3], [1]])
    assert model.dilations == [[1], [1, 1], [2, 3], [1]]


def test_layer_scale_and_dilations_reach_the_blocks():
    model = NAT(TINY_ARCH, dilations=TINY_DILATIONS, layer_scale=0.5)
    blocks = [b for stage in model.stages for b in stage]
    assert [b.attn.dilation for b in blocks] == [4, 1, 2, 1, 3, 1]
    assert all(torch.equal(b.gamma1, torch.full((b.norm1.normalized_shape[0], ), 0.5)) for b in blocks)
    assert NAT(TINY_ARCH).stages[0][0].gamma1 is None


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 4])
def test_frozen_stages(frozen_stages):
    """mmdet's convention: 0 freezes the stem only, k the stem and stages 0..k-1."""
    model = NAT(TINY_ARCH, frozen_stages=frozen_stages)
    assert_frozen_stages(model, *downsampling_stem_and_stages(model), frozen_stages)


@pytest.mark.parametrize('out_indices,error,match', BAD_OUT_INDICES)
def test_bad_out_indices_are_named(out_indices, error, match):
    with pytest.raises(error, match=match):
        NAT(TINY_ARCH, out_indices=out_indices)


def test_negative_out_indices_count_from_the_end():
    model = NAT(TINY_ARCH, out_indices=(-1, 0)).eval()
    assert model.out_indices == (3, 0)
    assert [o.shape[1] for o in model(torch.randn(1, 3, 32, 32))] == [16, 128]


def test_train_returns_self_and_norm_eval_is_accepted():
    model = NAT(TINY_ARCH, norm_eval=True)
    assert model.train() is model and model.eval() is model


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    plain = NAT(TINY_ARCH, dilations=TINY_DILATIONS, drop_path_rate=0.)
    checkpointed = NAT(TINY_ARCH, dilations=TINY_DILATIONS, drop_path_rate=0., with_cp=True)
    assert_checkpointing_keeps_gradients(plain, checkpointed, torch.randn(2, 3, 40, 48))


def test_drop_path_rate_is_linear_over_blocks():
    model = NAT(TINY_ARCH, drop_path_rate=0.5)
    assert_drop_path_linear(model.stages, 0.5, 6)


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), "arch='huge'"),
    (dict(arch=dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8))), 'mlp_ratio'),
    (dict(arch=dict(TINY_ARCH, depths=(1, 1, 1))), 'depths'),
    (dict(arch=dict(TINY_ARCH, num_heads=(3, 2, 4, 8))), r"num_heads'\]\[0\]=3 must divide the width 16 of stage 0"),
    (dict(arch=TINY_ARCH, dilations=[[1], [1, 2], [1, 3]]), 'dilations='),
    (dict(arch=TINY_ARCH, dilations=[[1, 2], [1, 2], [1, 3], [1]]), 'dilations='),
    (dict(arch=TINY_ARCH, kernel_size=6), 'kernel_size=6'),
    (dict(arch=TINY_ARCH, dilations=[[0], [1, 2], [1, 3], [1]]), r'dilations\[0\]\[0\]=0'),
    (dict(arch=TINY_ARCH, dilations=[[1], [1, 2], [1, 2.5], [1]]), r'dilations\[2\]\[1\]=2.5'),
    (dict(arch=TINY_ARCH, drop_path_rate=1.0), 'drop_path_rate=1.0'),
    (dict(arch=TINY_ARCH, out_indices=(4, )), 'out_indices'),
    (dict(arch=TINY_ARCH, frozen_stages=5), r'frozen_stages=5 must be an int in \[-1, 4\]'),
    (dict(arch=TINY_ARCH, frozen_stages=-2), r'frozen_stages=-2 must be an int in \[-1, 4\]'),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NAT(**kwargs)


def save_official_imagenet_checkpoint(fixture, path, extra=None):
    """The fixture's weights as an official ImageNet checkpoint: flat, classifier norm + head, no norm0..3."""
    state_dict = {k: v for k, v in fixture['state_dict'].items() if not k.startswith('norm')}
    dim = fixture['state_dict']['norm3.weight'].shape[0]
    state_dict.update({'norm.weight': torch.ones(dim), 'norm.bias': torch.zeros(dim),
                       'head.weight': torch.zeros(1000, dim), 'head.bias': torch.zeros(1000)})
    state_dict.update(extra or {})
    torch.save(state_dict, path)


def test_init_cfg_loads_official_imagenet_checkpoint(backbone_fixture, tmp_path):
    path = str(tmp_path / 'nat_official_in1k.pth')
    save_official_imagenet_checkpoint(backbone_fixture, path)
    kwargs = official_config_to_kwargs(backbone_fixture['config'])
    model = NAT(**kwargs, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    assert_imagenet_weights_loaded(model, official_model(backbone_fixture))


def test_init_cfg_loads_official_dense_checkpoint(backbone_fixture, tmp_path):
    """An official mmdet/mmseg checkpoint: 'state_dict', keys under 'backbone.' beside the neck
    and head, norm0..3 included."""
    path = str(tmp_path / 'official_dense.pth')
    state_dict = {f'backbone.{k}': v for k, v in backbone_fixture['state_dict'].items()}
    state_dict.update({'neck.lateral_convs.0.conv.weight': torch.zeros(256, 64, 1, 1),
                       'decode_head.conv_seg.weight': torch.zeros(150, 512, 1, 1)})
    torch.save({'state_dict': state_dict}, path)
    model = NAT(**official_config_to_kwargs(backbone_fixture['config']),
                init_cfg=dict(type='Pretrained', checkpoint=path)).double().eval()
    model.init_weights()
    with torch.no_grad():
        outs = model(backbone_fixture['input'])
    for out, expected in zip(outs, backbone_fixture['outputs']):
        torch.testing.assert_close(out, expected, **F64_TOL)


def test_init_cfg_refuses_unexpected_keys(backbone_fixture, tmp_path):
    path = str(tmp_path / 'bad.pth')
    save_official_imagenet_checkpoint(backbone_fixture, path,
                                      extra={'levels.0.blocks.0.attn.extra.weight': torch.ones(2)})
    model = NAT(**official_config_to_kwargs(backbone_fixture['config']),
                init_cfg=dict(type='Pretrained', checkpoint=path))
    assert_load_refused(model, model.init_weights, r'stages\.0\.0\.attn\.extra\.weight')


def test_init_cfg_refuses_shape_mismatch(backbone_fixture, tmp_path):
    """E.g. a k=7 checkpoint into a k=5 model: the rpb tables, (heads, 2k-1, 2k-1), differ."""
    path = str(tmp_path / 'official.pth')
    save_official_imagenet_checkpoint(backbone_fixture, path)
    kwargs = official_config_to_kwargs(backbone_fixture['config'])
    kwargs['kernel_size'] = 3
    model = NAT(**kwargs, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(RuntimeError, match=r'shape mismatches: .*attn\.rpb'):
        model.init_weights()
