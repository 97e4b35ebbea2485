"""mmsparse.BiFormer: presets, shapes, options, official outputs and checkpoint loading."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from mmsparse.models.attentions import BiLevelRoutingAttention, GlobalAttentionLePE
from mmsparse.models.backbones import BiFormer
from .utils import (BAD_OUT_INDICES, assert_checkpointing_keeps_gradients, assert_drop_path_linear,
                    assert_frozen_stages, assert_imagenet_weights_loaded, assert_load_refused,
                    downsampling_stem_and_stages)

TINY_ARCH = dict(depths=(1, 1, 2, 1), embed_dims=(16, 32, 64, 128), head_dim=8)
# A BiFormer small enough for any test: BRA with n_win=2 in stages 1-3, global attention in stage 4.
TINY_KWARGS = dict(arch=TINY_ARCH, n_win=2, topks=(1, 2, 4, -1))
# Official names of the BRA sub-layers (``QKVLinear.qkv`` and ``wo``); stage 4 keeps ``qkv``/``proj``.
OFFICIAL_BRA_LAYERS = {'qkv': 'qkv.qkv', 'proj': 'wo'}
OFFICIAL_BLOCK_LAYERS = {'cpe': 'pos_embed', 'mlp.fc1': 'mlp.0', 'mlp.fc2': 'mlp.3'}


def official_config_to_kwargs(config):
    """The fixture's official constructor kwargs -> mmsparse.BiFormer kwargs."""
    topks = tuple(-1 if t == -2 else t for t in config['topks'])
    return dict(arch=dict(depths=config['depth'], embed_dims=config['embed_dim'], head_dim=config['head_dim']),
                n_win=config['n_win'], topks=topks, mlp_ratios=config['mlp_ratios'], auto_pad=config['auto_pad'])


@pytest.fixture(scope='module')
def backbone_fixture(load_official):
    return load_official('biformer_backbone_tiny_reduced.pt')


def to_official_layout(model):
    """``model``'s weights under the official ``BiFormer_mm`` names: the inverse of the converter.

    Written from the official module tree, independently of ``biformer_official_to_mmsparse``;
    :func:`test_official_layout_matches_official_state_dict` checks it on the official fixture.
    """
    routing = {name for name, m in model.named_modules() if isinstance(m, BiLevelRoutingAttention)}
    official = {}
    for key, value in model.state_dict().items():
        module, _, tensor = key.rpartition('.')
        parent, _, layer = module.rpartition('.')
        if parent in routing:
            module = f'{parent}.{OFFICIAL_BRA_LAYERS.get(layer, layer)}'
        for name, official_name in OFFICIAL_BLOCK_LAYERS.items():
            if module.startswith('stages.') and module.endswith(f'.{name}'):
                module = module[:-len(name)] + official_name
        if module.startswith('norm'):
            module = f'extra_norms.{module[len("norm"):]}'
        official[f'{module}.{tensor}'] = value.clone()
    return official


def randomized(model, seed=0):
    """``model`` with every parameter redrawn, so that no tensor is left at a symmetric init."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.2 * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return model.eval()


def lepe_convs(model):
    """The LePE conv of every block, stage by stage."""
    return [[block.attn.lepe for block in stage] for stage in model.stages]


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


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 4])
def test_frozen_stages(frozen_stages):
    """mmdet's convention: 0 freezes the stem only, k the stem and stages 0..k-1."""
    model = BiFormer(**TINY_KWARGS, frozen_stages=frozen_stages)
    assert_frozen_stages(model, *downsampling_stem_and_stages(model), frozen_stages)


@pytest.mark.parametrize('out_indices,error,match', BAD_OUT_INDICES)
def test_bad_out_indices_are_named(out_indices, error, match):
    with pytest.raises(error, match=match):
        BiFormer(**TINY_KWARGS, out_indices=out_indices)


def test_negative_out_indices_count_from_the_end():
    model = BiFormer(**TINY_KWARGS, out_indices=(-1, )).eval()
    assert model.out_indices == (3, )
    assert [o.shape[1] for o in model(torch.randn(1, 3, 32, 32))] == [128]


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
    assert_drop_path_linear(model.stages, 0.4, 5)


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), "arch='huge'"),
    (dict(arch=dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128))), 'head_dim'),
    (dict(arch=dict(depths=(1, 1, 1), embed_dims=(16, 32, 64, 128), head_dim=8)), 'depths'),
    (dict(arch=TINY_ARCH, out_indices=(4, )), 'out_indices'),
    (dict(arch=TINY_ARCH, frozen_stages=5), r'frozen_stages=5 must be an int in \[-1, 4\]'),
    (dict(arch=TINY_ARCH, topks=(1, 4, 16)), 'topks'),
    (dict(arch=TINY_ARCH, topks=(1, 4, 16, -2)), 'topk=-2'),
    (dict(arch=TINY_ARCH, n_win=3, topks=(1, 4, 16, -1)), 'topk=16'),
    (dict(arch=TINY_ARCH, side_dwconv=4), 'side_dwconv=4 is not allowed.*positive odd int'),
    (dict(arch=TINY_ARCH, side_dwconv=0), 'side_dwconv=0 is not allowed.*positive odd int'),
    (dict(arch=TINY_ARCH, side_dwconv=-3), 'side_dwconv=-3 is not allowed.*positive odd int'),
    (dict(arch=TINY_ARCH, side_dwconv=3.0), 'side_dwconv=3.0 is not allowed.*positive odd int'),
])
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BiFormer(**kwargs)


def test_official_layout_matches_official_state_dict(backbone_fixture):
    official = to_official_layout(official_model(backbone_fixture))
    expected = backbone_fixture['state_dict']
    assert official.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(official[key], value, atol=0, rtol=0, msg=key)


@pytest.mark.parametrize('side_dwconv', [3, 7])
def test_side_dwconv_sets_every_lepe_kernel(side_dwconv):
    model = BiFormer(**TINY_KWARGS, side_dwconv=side_dwconv).eval()
    convs = lepe_convs(model)
    assert [len(stage) for stage in convs] == list(TINY_ARCH['depths'])
    assert isinstance(model.stages[3][0].attn, GlobalAttentionLePE)
    for i, stage in enumerate(convs):
        for conv in stage:
            assert conv.kernel_size == (side_dwconv, side_dwconv)
            assert conv.padding == (side_dwconv // 2, side_dwconv // 2)
            assert conv.groups == conv.in_channels == TINY_ARCH['embed_dims'][i]
    # Only the LePE weights grow or shrink with the kernel: C * (k*k - 25) per block.
    default = sum(p.numel() for p in BiFormer(**TINY_KWARGS).parameters())
    lepe_channels = sum(d * n for d, n in zip(TINY_ARCH['embed_dims'], TINY_ARCH['depths']))
    assert sum(p.numel() for p in model.parameters()) == default + lepe_channels * (side_dwconv**2 - 25)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 61, 45))
    assert [o.shape for o in outs] == [(1, 16, 16, 12), (1, 32, 8, 6), (1, 64, 4, 3), (1, 128, 2, 2)]


def test_side_dwconv_kernels_are_centred():
    """A 3x3 LePE equals the 5x5 LePE holding it zero-padded, in every stage: the
    kernel size changes the receptive field and nothing else."""
    small = randomized(BiFormer(**TINY_KWARGS, side_dwconv=3).double())
    large = BiFormer(**TINY_KWARGS).double().eval()
    large.load_state_dict({k: F.pad(v, (1, 1, 1, 1)) if k.endswith('.attn.lepe.weight') else v
                           for k, v in small.state_dict().items()})
    x = torch.randn(2, 3, 61, 45, dtype=torch.double)
    with torch.no_grad():
        for out, expected in zip(large(x), small(x)):
            torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-8)


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
    assert_imagenet_weights_loaded(model, official_model(backbone_fixture))


def test_init_cfg_refuses_unexpected_keys(backbone_fixture, tmp_path):
    path = str(tmp_path / 'bad.pth')
    save_official_checkpoint(backbone_fixture, path, extra={'stages.0.0.attn.extra.weight': torch.ones(2)})
    kwargs = official_config_to_kwargs(backbone_fixture['config'])
    model = BiFormer(**kwargs, init_cfg=dict(type='Pretrained', checkpoint=path))
    assert_load_refused(model, model.init_weights, 'stages.0.0.attn.extra.weight')


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


def save_official_mm_checkpoint(model, path):
    """Write ``model``'s weights as an official mmdet/mmseg ``BiFormer_mm`` checkpoint."""
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in to_official_layout(model).items()}}, path)


@pytest.fixture
def side_dwconv_3_checkpoint(tmp_path):
    """A random side_dwconv=3 BiFormer and the path of its weights in the official layout."""
    source = randomized(BiFormer(**TINY_KWARGS, side_dwconv=3))
    path = str(tmp_path / 'biformer_side_dwconv3_official.pth')
    save_official_mm_checkpoint(source, path)
    return source, path


def test_init_cfg_loads_official_checkpoint_of_other_side_dwconv(side_dwconv_3_checkpoint):
    source, path = side_dwconv_3_checkpoint
    model = BiFormer(**TINY_KWARGS, side_dwconv=3, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()  # strict: every key of the model and of the checkpoint matched
    model.eval()
    assert model.state_dict().keys() == source.state_dict().keys()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, atol=0, rtol=0, msg=key)
    x = torch.randn(2, 3, 61, 45)
    with torch.no_grad():
        for out, expected in zip(model(x), source(x)):
            torch.testing.assert_close(out, expected, atol=0, rtol=0)


@pytest.mark.parametrize('strict', [True, False])
def test_init_cfg_refuses_other_side_dwconv(side_dwconv_3_checkpoint, strict):
    _, path = side_dwconv_3_checkpoint
    model = BiFormer(**TINY_KWARGS, init_cfg=dict(type='Pretrained', checkpoint=path, strict=strict))
    assert_load_refused(model, model.init_weights, r'made with side_dwconv=3 .* model has side_dwconv=5')


def test_load_state_dict_refuses_other_side_dwconv():
    source = BiFormer(**TINY_KWARGS, side_dwconv=7)
    model = BiFormer(**TINY_KWARGS, side_dwconv=3)
    assert_load_refused(model, lambda: model.load_state_dict(source.state_dict()),
                        r'made with side_dwconv=7 .* model has side_dwconv=3')
