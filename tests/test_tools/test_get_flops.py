"""FLOP counting: the attention handles of ``mmsparse.utils.complexity`` and ``tools/analysis_tools/get_flops.py``.

Every handle is checked, exactly, against a closed form written here from the op's
definition (by brute force over token pairs where that is cheap), for several shapes,
on each op called directly and traced by MMEngine. A trace must hold the op as one
``mmsparse::<op>`` node: an op that still runs as plain aten ops fails
:func:`op_flops` with the operators it found. Convention: one multiply-add = 1 FLOP.
"""
import math
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from mmengine.analysis import FlopAnalyzer
from mmengine.config import Config
from torch import nn

from mmsparse.models.backbones.fibottention_vit import FibottentionViT
from mmsparse.ops import (bi_level_routing_attention, cell_average_pool, fibottention_attention,
                          fibottention_pattern, global_attention, grid_attention, neighborhood_attention_2d)
from mmsparse.ops.fibottention import FibPattern, fibottention_mask
from mmsparse.utils.complexity import attention_flop_handles, model_complexity

from ..conftest import REPO_ROOT, load_tool

get_flops = load_tool('analysis_tools/get_flops.py')


class _Call(nn.Module):
    """``fn(*tensors)`` as a module, so that MMEngine can trace it."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *tensors):
        return self.fn(*tensors)


def traced_flops(fn, *tensors):
    """FLOPs per operator of ``fn(*tensors)``, traced by MMEngine with the attention handles."""
    analyzer = FlopAnalyzer(_Call(fn), tensors).set_op_handle(**attention_flop_handles())
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
    return dict(analyzer.by_operator())


def op_flops(op, fn, *tensors):
    """FLOPs of the single ``mmsparse::op`` (or aten) node that ``fn`` traces to."""
    counts = traced_flops(fn, *tensors)
    assert set(counts) == {op}, (f'the trace must be one {op} node counted by its handle; the counted '
                                 f'operators are {counts} (is {op} a torch.library custom op?)')
    return counts[op]


# ---------------------------------------------------------------------------------------
# aten::scaled_dot_product_attention

SDPA_SHAPES = [(2, 3, 5, 7, 4, 6), (1, 2, 8, 8, 16, 16), (3, 1, 9, 4, 8, 2)]  # B, heads, L, S, E, Ev


def _sdpa_inputs(b, h, length, keys, e, ev):
    return torch.randn(b, h, length, e), torch.randn(b, h, keys, e), torch.randn(b, h, keys, ev)


@pytest.mark.parametrize('shape', SDPA_SHAPES)
def test_sdpa_dense_is_all_pairs_as_mmengine_counts_the_explicit_matmuls(shape):
    b, h, length, keys, e, ev = shape
    q, k, v = _sdpa_inputs(*shape)
    counted = op_flops('scaled_dot_product_attention', F.scaled_dot_product_attention, q, k, v)
    assert counted == b * h * length * keys * (e + ev)
    # The same attention written as two matmuls, counted by MMEngine's own matmul handle.
    explicit = traced_flops(lambda q, k, v: (q @ k.transpose(-1, -2)).softmax(-1) @ v, q, k, v)
    assert explicit == {'matmul': counted}


@pytest.mark.parametrize('shape', SDPA_SHAPES)
def test_sdpa_causal_counts_the_lower_triangle(shape):
    b, h, length, keys, e, ev = shape
    kept = int(torch.ones(length, keys, dtype=torch.bool).tril().sum())  # PyTorch's causal mask
    counted = op_flops('scaled_dot_product_attention',
                       lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), *_sdpa_inputs(*shape))
    assert counted == b * h * kept * (e + ev)


@pytest.mark.parametrize('shape', SDPA_SHAPES)
@pytest.mark.parametrize('mask_shape', ['LS', 'B1LS'])
def test_sdpa_boolean_constant_mask_counts_its_kept_entries(shape, mask_shape):
    b, h, length, keys, e, ev = shape
    size = (length, keys) if mask_shape == 'LS' else (b, 1, length, keys)
    mask = torch.rand(size, generator=torch.Generator().manual_seed(sum(shape))) < 0.3
    mask[..., 0] = True  # no empty row
    counted = op_flops('scaled_dot_product_attention',
                       lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), *_sdpa_inputs(*shape))
    assert counted == int(mask.expand(b, h, length, keys).sum()) * (e + ev)


def test_sdpa_mask_built_from_constants_is_folded_and_input_masks_count_every_entry():
    shape = b, h, length, keys, e, ev = 2, 2, 6, 6, 4, 4

    def band():  # built inside the traced call, from constants only
        return (torch.arange(length)[:, None] - torch.arange(keys)).abs() <= 1

    def written():  # built in place (zeros, then writes into views), as the Fibottention patterns are
        mask = torch.zeros(length, keys, dtype=torch.bool)
        mask[:, :2] = True
        mask[3:].diagonal(1).fill_(1)  # (fill_ of a bool does not trace)
        return mask

    for make_mask in (band, written):
        counted = op_flops('scaled_dot_product_attention',
                           lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=make_mask()),
                           *_sdpa_inputs(*shape))
        assert counted == b * h * int(make_mask().sum()) * (e + ev)
    # A mask computed from the input, or an additive float mask, says nothing about kept entries.

    def overwritten_by_input(q):
        mask = torch.zeros(length, keys, dtype=torch.bool)
        mask.copy_(q[0, 0, :, :1] > 0)
        return mask

    for make_mask in (lambda q: (q[..., :1] > 0).expand(b, h, length, keys), overwritten_by_input,
                      lambda q: torch.zeros(length, keys)):
        counted = op_flops('scaled_dot_product_attention',
                           lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=make_mask(q)),
                           *_sdpa_inputs(*shape))
        assert counted == b * h * length * keys * (e + ev)


# ---------------------------------------------------------------------------------------
# mmsparse ops

# B, heads, (H, W), head dim, kernel, dilation, (Hq, Wq)
NA_CASES = [(1, 2, (7, 9), 4, 3, 1, (7, 9)), (2, 1, (10, 13), 8, 5, 2, (10, 13)),
            (1, 2, (9, 15), 4, 3, 3, (9, 15)), (1, 3, (8, 8), 4, 7, 1, (6, 5))]


@pytest.mark.parametrize('case', NA_CASES)
def test_neighborhood_attention_counts_k_squared_keys_per_query(case):
    b, h, (height, width), d, kernel, dilation, (hq, wq) = case
    q, (k, v) = torch.randn(b, h, hq, wq, d), (torch.randn(b, h, height, width, d) for _ in range(2))
    rpb = torch.randn(h, 2 * kernel - 1, 2 * kernel - 1)
    counted = op_flops('neighborhood_attention_2d',
                       lambda q, k, v: neighborhood_attention_2d(q, k, v, kernel, dilation, rpb=rpb), q, k, v)
    assert counted == b * h * hq * wq * kernel * kernel * (d + d)


# N, (H, W), Cqk, Cv, heads, n_win, topk
BRA_CASES = [(1, (8, 8), 8, 8, 2, 2, 1), (2, (12, 8), 16, 8, 4, 4, 3), (1, (6, 9), 8, 4, 2, 3, 9)]


def bra_closed_form(n, height, width, c_qk, c_v, n_win, topk):
    regions = n_win**2
    routing = 2 * n * height * width * c_qk + n * regions * regions * c_qk   # region means + logits
    keys_per_query = topk * (height * width // regions)
    return routing + n * height * width * keys_per_query * (c_qk + c_v)


@pytest.mark.parametrize('case', BRA_CASES)
def test_bi_level_routing_attention_counts_routing_and_routed_tokens(case):
    n, (height, width), c_qk, c_v, heads, n_win, topk = case
    q, k = (torch.randn(n, height, width, c_qk) for _ in range(2))
    v = torch.randn(n, height, width, c_v)
    counted = op_flops('bi_level_routing_attention',
                       lambda q, k, v: bi_level_routing_attention(q, k, v, heads, n_win, topk), q, k, v)
    assert counted == bra_closed_form(n, height, width, c_qk, c_v, n_win, topk)


def same_window_pairs(height, width, grid):
    """(query, key) pairs inside one ``grid x grid`` window, by brute force over all token pairs."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')
    wy, wx = (y // grid).flatten(), (x // grid).flatten()
    return int(((wy[:, None] == wy) & (wx[:, None] == wx)).sum())


# B, C, H, W, heads, G: G divides, divides neither side, one side, G larger than the map
HMHSA_CASES = [(1, 8, 8, 8, 2, 4), (2, 4, 7, 10, 1, 4), (1, 6, 12, 9, 3, 3), (1, 6, 5, 5, 3, 8)]


@pytest.mark.parametrize('case', HMHSA_CASES)
def test_grid_attention_counts_real_tokens_of_each_window(case):
    b, c, height, width, heads, g = case
    q, k, v = (torch.randn(b, c, height, width) for _ in range(3))
    counted = op_flops('grid_attention', lambda q, k, v: grid_attention(q, k, v, heads, g), q, k, v)
    assert counted == b * same_window_pairs(height, width, g) * 2 * c


@pytest.mark.parametrize('case', HMHSA_CASES)
def test_global_attention_counts_every_pooled_cell_per_query(case):
    b, c, height, width, heads, ratio = case
    q = torch.randn(b, c, height, width)
    k = v = torch.randn(b, c, math.ceil(height / ratio), math.ceil(width / ratio))
    counted = op_flops('global_attention', lambda q, k, v: global_attention(q, k, v, heads), q, k, v)
    assert counted == b * height * width * k.shape[2] * k.shape[3] * 2 * c


@pytest.mark.parametrize('case', HMHSA_CASES)
def test_cell_average_pool_counts_each_input_element(case):
    b, c, height, width, _, ratio = case
    x = torch.randn(b, c, height, width)
    assert op_flops('cell_average_pool', lambda x: cell_average_pool(x, ratio), x) == b * c * height * width


def test_cell_average_pool_with_ratio_one_is_the_identity_and_costs_nothing():
    assert traced_flops(lambda x: cell_average_pool(x, 1) * 1, torch.randn(1, 4, 5, 6)) == {}


# grid, heads, layer, layout, with_cls, mode
FIB_CASES = [((4, 5), 3, 0, '1d', True, 'sparse'), ((6, 6), 2, 1, '2d', True, 'official'),
             ((3, 7), 4, 2, '1d', False, 'sparse'), ((5, 4), 3, 3, '1d', False, 'official')]


def fibottention_closed_form(batch, pattern, head_dim, with_cls, mode):
    """From the dense mask of the pattern: kept entries, plus the official mode's extra work."""
    mask = fibottention_mask(pattern, with_cls)          # (heads, T, T), True = kept
    heads, tokens, _ = mask.shape
    flops = batch * int(mask.sum()) * 2 * head_dim
    if mode == 'official':   # one key per row with masked keys, and the sum of all values per head
        flops += batch * (int((mask.sum(-1) < tokens).sum()) + heads * tokens) * head_dim
    return flops


@pytest.mark.parametrize('case', FIB_CASES)
def test_fibottention_counts_the_patterns_kept_entries(case):
    grid, heads, layer, layout, with_cls, mode = case
    pattern = fibottention_pattern(grid, heads, layer, layout)
    d, tokens = 8, grid[0] * grid[1] + int(with_cls)
    q, k, v = (torch.randn(2, heads, tokens, d) for _ in range(3))
    counted = op_flops('fibottention_attention',
                       lambda q, k, v: fibottention_attention(q, k, v, pattern, mode=mode, with_cls=with_cls),
                       q, k, v)
    assert counted == fibottention_closed_form(2, pattern, d, with_cls, mode)


def test_fibottention_pattern_that_depends_on_the_data_is_an_error_not_a_guess():
    pattern = fibottention_pattern((4, 5), 2, 0, '1d')

    def data_dependent(q, k, v):
        shift = (q.sum() * 0).to(torch.int32)   # zero, but the trace cannot know it
        moved = FibPattern(pattern.displacements + shift, pattern.counts, pattern.grid)
        return fibottention_attention(q, k, v, moved)

    with pytest.raises(ValueError, match="argument 'displacements'"):
        traced_flops(data_dependent, *(torch.randn(1, 2, 21, 8) for _ in range(3)))


def _na2d_call(backend):
    tensors = [torch.randn(1, 2, 7, 8, 16) for _ in range(3)]
    return lambda q, k, v: neighborhood_attention_2d(q, k, v, 3, 2, backend=backend), tensors


def _bra_call(backend):
    tensors = [torch.randn(1, 8, 8, 32) for _ in range(3)]
    return lambda q, k, v: bi_level_routing_attention(q, k, v, 2, 2, 2, backend=backend), tensors


def _fibottention_call(backend):
    pattern = fibottention_pattern((4, 5), 2, 0, '1d')
    tensors = [torch.randn(1, 2, 21, 16) for _ in range(3)]
    return lambda q, k, v: fibottention_attention(q, k, v, pattern, backend=backend), tensors


@pytest.mark.parametrize('op,call', [('neighborhood_attention_2d', _na2d_call),
                                     ('bi_level_routing_attention', _bra_call),
                                     ('fibottention_attention', _fibottention_call)])
def test_every_backend_counts_the_same(op, call):
    """The torch backend traces to the custom op, the triton backend to its ``triton_op``
    (BRA: after the routing's aten ops); the totals are equal."""
    fn, tensors = call('torch')
    torch_total = op_flops(op, fn, *tensors)
    fn, tensors = call('triton')
    counts = traced_flops(fn, *tensors)
    assert set(counts) - {'matmul'} == {f'{op}_triton'}, counts
    assert sum(counts.values()) == torch_total > 0


# ---------------------------------------------------------------------------------------
# Models


def attention_flops(result):
    return sum(f for op, f in result.by_operator.items()
               if op in ('scaled_dot_product_attention', 'fibottention_attention'))


def test_fibottention_vit_small_counts_far_fewer_attention_flops_than_its_dense_twin():
    results = {att: model_complexity(FibottentionViT(arch='small', attention=att), (224, 224))
               for att in ('fibottention', 'dense')}
    fib, dense = results['fibottention'], results['dense']
    heads, layers, head_dim, grid = 6, 12, 64, (14, 14)
    tokens = grid[0] * grid[1] + 1
    assert dense.by_operator['scaled_dot_product_attention'] == layers * 2 * heads * tokens * tokens * head_dim
    assert fib.by_operator['fibottention_attention'] == sum(
        fibottention_closed_form(1, fibottention_pattern(grid, heads, layer), head_dim, True, 'sparse')
        for layer in range(layers))
    ratio = attention_flops(fib) / attention_flops(dense)
    assert ratio < 0.1, f'fibottention keeps {ratio:.1%} of the dense attention FLOPs'
    # Only the attention differs: same parameters, same FLOPs elsewhere.
    assert fib.params == dense.params
    assert fib.flops - attention_flops(fib) == dense.flops - attention_flops(dense)
    for result in results.values():
        assert sum(c.flops for c in result.by_module_type.values()) == result.flops
        assert sum(c.params for c in result.by_module_type.values()) == result.params


def test_bare_backbone_params_and_module_types():
    model = FibottentionViT(arch={'embed_dims': 32, 'num_layers': 2, 'num_heads': 2, 'mlp_ratio': 2},
                            attention='dense', img_size=32, out_indices=(0, 1), out_scales=(1, 0.5))
    result = model_complexity(model, (3, 32, 48))
    assert result.params == sum(p.numel() for p in model.parameters())
    assert result.traced_shape == (1, 3, 32, 48)
    linear = result.by_module_type['Linear']
    assert linear.modules == 2 * 4 and linear.params == sum(
        m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, nn.Linear))
    tokens = 1 + (32 // 16) * (48 // 16)   # CLS + patches; per block qkv, proj, fc1, fc2
    assert linear.flops == 2 * tokens * (32 * 96 + 32 * 32 + 32 * 64 + 64 * 32)
    assert result.by_operator['scaled_dot_product_attention'] == 2 * 2 * tokens * tokens * (16 + 16)
    assert model.training, 'the training flag must be restored'
    assert model_complexity(model, (32, 48), batch_size=2).flops == 2 * result.flops


@pytest.mark.parametrize('kwargs,match', [(dict(input_shape=(0, 5)), 'input_shape'),
                                          (dict(input_shape=(1, 2, 3, 4)), 'input_shape'),
                                          (dict(input_shape=(8, 8), batch_size=0), 'batch_size')])
def test_model_complexity_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        model_complexity(nn.Conv2d(3, 4, 3), **kwargs)


# ---------------------------------------------------------------------------------------
# The command line

TINY_SEGMENTOR = """
default_scope = 'mmseg'
crop_size = (32, 48)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[0, 0, 0], std=[1, 1, 1]),
    backbone=dict(type='mmsparse.FibottentionViT', img_size=32, out_indices=(1, ), out_scales=(1, ),
                  arch=dict(embed_dims=32, num_layers=2, num_heads=2, mlp_ratio=2)),
    decode_head=dict(type='FCNHead', in_channels=32, channels=16, num_convs=1, num_classes=3,
                     norm_cfg=dict(type='SyncBN')))
"""


def parse_totals(printed):
    """``(flops, params)`` exact, from the summary lines of the CLI."""
    flops = re.search(r'^Flops: \S+ \((\d+) FLOPs', printed, re.M)
    params = re.search(r'^Params: \S+ \((\d+)\)', printed, re.M)
    assert flops and params, printed
    return int(flops.group(1)), int(params.group(1))


CLI_CASES = [('configs/biformer/upernet_biformer-t_8xb2-160k_ade20k-512x512.py', ['64', '64'], (64, 64)),
             ('configs/biformer/retinanet_biformer-t_fpn_1x_coco.py', ['64', '80'], (64, 96))]


@pytest.mark.slow
@pytest.mark.parametrize('config,shape,traced', CLI_CASES, ids=['mmseg', 'mmdet'])
def test_cli_prints_the_totals_of_model_complexity(config, shape, traced, capsys, monkeypatch):
    built = []

    def keep(cfg):  # the CLI's own model, so that it is built once
        built.append(build_model(cfg))
        return built[-1]

    build_model = get_flops.build_model
    monkeypatch.setattr(get_flops, 'build_model', keep)
    assert get_flops.main([f'{REPO_ROOT}/{config}', '--shape', *shape]) == 0
    printed = capsys.readouterr().out
    printed_flops, printed_params = parse_totals(printed)
    total_row = re.search(r'^\| total .*\| (\d+) +\| (\d+) +\|$', printed, re.M)
    assert f'Input shape: {traced}' in printed

    model, = built
    expected = model_complexity(model, (3, *map(int, shape)))
    assert (printed_flops, printed_params) == (expected.flops, expected.params)
    assert (int(total_row.group(2)), int(total_row.group(1))) == (expected.flops, expected.params)
    assert expected.by_operator['bi_level_routing_attention'] > 0
    assert expected.traced_shape == (1, 3, *traced)
    # The inference network: every parameter but a segmentor's auxiliary head.
    aux = getattr(model, 'auxiliary_head', None)
    aux_params = sum(p.numel() for p in aux.parameters()) if aux is not None else 0
    assert expected.params == sum(p.numel() for p in model.parameters()) - aux_params


@pytest.mark.slow
def test_cli_script_runs_as_a_command_with_the_configs_crop_size(tmp_path):
    """The script in its own process, on a tiny segmentor config (SyncBN, no --shape)."""
    config = tmp_path / 'tiny_segmentor.py'
    config.write_text(TINY_SEGMENTOR)
    done = subprocess.run([sys.executable, f'{REPO_ROOT}/tools/analysis_tools/get_flops.py', str(config)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert 'Input shape: (32, 48)' in done.stdout
    expected = model_complexity(get_flops.build_model(Config.fromfile(str(config))), (32, 48))
    assert parse_totals(done.stdout) == (expected.flops, expected.params)
    assert expected.by_operator['fibottention_attention'] > 0


def test_cli_rejects_a_bad_shape():
    with pytest.raises(SystemExit):
        get_flops.parse_args(['some_config.py', '--shape', '1', '2', '3'])
