"""The registered token mixers: one interface (MODELS.build on an NHWC map), errors, and oracles.

WindowAttention and Fibottention2d (no CLS) are compared in float64 with dense
attention over the whole map under an explicit mask (atol 1e-12): for the windows,
``-inf`` across windows plus the Swin shift mask (-100) and the relative position
bias, written from token coordinates (no window partition); for Fibottention, the
op's boolean mask (:func:`fibottention_mask`).
"""
import pytest
import torch

from mmsparse.models.attentions import (DenseAttention, Fibottention2d, TokenMixer, WindowAttention,
                                        build_token_mixer, token_mixer_types)
from mmsparse.ops.fibottention import fibottention_mask
from mmsparse.registry import MODELS

# Small configs of every registered mixer, valid at 16 channels / 2 heads.
MIXER_CFGS = {
    'mmsparse.BiLevelRoutingAttention': dict(n_win=2, topk=2, lepe_kernel=3),
    'mmsparse.DenseAttention': dict(),
    'mmsparse.Fibottention2d': dict(layer_id=1),
    'mmsparse.GlobalAttentionLePE': dict(lepe_kernel=3),
    'mmsparse.HierarchicalMHSA': dict(grid_size=4, ds_ratio=2),
    'mmsparse.NeighborhoodAttention2d': dict(kernel_size=3, dilation=2),
    'mmsparse.WindowAttention': dict(window_size=4, shift=True),
}


def test_the_registered_mixers_are_exactly_the_documented_ones():
    assert token_mixer_types() == sorted(MIXER_CFGS)


@pytest.mark.parametrize('name', sorted(MIXER_CFGS))
def test_every_mixer_builds_from_the_registry_and_keeps_the_nhwc_shape(name):
    torch.manual_seed(0)
    mixer = MODELS.build(dict(type=name, **MIXER_CFGS[name]), default_args=dict(embed_dims=16, num_heads=2))
    assert isinstance(mixer, TokenMixer)
    mixer.init_weights()
    x = torch.randn(2, 9, 11, 16, requires_grad=True)
    out = mixer(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # Every output token depends on its own input token (the mixer is not a constant map).
    out[0, 4, 5].sum().backward()
    assert x.grad[0, 4, 5].abs().sum() > 0 and x.grad[1].abs().sum() == 0


@pytest.mark.parametrize('name', sorted(MIXER_CFGS))
def test_an_unknown_argument_fails_at_build_naming_it_and_listing_the_accepted(name):
    cls_name = name.split('.')[1]
    with pytest.raises(TypeError, match=rf"{cls_name} does not take the argument\(s\) 'n_windows'; it takes "
                       r'embed_dims, num_heads, '):
        MODELS.build(dict(type=name, n_windows=3, **MIXER_CFGS[name]),
                     default_args=dict(embed_dims=16, num_heads=2))


def test_build_token_mixer_names_the_config_key():
    with pytest.raises(KeyError, match=r"attn_cfg\[2\]\.type='mmsparse\.BiFormer' is not a registered token "
                       r"mixer; choose one of \['mmsparse\.BiLevelRoutingAttention', "):
        build_token_mixer(dict(type='mmsparse.BiFormer'), 16, 2, where='attn_cfg[2]')
    with pytest.raises(TypeError, match=r"attn_cfg\[1\]: WindowAttention does not take the argument\(s\) "
                       r"'kernel_size'; it takes embed_dims, num_heads, window_size, shift, qkv_bias"):
        build_token_mixer(dict(type='mmsparse.WindowAttention', kernel_size=7), 16, 2, where='attn_cfg[1]')
    with pytest.raises(TypeError, match=r"attn_cfg=\{'window_size': 7\} must be a dict with a type"):
        build_token_mixer(dict(window_size=7), 16, 2)


def test_optional_defaults_reach_only_the_mixers_that_take_them():
    fib = build_token_mixer(dict(type='mmsparse.Fibottention2d'), 16, 2, backend='torch', layer_id=5)
    assert (fib.backend, fib.layer_id) == ('torch', 5)
    # The config wins over the defaults; mixers without the argument do not get it.
    fib = build_token_mixer(dict(type='mmsparse.Fibottention2d', layer_id=1), 16, 2, layer_id=5)
    assert fib.layer_id == 1
    assert isinstance(build_token_mixer(dict(type='mmsparse.WindowAttention'), 16, 2, backend='torch',
                                        layer_id=3), WindowAttention)


def test_neighborhood_attention_without_relative_position_bias():
    mixer = MODELS.build(dict(type='mmsparse.NeighborhoodAttention2d', kernel_size=3, rel_pos_bias=False),
                         default_args=dict(embed_dims=16, num_heads=2))
    assert mixer.rpb is None and not any('rpb' in k for k in mixer.state_dict())
    with_bias = MODELS.build(dict(type='mmsparse.NeighborhoodAttention2d', kernel_size=3),
                             default_args=dict(embed_dims=16, num_heads=2))
    with_bias.load_state_dict(mixer.state_dict(), strict=False)   # rpb stays zero: same numbers
    x = torch.randn(1, 6, 7, 16)
    torch.testing.assert_close(mixer(x), with_bias(x))


def dense_reference(mixer, x, logit_bias):
    """softmax(scale q.k + logit_bias) v through the mixer's projections; x (N, H, W, C), bias (heads, L, L)."""
    n, h, w, c = x.shape
    heads = mixer.num_heads
    qkv = mixer.qkv(x.reshape(n, h * w, c)).reshape(n, h * w, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv
    logits = q @ k.transpose(-1, -2) * (c // heads)**-0.5 + logit_bias
    attn = torch.nan_to_num(logits.softmax(-1))   # rows without a key output zeros
    out = (attn @ v).transpose(1, 2).reshape(n, h * w, c)
    return mixer.proj(out).reshape(n, h, w, c)


def window_logit_bias(mixer, height, width):
    """Window mask, Swin shift mask and relative bias of a padded, rolled height x width map, per token pair."""
    size, shift = mixer.window_size, (mixer.window_size // 2 if mixer.shift else 0)
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')
    ys, xs = ys.flatten(), xs.flatten()

    def region(pos, extent):
        return (pos >= extent - size).long() + (pos >= extent - shift).long() if shift else torch.zeros_like(pos)

    same_window = ((ys[:, None] // size == ys[None] // size) & (xs[:, None] // size == xs[None] // size))
    label = region(ys, height) * 3 + region(xs, width)
    table = mixer.relative_position_bias_table.view(2 * size - 1, 2 * size - 1, -1)
    dy = (ys[:, None] - ys[None]).clamp(-size + 1, size - 1) + size - 1
    dx = (xs[:, None] - xs[None]).clamp(-size + 1, size - 1) + size - 1
    bias = table[dy, dx].permute(2, 0, 1) + (label[:, None] != label[None]) * -100.
    return bias.masked_fill(~same_window, float('-inf'))


@pytest.mark.parametrize('shift', [False, True])
@pytest.mark.parametrize('size', [(8, 12), (7, 10)])
def test_window_attention_matches_masked_dense_attention(shift, size):
    torch.manual_seed(0)
    mixer = WindowAttention(16, 2, window_size=4, shift=shift).double()
    torch.nn.init.normal_(mixer.relative_position_bias_table, std=1.)
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    pad_h, pad_w = -(-size[0] // 4) * 4, -(-size[1] // 4) * 4
    padded = torch.nn.functional.pad(x, (0, 0, 0, pad_w - size[1], 0, pad_h - size[0]))
    s = 2 if shift else 0
    rolled = torch.roll(padded, (-s, -s), dims=(1, 2))
    with torch.no_grad():
        expected = dense_reference(mixer, rolled, window_logit_bias(mixer, pad_h, pad_w))
        expected = torch.roll(expected, (s, s), dims=(1, 2))[:, :size[0], :size[1]]
        torch.testing.assert_close(mixer(x), expected, atol=1e-12, rtol=1e-10)


def test_dense_attention_matches_softmax_attention():
    torch.manual_seed(0)
    mixer = DenseAttention(16, 2).double()
    x = torch.randn(2, 5, 6, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), dense_reference(mixer, x, torch.zeros(2, 30, 30, dtype=x.dtype)),
                                   atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize('offset_layout', ['1d', '2d'])
def test_fibottention2d_without_cls_matches_the_masked_dense_attention(offset_layout):
    torch.manual_seed(0)
    mixer = Fibottention2d(16, 2, layer_id=3, offset_layout=offset_layout, backend='torch').double()
    x = torch.randn(2, 6, 7, 16, dtype=torch.float64)
    mask = fibottention_mask(mixer.pattern((6, 7), 'cpu'), with_cls=False)
    bias = torch.zeros(mask.shape, dtype=x.dtype).masked_fill(~mask, float('-inf'))
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), dense_reference(mixer, x, bias), atol=1e-12, rtol=1e-10)
