"""mmsparse.FibottentionViT: presets, shapes, options, official outputs and checkpoint loading."""
import pytest
import torch
import torch.nn.functional as F

# Imported first: it sets TRITON_INTERPRET=1 (no GPU) before anything can import triton.
from ...test_ops.kernels import needs_triton
from mmsparse.models.backbones import FibottentionViT
from mmsparse.models.utils import vit_official_to_mmsparse
from mmsparse.ops.fibottention import fibottention_mask
from .utils import BAD_OUT_INDICES, assert_frozen_stages

TINY_ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=2)


@pytest.fixture(scope='module')
def vit_fixture(load_official):
    return load_official('fibottention_vit_reduced.pt')


def official_model(fixture, shuffle='per_layer', backend=None, **kwargs):
    """The fixture's official ViT (official zero-logit mode) with its weights loaded strictly."""
    config = fixture['config']
    arch = dict(embed_dims=config['embed_dim'], num_layers=config['depth'], num_heads=config['num_heads'],
                mlp_ratio=config['mlp_ratio'])
    model = FibottentionViT(arch, img_size=config['img_size'], patch_size=config['patch_size'],
                            attn_mode='official', shuffle=shuffle, out_indices=(config['depth'] - 1, ),
                            out_scales=(1, ), backend=backend, **kwargs).double().eval()
    model.load_state_dict(vit_official_to_mmsparse(fixture['state_dict']), strict=True)
    return model


def logits_of(tokens, state_dict):
    """The official classifier: CLS token of the final-norm output -> head."""
    return F.linear(tokens[:, 0], state_dict['head.weight'], state_dict['head.bias'])


@pytest.mark.parametrize('arch, encoder_params', [
    ('tiny', 5_524_416),       # DeiT-T / ViT-T/16: 5,717,416 with the 1000-way head
    ('small', 21_665_664),     # DeiT-S / ViT-S/16: 22,050,664
    ('base', 85_798_656),      # ViT-B/16: 86,567,656
    ('large', 303_301_632),    # ViT-L/16: 304,326,632
])
def test_preset_parameter_counts(arch, encoder_params, monkeypatch):
    # Skip torch's per-layer default init (ViT-L takes seconds); counts do not depend on it.
    for layer in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.ConvTranspose2d):
        monkeypatch.setattr(layer, 'reset_parameters', lambda self: None)
    model = FibottentionViT(arch)
    encoder = sum(p.numel() for name, p in model.named_parameters() if not name.startswith('rescales.'))
    assert encoder == encoder_params
    dims = model.embed_dims
    assert encoder + dims * 1000 + 1000 == {'tiny': 5_717_416, 'small': 22_050_664, 'base': 86_567_656,
                                            'large': 304_326_632}[arch]
    # Pyramid: deconv x4 (2 transposed convs + LayerNorm2d) and deconv x2; identity and pooling are free.
    deconv = dims * dims * 4 + dims
    assert sum(p.numel() for p in model.rescales.parameters()) == 3 * deconv + 2 * dims


@pytest.mark.parametrize('shuffle, logits_key, tokens_key', [
    ('per_layer', 'logits', 'tokens'),                       # official evaluate(): mask per layer
    ('shared', 'logits_shared_mask', 'tokens_shared_mask'),  # official training: layer-0 mask
])
def test_reproduces_official_model(vit_fixture, shuffle, logits_key, tokens_key):
    model = official_model(vit_fixture, shuffle)
    with torch.no_grad():
        tokens = model.forward_tokens(vit_fixture['input'])
    tol = dict(atol=vit_fixture['atol'], rtol=vit_fixture['rtol'])
    torch.testing.assert_close(tokens, vit_fixture[tokens_key], **tol)
    torch.testing.assert_close(logits_of(tokens, vit_fixture['state_dict']), vit_fixture[logits_key], **tol)
    # The two shuffles differ by up to 0.5 in logits: the comparison separates them.
    other = 'logits_shared_mask' if shuffle == 'per_layer' else 'logits'
    assert (logits_of(tokens, vit_fixture['state_dict']) - vit_fixture[other]).abs().max() > 0.1


def test_layer_masks_match_official(vit_fixture):
    grid = (8, 8)
    per_layer = official_model(vit_fixture, 'per_layer')
    shared = official_model(vit_fixture, 'shared')
    for i, expected in enumerate(vit_fixture['layer_masks']):
        assert torch.equal(fibottention_mask(per_layer.blocks[i].attn.pattern(grid, 'cpu')), expected)
        assert torch.equal(fibottention_mask(shared.blocks[i].attn.pattern(grid, 'cpu')),
                           vit_fixture['shared_mask'])


@needs_triton
def test_triton_backend_reproduces_official_model(vit_fixture):
    model = official_model(vit_fixture, backend='triton')
    with torch.no_grad():
        tokens = model.forward_tokens(vit_fixture['input'])
    torch.testing.assert_close(tokens, vit_fixture['tokens'], atol=vit_fixture['atol'], rtol=vit_fixture['rtol'])


@pytest.mark.parametrize('size', [(67, 93), (31, 17), (16, 16)])
@pytest.mark.parametrize('kwargs', [
    dict(attn_mode='sparse'),
    dict(attn_mode='official'),
    dict(offset_layout='2d'),
    dict(attention='dense'),
])
def test_any_input_size(size, kwargs):
    model = FibottentionViT(TINY_ARCH, img_size=64, **kwargs)
    x = torch.randn(2, 3, *size, requires_grad=True)
    outs = model(x)
    gh, gw = -(-size[0] // 16), -(-size[1] // 16)
    assert [tuple(o.shape) for o in outs] == [(2, 32, 4 * gh, 4 * gw), (2, 32, 2 * gh, 2 * gw), (2, 32, gh, gw),
                                              (2, 32, -(-gh // 2), -(-gw // 2))]
    sum(o.sum() for o in outs).backward()
    assert torch.isfinite(x.grad).all()
    assert model.pos_embed.grad is not None and torch.isfinite(model.pos_embed.grad).all()


def test_attention_switch_changes_only_attention():
    torch.manual_seed(0)
    sparse = FibottentionViT(TINY_ARCH, img_size=64).eval()
    dense = FibottentionViT(TINY_ARCH, img_size=64, attention='dense').eval()
    dense.load_state_dict(sparse.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        assert not torch.allclose(sparse(x)[-1], dense(x)[-1], atol=1e-3)


def test_out_indices_and_scales():
    model = FibottentionViT(TINY_ARCH, out_indices=(3, 1, -4), out_scales=(0.5, 1, 2)).eval()
    assert model.out_indices == (3, 1, 0)
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [2, 4, 8]
    assert FibottentionViT(dict(TINY_ARCH, num_layers=12)).out_indices == (2, 5, 8, 11)
    assert FibottentionViT(TINY_ARCH).out_indices == (0, 1, 2, 3)


def test_with_cp_matches():
    torch.manual_seed(0)
    model = FibottentionViT(TINY_ARCH).train()
    model_cp = FibottentionViT(TINY_ARCH, with_cp=True).train()
    model_cp.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 48, 40)
    out, out_cp = model(x)[0], model_cp(x)[0]
    out.sum().backward()
    out_cp.sum().backward()
    torch.testing.assert_close(out, out_cp)
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight.grad, model_cp.blocks[0].attn.qkv.weight.grad)


@pytest.mark.parametrize('frozen_stages', [-1, 0, 2, 4])
def test_frozen_stages(frozen_stages):
    """mmdet's convention, blocks as stages: 0 freezes the stem only, k the stem and blocks 0..k-1."""
    model = FibottentionViT(TINY_ARCH, frozen_stages=frozen_stages, drop_path_rate=0.1)
    assert_frozen_stages(model, [model.patch_embed], [[b] for b in model.blocks], frozen_stages)
    stem_frozen = frozen_stages >= 0
    assert model.cls_token.requires_grad != stem_frozen and model.pos_embed.requires_grad != stem_frozen


@pytest.mark.parametrize('out_indices,error,match', BAD_OUT_INDICES)
def test_bad_out_indices_are_named(out_indices, error, match):
    with pytest.raises(error, match=match):
        FibottentionViT(TINY_ARCH, out_indices=out_indices, out_scales=(1, ) * 2)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(arch='huge'), ValueError, "arch='huge'"),
    (dict(arch=dict(embed_dims=30, num_layers=2, num_heads=4, mlp_ratio=4)), ValueError, 'num_heads'),
    (dict(arch=TINY_ARCH, out_indices=(4, )), ValueError, 'out_indices'),
    (dict(arch=TINY_ARCH, out_indices=(1, 3)), ValueError, 'out_scales'),
    (dict(arch=TINY_ARCH, out_indices=(3, ), out_scales=(8, )), ValueError, 'scale=8'),
    (dict(arch=TINY_ARCH, frozen_stages=5), ValueError, r'frozen_stages=5 must be an int in \[-1, 4\]'),
    (dict(arch=TINY_ARCH, frozen_stages=1.0), TypeError, r'frozen_stages=1\.0 must be an int'),
    (dict(arch=TINY_ARCH, attention='flash'), ValueError, "attention='flash'"),
    (dict(arch=TINY_ARCH, attn_mode='zero'), ValueError, "mode='zero'"),
    (dict(arch=TINY_ARCH, shuffle='random'), ValueError, "shuffle='random'"),
    (dict(arch=TINY_ARCH, attention='dense', shuffle='random'), ValueError, "shuffle='random'"),
    (dict(arch=TINY_ARCH, offset_layout='3d'), ValueError, "offset_layout='3d'"),
])
def test_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        FibottentionViT(**kwargs)


def _save_official(fixture, path, **extra):
    state_dict = dict(fixture['state_dict'], **extra)
    torch.save({'model': state_dict, 'epoch': 99}, path)   # MAE-style official checkpoint
    return str(path)


def test_init_cfg_loads_official_checkpoint(vit_fixture, tmp_path):
    config = vit_fixture['config']
    checkpoint = _save_official(vit_fixture, tmp_path / 'official.pth')
    arch = dict(embed_dims=48, num_layers=3, num_heads=3, mlp_ratio=4)
    model = FibottentionViT(arch, img_size=config['img_size'], patch_size=4, attn_mode='official',
                            out_indices=(2, ), out_scales=(1, ),
                            init_cfg=dict(type='Pretrained', checkpoint=checkpoint)).double()
    model.init_weights()
    model.eval()
    with torch.no_grad():
        tokens = model.forward_tokens(vit_fixture['input'])
    torch.testing.assert_close(tokens, vit_fixture['tokens'], atol=1e-10, rtol=1e-8)

    # A different pretraining size: pos_embed is resized on load, nothing else changes.
    model = FibottentionViT(arch, img_size=48, patch_size=4, out_indices=(2, ), out_scales=(1, ),
                            init_cfg=dict(type='Pretrained', checkpoint=checkpoint))
    model.init_weights()
    assert model.pos_embed.shape == (1, 1 + 12 * 12, 48)


@pytest.mark.parametrize('mutate, match', [
    (lambda sd: sd.update({'blocks.3.norm1.weight': torch.ones(48)}), 'unexpected keys: blocks.3.norm1.weight'),
    (lambda sd: sd.pop('blocks.1.attn.qkv.bias'), 'missing keys: blocks.1.attn.qkv.bias'),
])
def test_init_cfg_reports_key_mismatches(vit_fixture, tmp_path, mutate, match):
    state_dict = dict(vit_fixture['state_dict'])
    mutate(state_dict)
    path = tmp_path / 'bad.pth'
    torch.save({'model': state_dict}, path)
    model = FibottentionViT(dict(embed_dims=48, num_layers=3, num_heads=3, mlp_ratio=4), img_size=32,
                            patch_size=4, out_indices=(2, ), out_scales=(1, ),
                            init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(RuntimeError, match=match):
        model.init_weights()


def test_loads_deit_distilled_layout(tmp_path):
    """DeiT-distilled checkpoints: dist_token and head_dist go, with their pos_embed slot."""
    source = FibottentionViT(TINY_ARCH, img_size=32, out_indices=(3, ), out_scales=(1, ))
    state_dict = {k: v for k, v in source.state_dict().items()}
    pos = state_dict['pos_embed']
    state_dict.update(pos_embed=torch.cat([pos[:, :1], torch.zeros(1, 1, 32), pos[:, 1:]], dim=1),
                      dist_token=torch.zeros(1, 1, 32), **{'head.weight': torch.zeros(10, 32),
                                                           'head_dist.weight': torch.zeros(10, 32)})
    converted = vit_official_to_mmsparse(state_dict)
    assert set(converted) == set(source.state_dict())
    torch.testing.assert_close(converted['pos_embed'], pos)
