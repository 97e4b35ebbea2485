"""tools/analysis_tools/visualize_attention.py: the painted weights are the ops' own probabilities.

Every family runs a tiny backbone on an image whose sides are no multiple of the
strides (partial regions, windows and cells at the borders). The support of each
painted map (its nonzero cells) is compared with the op's support computed here
independently: the NATTEN window rule, the BRA routing from the recorded q/k
region means, the Fibottention offsets of the FibPattern, the H-MHSA grid cell.
Every panel must sum to 1 (1e-6), the CLS weight of Fibottention included.
"""
import math
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from mmsparse.models.backbones import NAT, BiFormer, FibottentionViT, HATNet, SparseTransformer
from mmsparse.ops.fibottention import fibottention_pattern

from ..conftest import REPO_ROOT, load_tool

vis = load_tool('analysis_tools/visualize_attention.py')
TOOL = osp.join('tools', 'analysis_tools', 'visualize_attention.py')

HEIGHT, WIDTH = 60, 56  # stage 0 (stride 4) is 15 x 14: no side divides 2, 3 or 4
TINY_BIFORMER = dict(arch=dict(depths=(1, 1, 1, 1), embed_dims=(16, 16, 16, 16), head_dim=8), n_win=2,
                     topks=(1, 2, 2, -1))


def pixels_of(panel):
    """The set of (row, col) key cells the panel paints."""
    return {tuple(rc) for rc in np.argwhere(panel.weights > 0).tolist()}


def assert_distribution(panel):
    assert (panel.weights >= 0).all() and panel.extra >= 0
    assert abs(panel.weights.sum() + panel.extra - 1) < 1e-6, panel.title


def corner_queries():
    """Pixels of the network input: top-left, bottom-right and one inside."""
    return [(0, 0), (WIDTH - 1, HEIGHT - 1), (27, 30)]


@pytest.fixture(scope='module')
def inputs():
    return torch.randn(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(0))


def records_of(backbone, inputs):
    torch.manual_seed(0)
    backbone.init_weights()  # the families' random init (not run at construction)
    return vis.record_layers(backbone.eval(), inputs)


# ----------------------------------------------------------------------------- oracles
# The support of each op for the query cell (cy, cx) of a recorded call, computed here
# from the op's rules and recorded inputs, never from the op's probability functions.

def natten_window(position, length, kernel_size, dilation):
    """Neighbours of ``position`` on an axis: the window rule of docs/design.md (NATTEN 0.14)."""
    residue, group = position % dilation, position // dilation
    class_len = math.ceil((length - residue) / dilation)
    start = min(max(group - kernel_size // 2, 0), class_len - kernel_size)
    return [residue + (start + t) * dilation for t in range(kernel_size)]


def na_support(args, cy, cx):
    height, width = args['k'].shape[2:4]
    size, dilation = args['kernel_size'], args['dilation']
    return {(r, c) for r in natten_window(cy, height, size, dilation)
            for c in natten_window(cx, width, size, dilation)}


def routed_regions(q, k, n_win, topk, scale):
    """Top-k key regions of every query region from the region means of q and k."""
    n, height, width, c = q.shape
    rh, rw = height // n_win, width // n_win

    def means(t):
        return t.reshape(n, n_win, rh, n_win, rw, c).mean(dim=(2, 4)).reshape(n, n_win * n_win, c)

    logits = (means(q) * scale) @ means(k).transpose(1, 2)
    return logits.topk(topk, dim=-1).indices[0]


def region_box(region, n_win, rh, rw):
    return ((region // n_win) * rh, (region % n_win) * rw, (region // n_win + 1) * rh, (region % n_win + 1) * rw)


def bra_regions(args, cy, cx):
    """The boxes (y0, x0, y1, x1) of the regions the query's region is routed to."""
    q, n_win = args['q'], args['n_win']
    rh, rw = q.shape[1] // n_win, q.shape[2] // n_win
    routing = routed_regions(q, args['k'], n_win, args['topk'], args['scale'])
    return sorted(region_box(r, n_win, rh, rw) for r in routing[(cy // rh) * n_win + cx // rw].tolist())


def bra_support(args, cy, cx):
    return {(r, c) for y0, x0, y1, x1 in bra_regions(args, cy, cx) for r in range(y0, y1) for c in range(x0, x1)}


def fib_support(args, grid, cy, cx, head):
    """The cells of the head's offsets (both signs, inside the grid) from the recorded FibPattern."""
    pattern = args['pattern']
    rows, cols = pattern.grid  # (1, N) for the 1-D layout, the patch grid for the 2-D one
    r, c = divmod(cy * grid[1] + cx, cols)
    flat = {(r + dy) * cols + c + dx for dy, dx in pattern.displacements[head, :pattern.counts[head]].tolist()
            if 0 <= r + dy < rows and 0 <= c + dx < cols}
    return {divmod(i, grid[1]) for i in flat}


def grid_support(args, grid, cy, cx):
    g, (h, w) = args['grid_size'], grid
    return {(i, j) for i in range(cy // g * g, min(cy // g * g + g, h))
            for j in range(cx // g * g, min(cx // g * g + g, w))}


def check_panels(record, x, y):
    """Every panel of the query sums to 1 and paints exactly its op's support; returns the panels."""
    panels = vis.query_panels(record, x, y)
    cy, cx = y // record.stride[0], x // record.stride[1]
    calls = [c for c in record.calls if c.op in vis.OP_GEOMETRY]
    per_call = iter(panels)
    for call in calls:
        args = call.arguments
        if call.op == 'fibottention_attention':
            for head in range(args['q'].shape[1]):
                panel = next(per_call)
                assert_distribution(panel)
                assert pixels_of(panel) == fib_support(args, record.grid, cy, cx, head), (x, y, head)
            continue
        panel = next(per_call)
        assert_distribution(panel)
        if call.op == 'neighborhood_attention_2d':
            assert pixels_of(panel) == na_support(args, cy, cx), (x, y)
        elif call.op == 'bi_level_routing_attention':
            assert pixels_of(panel) == bra_support(args, cy, cx), (x, y)
            assert sorted(panel.boxes) == bra_regions(args, cy, cx)
        elif call.op == 'grid_attention':
            assert pixels_of(panel) == grid_support(args, record.grid, cy, cx), (x, y)
        else:  # global attention: every (pooled) key cell
            assert panel.weights.shape == tuple(args['k'].shape[2:]) and (panel.weights > 0).all()
    assert next(per_call, None) is None
    return panels


# ----------------------------------------------------------------------------- NA

@pytest.mark.parametrize('dilation', [1, 2])
def test_na_paints_the_clamped_dilated_window(inputs, dilation):
    torch.manual_seed(0)
    backbone = NAT(arch=dict(embed_dims=8, depths=(1, 1, 1, 1), num_heads=(2, 2, 2, 2), mlp_ratio=1.),
                   kernel_size=3, dilations=[[dilation], [1], [1], [1]])
    record = records_of(backbone, inputs)['0.0']
    assert record.grid == (15, 14) and record.stride == (4, 4)
    for x, y in corner_queries():
        (panel, ) = check_panels(record, x, y)
        assert panel.cell == (4, 4)
    # The corner query sees the window shifted inward, not centred on it.
    (panel, ) = vis.query_panels(record, 0, 0)
    assert pixels_of(panel) == {(r, c) for r in range(0, 3 * dilation, dilation)
                                for c in range(0, 3 * dilation, dilation)}


# ----------------------------------------------------------------------------- BRA

@pytest.mark.parametrize('layer', ['0.0', '1.0'])
def test_bra_paints_the_routed_regions(inputs, layer):
    torch.manual_seed(0)
    records = records_of(BiFormer(**TINY_BIFORMER), inputs)
    assert vis.attention_layers(records) == ['0.0', '1.0', '2.0']  # stage 3 is SDPA, not an op
    record = records[layer]
    (call, ) = record.calls
    # padded to multiples of n_win: the op's map is larger than the block map
    assert tuple(call.arguments['q'].shape[1:3]) != record.grid
    for x, y in corner_queries():
        (panel, ) = check_panels(record, x, y)
        assert len(panel.boxes) == call.arguments['topk']


# ----------------------------------------------------------------------------- Fibottention

@pytest.mark.parametrize('layout', ['1d', '2d'])
def test_fibottention_paints_each_heads_offsets(inputs, layout):
    torch.manual_seed(0)
    heads, patch = 4, 4
    backbone = FibottentionViT(arch=dict(embed_dims=16, num_layers=4, num_heads=heads, mlp_ratio=1),
                               img_size=64, patch_size=patch, offset_layout=layout)
    records = records_of(backbone, inputs)
    assert list(records) == ['0.0', '0.1', '0.2', '0.3']
    record = records['0.2']
    assert record.grid == (15, 14) and record.stride == (patch, patch)
    (call, ) = record.calls
    expected = fibottention_pattern((15, 14), heads, 2, layout)  # block 2: layer seed 2
    recorded = call.arguments['pattern']
    assert recorded.grid == expected.grid
    assert torch.equal(recorded.displacements, expected.displacements)
    assert torch.equal(recorded.counts, expected.counts)
    for x, y in corner_queries():
        panels = check_panels(record, x, y)
        assert len(panels) == heads
        assert all(panel.extra > 0 for panel in panels)  # the CLS column is always kept
        (single, ) = vis.query_panels(record, x, y, head=2)
        np.testing.assert_array_equal(single.weights, panels[2].weights)


# ----------------------------------------------------------------------------- H-MHSA

def test_hmhsa_paints_the_local_cell_and_the_pooled_cells(inputs):
    torch.manual_seed(0)
    grid_sizes, ratios = (3, 2, 2, 1), (2, 4, 2, 1)
    backbone = HATNet(arch=dict(embed_dims=(16, 16, 16, 16), head_dim=8, depths=(1, 1, 1, 1),
                                expansions=(1, 1, 1, 1), grid_sizes=grid_sizes, ds_ratios=ratios,
                                kernel_sizes=(3, 3, 3, 3)))
    records = records_of(backbone, inputs)
    for stage in (0, 1):
        record = records[f'{stage}.0']
        (h, w), (sy, sx), r = record.grid, record.stride, ratios[stage]
        for x, y in corner_queries():
            local, pooled = check_panels(record, x, y)
            # r x r map cells per pooled key (stage 1: 8x7 -> 2x2; r = 5 and 6 fit too, so
            # the block's ds_ratio decides)
            assert pooled.weights.shape == (math.ceil(h / r), math.ceil(w / r))
            assert pooled.cell == (r * sy, r * sx)


# ----------------------------------------------------------------------------- SparseTransformer

@pytest.mark.parametrize('attn_cfg', [
    dict(type='mmsparse.BiLevelRoutingAttention', n_win=2, topk=2),
    dict(type='mmsparse.NeighborhoodAttention2d', kernel_size=3, dilation=2),
    dict(type='mmsparse.HierarchicalMHSA', grid_size=3, ds_ratio=2),
    dict(type='mmsparse.Fibottention2d'),
], ids=lambda cfg: cfg['type'].split('.')[-1])
def test_sparse_transformer_with_every_op_mixer(inputs, attn_cfg):
    torch.manual_seed(0)
    backbone = SparseTransformer(arch=dict(embed_dims=(16, 16, 16, 16), depths=(1, 2, 1, 1), num_heads=(2, 2, 2, 2),
                                           mlp_ratio=1.), attn_cfg=attn_cfg)
    records = records_of(backbone, inputs)
    assert vis.attention_layers(records) == ['0.0', '1.0', '1.1', '2.0', '3.0']
    for layer, stride in (('0.0', 4), ('1.1', 8)):
        record = records[layer]
        assert record.stride == (stride, stride)
        for x, y in corner_queries():
            check_panels(record, x, y)


# ----------------------------------------------------------------------------- checkpoint and CLI

CONFIG = """
model = dict(
    data_preprocessor=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                           pad_size_divisor=32),
    backbone=dict(type='mmsparse.BiFormer', {backbone},
                  init_cfg=dict(type='Pretrained', checkpoint='does/not/exist.pth')))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=({width}, {height}), keep_ratio=True),
    dict(type='PackDetInputs'),
]
"""


@pytest.fixture(scope='module')
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('visualize_attention')
    backbone = ', '.join(f'{k}={v!r}' for k, v in TINY_BIFORMER.items())
    config = tmp / 'tiny_biformer.py'
    # A 30 x 28 image resized to 60 x 56 by the test pipeline, padded to 64 x 64 by the preprocessor.
    config.write_text(CONFIG.format(backbone=backbone, width=WIDTH, height=HEIGHT))
    image = tmp / 'image.png'
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (HEIGHT // 2, WIDTH // 2, 3), dtype=np.uint8)).save(image)
    return dict(tmp=tmp, config=str(config), image=str(image))


def test_checkpoint_weights_are_used(files):
    torch.manual_seed(123)  # not the tool's seed: other weights than a random build
    model = BiFormer(**TINY_BIFORMER)
    model.init_weights()
    ckpt = files['tmp'] / 'model.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in model.state_dict().items()}}, ckpt)
    cfg = Config.fromfile(files['config'])
    loaded = vis.visualize(cfg, files['image'], [(3, 4)], layer='1.0', checkpoint=str(ckpt))
    random = vis.visualize(cfg, files['image'], [(3, 4)], layer='1.0')
    _, inputs, _ = vis.prepare_image(cfg, files['image'])
    assert inputs.shape[-2:] == (64, 64)  # resized to 60 x 56, padded to the divisor 32
    x, y = loaded.queries[0]
    assert (x, y) == (7, 9)  # pixel centres scaled by 2
    (expected, ) = vis.query_panels(vis.record_layers(model.eval(), inputs)['1.0'], x, y)
    np.testing.assert_allclose(loaded.rows[0][0].weights, expected.weights, rtol=0, atol=1e-12)
    assert not np.allclose(random.rows[0][0].weights, expected.weights)


@pytest.mark.slow  # a fresh interpreter: about 20 s of imports on a loaded 2-core machine
def test_cli_writes_one_row_per_query(files):
    out = files['tmp'] / 'attention.png'
    result = subprocess.run([sys.executable, TOOL, files['config'], files['image'], '--query', '0', '0',
                             '--query', '27', '29', '--layer', '1.0', '--out', str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert 'layer 1.0' in result.stdout and '2/2' in result.stderr  # the progress bar
    with Image.open(out) as png:
        assert png.format == 'PNG'
        # one panel per row for BRA, two rows
        assert png.size == (round(vis.PANEL_INCHES * vis.DPI), 2 * round(vis.PANEL_INCHES * vis.DPI))


@pytest.mark.parametrize('extra, message', [
    (['--query', '28', '0'], r'--query X Y = \(28, 0\) is outside the image, which is 28x30 '
                             r'\(W x H\): allowed 0 <= X < 28, 0 <= Y < 30'),
    (['--query', '0', '-1'], r'--query X Y = \(0, -1\) is outside the image'),
    (['--query', '0', '0', '--layer', '4.0'], r"--layer='4.0' is not a block of BiFormer; blocks are "
                                              r"\['0.0', '1.0', '2.0', '3.0'\]"),
    (['--query', '0', '0', '--layer', '3.0'], r"--layer='3.0' does not call an attention op .*"
                                              r"choose one of \['0.0', '1.0', '2.0'\]"),
    (['--query', '0', '0', '--head', '2'], r'--head=2 is out of range .* 2 heads: allowed 0..1'),
])
def test_bad_arguments_are_named(files, extra, message):
    with pytest.raises(SystemExit) as error:
        vis.main([files['config'], files['image'], '--out', str(files['tmp'] / 'never.png'), *extra])
    assert error.value.code != 0
    assert re.search(message, str(error.value.code)), error.value.code


def test_bad_layer_syntax_is_refused(files, capsys):
    with pytest.raises(SystemExit):
        vis.main([files['config'], files['image'], '--query', '0', '0', '--layer', 'stage1', '--out', 'x.png'])
    assert "--layer='stage1' must be STAGE.BLOCK" in capsys.readouterr().err
