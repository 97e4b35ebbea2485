"""Paint where one query pixel attends, in one layer of an mmsparse backbone.

::

    python tools/analysis_tools/visualize_attention.py CONFIG [CKPT] IMAGE --query X Y \\
        [--query X Y ...] [--layer STAGE.BLOCK] [--head H] --out FILE.png \\
        [--cfg-options KEY=VALUE ...] [--device cpu] [--no-resize]

The probabilities come from the ops themselves: the backbone runs under
:func:`mmsparse.ops.probe.record_op_calls`, and every panel is the output of
:func:`mmsparse.ops.probe.attention_probabilities` on a recorded op call (the op's
own reference code), never a re-implementation here. Per family:

* BiFormer (``bi_level_routing_attention``): the weights inside the top-k regions the
  op routed the query's region to, each routed region outlined;
* NAT / DiNAT (``neighborhood_attention_2d``): the (dilated) ``k x k`` window,
  shifted inward at the borders as the op does;
* HAT-Net (``grid_attention`` + ``global_attention``): two panels, the local ``G x G``
  cell and the global attention over the pooled cells;
* FibottentionViT (``fibottention_attention``): one panel per head (its offsets), or
  the head of ``--head``; the weight on the CLS token is written in the title.

Without ``--head`` the BRA, NA and H-MHSA panels show the mean over heads (still a
distribution: it sums to 1). The query is marked with a cross; with several
``--query`` the figure has one row per query.

Model. The config's ``model.backbone`` is built with random weights (seed 0), or
with the weights of ``CKPT``: an mmsparse backbone checkpoint, a whole mmdet/mmseg
model (keys under ``backbone.``) or an official checkpoint of the family, loaded
like the backbone's ``init_cfg`` (:meth:`SparseBackbone.init_weights`).

Layers. ``--layer STAGE.BLOCK`` names a block: ``stages[STAGE][BLOCK]`` (BiFormer,
NAT, SparseTransformer), ``blocks[STAGE][BLOCK]`` (HAT-Net) or ``0.BLOCK`` for
the single stage of FibottentionViT. The calls of a block are the op calls recorded
between its forward pre-hook and its forward hook. The default is the first block
whose attention is an mmsparse op (BiFormer's global stage uses SDPA, so it is not
one); a name that is not such a block is an error listing them.

Image. A simple, documented stand-in for the test pipeline: the image is read as
BGR, resized like the first ``*Resize`` transform of the config's test pipeline
(``mmcv.imrescale`` with ``keep_ratio=True``, else ``mmcv.imresize`` to ``scale``;
skipped with ``--no-resize``), converted to RGB if ``data_preprocessor.bgr_to_rgb``,
normalised with ``data_preprocessor.mean/std`` and zero-padded at the bottom/right
to ``data_preprocessor.pad_size_divisor`` (mmdet). ``--query X Y`` is in pixels of
the original image; the figure shows the resized image.

Query mapping. The stride of a block is the product of the strides of the convs and
poolings that ran outside the blocks before it (stem, downsampling layers, patch
embedding), its map is ``ceil(H_in / stride) x ceil(W_in / stride)`` (checked
against the block's input shapes), and the query's cell is ``(y // stride,
x // stride)``, flattened row-major on the op's query map (which may be larger:
BRA pads to ``n_win``; the padded keys keep their weight in the panels but lie
outside the picture).

:func:`visualize` returns the per-panel weight maps (a :class:`Visualization`), so
tests check what is painted without reading the PNG.

The pictures ``docs/_static/attention_*.png`` were made with random weights on a
160 x 128 synthetic image (flat shapes), e.g.::

    python tools/analysis_tools/visualize_attention.py \\
        configs/biformer/upernet_biformer-t_1xb4-200it_synthetic-ade20k-96x96.py shapes.png \\
        --query 40 40 --query 150 120 --layer 1.0 --no-resize --out docs/_static/attention_biformer.png
    python tools/analysis_tools/visualize_attention.py \\
        configs/fibottention/upernet_fibottention-vit-s_8xb2-160k_ade20k-512x512.py shapes.png \\
        --query 80 64 --layer 0.3 --no-resize --out docs/_static/attention_fibottention.png
"""
import argparse
import math
import os
import os.path as osp
import sys
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

try:
    import mmsparse  # noqa: F401
except ImportError:  # running from a checkout that is not installed
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
from mmsparse.ops.probe import attention_probabilities, record_op_calls  # noqa: E402

#: Backbone attributes that hold the blocks, tried in this order.
BLOCK_CONTAINERS = ('stages', 'blocks', 'layers')
#: Modules whose stride, when they run outside the blocks, scales the maps.
STRIDED_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
#: Figure geometry: inches per panel side and dots per inch.
PANEL_INCHES = 2.6
DPI = 80
SEED = 0


class LayerRecord(NamedTuple):
    """What one block did during the forward pass.

    Attributes:
        name (str): ``'STAGE.BLOCK'``.
        calls (list[OpCall]): the op calls recorded while the block ran, in order.
        grid (tuple[int, int]): ``(h, w)`` of the block's map.
        stride (tuple[int, int]): input pixels per map cell, ``(sy, sx)``.
        module (nn.Module): the block.
    """
    name: str
    calls: list
    grid: tuple
    stride: tuple
    module: nn.Module


class Panel(NamedTuple):
    """One painted attention map.

    Attributes:
        title (str): what the panel shows.
        weights (np.ndarray): (Hk, Wk) float64 probability of every key of the op's
            key map (padded keys included); with ``extra`` it sums to 1.
        cell (tuple[int, int]): input pixels per key cell, ``(cy, cx)``.
        extra (float): probability of keys that are not on the map (the CLS token).
        boxes (tuple): ``(y0, x0, y1, x1)`` key-map cell ranges (end exclusive) to outline.
    """
    title: str
    weights: np.ndarray
    cell: tuple
    extra: float
    boxes: tuple


class Visualization(NamedTuple):
    """Everything :func:`paint` draws.

    Attributes:
        image (np.ndarray): (H, W, 3) uint8 RGB network input before normalisation
            (without the divisor padding).
        layer (str): the block shown.
        layers (list[str]): every block whose attention can be shown.
        queries (list[tuple[int, int]]): ``(x, y)`` of each query in ``image`` pixels.
        rows (list[list[Panel]]): the panels of each query.
    """
    image: np.ndarray
    layer: str
    layers: list
    queries: list
    rows: list


class OpGeometry(NamedTuple):
    """How the query and key indices of one op call map to cells.

    ``query_map``/``key_map`` are the ``(rows, cols)`` grids the op indexes row-major,
    after ``offset`` leading tokens that are not on the map (the CLS token);
    ``key_cell`` is the side of a key cell in map cells (pooled keys).
    """
    label: str
    query_map: tuple
    key_map: tuple
    key_cell: tuple
    offset: int
    per_head: bool
    region: tuple  # (rows, cols) of a routing region in key cells, or None


# ----------------------------------------------------------------------------- op geometry

def _bra_geometry(call, record):
    args = call.arguments
    height, width = args['q'].shape[1:3]
    n_win = args['n_win']
    return OpGeometry(f'BRA: top-{args["topk"]} of {n_win}x{n_win} regions', (height, width),
                      (height, width), (1, 1), 0, False, (height // n_win, width // n_win))


def _na_geometry(call, record):
    args = call.arguments
    size, dilation = args['kernel_size'], args.get('dilation', 1)
    label = f'NA: {size}x{size} window' + (f', dilation {dilation}' if dilation > 1 else '')
    return OpGeometry(label, tuple(args['q'].shape[2:4]), tuple(args['k'].shape[2:4]), (1, 1), 0, False,
                      None)


def _grid_geometry(call, record):
    args = call.arguments
    size = args['grid_size']
    shape = tuple(args['q'].shape[2:])
    return OpGeometry(f'H-MHSA local: {size}x{size} cell', shape, tuple(args['k'].shape[2:]), (1, 1), 0,
                      False, None)


def _pool_ratio(record, query_map, key_map):
    """Cell side ``r`` of the pooled keys of a global attention, in map cells.

    Every ``r`` with ``ceil(h / r) x ceil(w / r)`` equal to the key map fits; when
    several do (partial border cells), the block's ``ds_ratio`` (H-MHSA's pooling
    ratio) decides.
    """
    (h, w), (hk, wk) = query_map, key_map
    fits = [r for r in range(1, max(h, w) + 1) if math.ceil(h / r) == hk and math.ceil(w / r) == wk]
    if len(fits) > 1:
        declared = {m.ds_ratio for m in record.module.modules() if isinstance(getattr(m, 'ds_ratio', None), int)}
        fits = [r for r in fits if r in declared]
    if len(fits) != 1:
        raise ValueError(f'layer {record.name}: cannot tell the pooling ratio of the global attention '
                         f'(queries {h}x{w}, keys {hk}x{wk}; ratios that fit: {fits or "none"})')
    return fits[0]


def _global_geometry(call, record):
    args = call.arguments
    query_map, key_map = tuple(args['q'].shape[2:]), tuple(args['k'].shape[2:])
    ratio = _pool_ratio(record, query_map, key_map)
    label = (f'H-MHSA global: {key_map[0]}x{key_map[1]} pooled cells' if ratio > 1 else
             'global attention')
    return OpGeometry(label, query_map, key_map, (ratio, ratio), 0, False, None)


def _fib_geometry(call, record):
    args = call.arguments
    pattern = args['pattern']
    # The 1-D layout acts on a (1, N) grid; the patch grid is the block's map.
    grid = tuple(pattern.grid) if pattern.grid[0] > 1 else record.grid
    if grid[0] * grid[1] != pattern.grid[0] * pattern.grid[1]:
        raise ValueError(f'layer {record.name}: the Fibottention pattern has {pattern.grid} tokens but '
                         f'the block map is {record.grid}')
    return OpGeometry('Fibottention', grid, grid, (1, 1), int(args.get('with_cls', True)), True, None)


#: The attention ops whose calls become panels; other recorded ops (pooling) are context.
OP_GEOMETRY = {
    'bi_level_routing_attention': _bra_geometry,
    'neighborhood_attention_2d': _na_geometry,
    'grid_attention': _grid_geometry,
    'global_attention': _global_geometry,
    'fibottention_attention': _fib_geometry,
}


# ----------------------------------------------------------------------------- recording

def find_blocks(backbone):
    """``{'STAGE.BLOCK': block}`` of a backbone, in forward order.

    The first of :data:`BLOCK_CONTAINERS` that is a non-empty ModuleList/Sequential
    holds either one container of blocks per stage or the blocks of a single stage.
    """
    containers = (nn.ModuleList, nn.Sequential)
    for attr in BLOCK_CONTAINERS:
        container = getattr(backbone, attr, None)
        if isinstance(container, containers) and len(container):
            if all(isinstance(stage, containers) for stage in container):
                return {f'{i}.{j}': block for i, stage in enumerate(container) for j, block in enumerate(stage)}
            return {f'0.{j}': block for j, block in enumerate(container)}
    raise TypeError(f'cannot find the blocks of {type(backbone).__name__}: expected one of the attributes '
                    f'{BLOCK_CONTAINERS} to be a ModuleList of blocks (or of one container per stage)')


def _map_candidates(args, kwargs):
    """Every ``(h, w)`` a block's inputs may carry: NHWC/NCHW tensor dims or an (int, int) grid."""
    found = []
    for value in list(args) + list(kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() == 4:
            found += [tuple(value.shape[1:3]), tuple(value.shape[2:4])]
        elif isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
            found.append(tuple(value))
    return found


def record_layers(backbone, inputs):
    """Run ``backbone(inputs)`` (no grad) and return ``{'STAGE.BLOCK': LayerRecord}``.

    Raises:
        RuntimeError: a block's input has no map of the size its stride predicts.
    """
    blocks = find_blocks(backbone)
    height, width = inputs.shape[-2:]
    stride = [1, 1]
    active = {}
    records = {}

    def on_strided(module, args, output):
        if not active:  # downsampling happens between blocks; strided convs inside one are its own
            sy, sx = (module.stride, ) * 2 if isinstance(module.stride, int) else module.stride
            stride[0] *= sy
            stride[1] *= sx

    def enter(name):
        def hook(module, args, kwargs):
            active[name] = (len(calls), tuple(stride), _map_candidates(args, kwargs))
        return hook

    def leave(name):
        def hook(module, args, kwargs, output):
            start, block_stride, candidates = active.pop(name)
            grid = (math.ceil(height / block_stride[0]), math.ceil(width / block_stride[1]))
            if grid not in candidates:
                raise RuntimeError(f'layer {name}: stride {block_stride} predicts a {grid[0]}x{grid[1]} map '
                                   f'for the {height}x{width} input, but the block got maps {candidates}')
            records[name] = LayerRecord(name, calls[start:], grid, block_stride, module)
        return hook

    handles = [m.register_forward_hook(on_strided) for m in backbone.modules() if isinstance(m, STRIDED_MODULES)]
    for name, block in blocks.items():
        handles.append(block.register_forward_pre_hook(enter(name), with_kwargs=True))
        handles.append(block.register_forward_hook(leave(name), with_kwargs=True))
    try:
        with record_op_calls() as calls, torch.no_grad():
            backbone(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return records


def attention_layers(records):
    """Names of the blocks that called at least one attention op (:data:`OP_GEOMETRY`)."""
    return [name for name, record in records.items() if any(c.op in OP_GEOMETRY for c in record.calls)]


# ----------------------------------------------------------------------------- panels

def _check_head(head, num_heads, label):
    if head is not None and not 0 <= head < num_heads:
        raise ValueError(f'--head={head} is out of range for {label}, which has {num_heads} heads: '
                         f'allowed 0..{num_heads - 1}')


def _key_maps(probs, keys, geometry):
    """Scatter per-head probabilities onto the key map: ``(maps (heads, Hk, Wk), extra (heads,))``."""
    heads = probs.shape[0]
    hk, wk = geometry.key_map
    maps = np.zeros((heads, hk * wk))
    extra = np.zeros(heads)
    for h in range(heads):
        real = keys[h] >= 0  # -1: not a real key, probability 0 by contract
        on_map = real & (keys[h] >= geometry.offset)
        np.add.at(maps[h], keys[h][on_map] - geometry.offset, probs[h][on_map])
        extra[h] = probs[h][real & ~on_map].sum()
    return maps.reshape(heads, hk, wk), extra


def _region_boxes(keys, geometry):
    """The routed regions of BRA: the regions that hold the op's keys, as cell boxes."""
    rh, rw = geometry.region
    wk = geometry.key_map[1]
    flat = np.unique(keys[keys >= 0])
    regions = sorted({(k // wk // rh, k % wk // rw) for k in flat.tolist()})
    return tuple((i * rh, j * rw, (i + 1) * rh, (j + 1) * rw) for i, j in regions)


def query_panels(record, x, y, head=None):
    """The panels of one query pixel in one layer.

    Args:
        record (LayerRecord): the layer, from :func:`record_layers`.
        x, y (int): the query in network-input pixels.
        head (int, optional): one head; default the mean over heads (BRA, NA,
            H-MHSA) or every head (Fibottention). Defaults to None.

    Returns:
        list[Panel]: one per attention op call of the layer (per head for Fibottention).
    """
    sy, sx = record.stride
    cell_y, cell_x = y // sy, x // sx
    panels = []
    for call in record.calls:
        if call.op not in OP_GEOMETRY:
            continue
        geometry = OP_GEOMETRY[call.op](call, record)
        rows, cols = geometry.query_map
        if not (cell_y < rows and cell_x < cols):
            raise ValueError(f'layer {record.name}: pixel ({x}, {y}) falls in cell ({cell_x}, {cell_y}), '
                             f'outside the {rows}x{cols} query map of {call.op}')
        query = torch.tensor([geometry.offset + cell_y * cols + cell_x])
        probs, keys = attention_probabilities(call, query)
        probs = probs[0, :, 0].detach().double().cpu().numpy()
        keys = keys[0, :, 0].cpu().numpy()
        num_heads = probs.shape[0]
        _check_head(head, num_heads, f'layer {record.name} ({call.op})')
        maps, extra = _key_maps(probs, keys, geometry)
        cell = (geometry.key_cell[0] * sy, geometry.key_cell[1] * sx)
        if head is None and geometry.per_head:
            chosen = [(h, f'head {h}') for h in range(num_heads)]
        elif head is None and num_heads > 1:
            chosen = [(None, f'mean of {num_heads} heads')]
        elif head is None:
            chosen = [(0, 'head 0 (the only one)')]
        else:
            chosen = [(head, f'head {head}')]
        for h, head_label in chosen:
            weights, rest = (maps.mean(0), extra.mean()) if h is None else (maps[h], extra[h])
            head_keys = keys if h is None else keys[h]
            boxes = _region_boxes(head_keys, geometry) if geometry.region else ()
            title = f'layer {record.name}: {geometry.label}\n{head_label}'
            if geometry.offset:
                title += f', CLS {rest:.2f}'
            panels.append(Panel(title, weights, cell, float(rest), boxes))
    if not panels:
        raise ValueError(f'layer {record.name} calls no attention op of {sorted(OP_GEOMETRY)} '
                         f'(recorded: {[c.op for c in record.calls] or "none"})')
    return panels


# ----------------------------------------------------------------------------- model and image

def build_backbone(cfg, checkpoint=None, device='cpu'):
    """The config's backbone with random weights (seed 0) or the weights of ``checkpoint``."""
    from mmsparse.registry import MODELS
    import mmsparse.models  # noqa: F401  (registers the backbones)

    backbone_cfg = cfg.model.get('backbone') if cfg.get('model') else None
    if backbone_cfg is None:
        raise ValueError('CONFIG: the config has no model.backbone')
    backbone_cfg = backbone_cfg.copy()
    backbone_cfg['init_cfg'] = None if checkpoint is None else dict(type='Pretrained', checkpoint=checkpoint)
    torch.manual_seed(SEED)
    backbone = MODELS.build(backbone_cfg)
    # The family's random init runs here, not at construction; a checkpoint then overwrites it.
    backbone.init_weights()
    return backbone.to(device).eval()


def _test_pipeline(cfg):
    if cfg.get('test_pipeline'):
        return cfg.test_pipeline
    dataset = (cfg.get('test_dataloader') or {}).get('dataset') or {}
    return dataset.get('pipeline') or []


def _resize_transform(cfg):
    for transform in _test_pipeline(cfg):
        if str(transform.get('type', '')).split('.')[-1].endswith('Resize') and 'scale' in transform:
            return transform
    return None


def prepare_image(cfg, path, resize=True, device='cpu'):
    """Read ``path`` and make the network input (see the module doc, "Image").

    Returns:
        tuple: ``(display, inputs, original_size)``: the (H, W, 3) uint8 RGB resized
        image, the (1, 3, Hp, Wp) float normalised (and padded) input, and the
        ``(width, height)`` of the image file.
    """
    import mmcv

    bgr = mmcv.imread(path, channel_order='bgr')
    if bgr is None:
        raise ValueError(f'IMAGE: cannot read {path!r} as an image')
    original_size = (bgr.shape[1], bgr.shape[0])
    transform = _resize_transform(cfg) if resize else None
    if transform is not None:
        scale = tuple(transform['scale']) if not isinstance(transform['scale'], int) else (transform['scale'], ) * 2
        if transform.get('keep_ratio', False):
            bgr = mmcv.imrescale(bgr, scale)
        else:
            bgr = mmcv.imresize(bgr, scale)
    preprocessor = cfg.model.get('data_preprocessor') or {}
    to_rgb = preprocessor.get('bgr_to_rgb', False)
    pixels = bgr[..., ::-1] if to_rgb else bgr
    mean = np.array(preprocessor.get('mean', (0., 0., 0.)), dtype=np.float32)
    std = np.array(preprocessor.get('std', (1., 1., 1.)), dtype=np.float32)
    inputs = torch.from_numpy(((pixels.astype(np.float32) - mean) / std).transpose(2, 0, 1).copy())[None]
    divisor = preprocessor.get('pad_size_divisor', 1) or 1
    height, width = inputs.shape[-2:]
    pad_h, pad_w = -height % divisor, -width % divisor
    inputs = torch.nn.functional.pad(inputs, (0, pad_w, 0, pad_h))
    return np.ascontiguousarray(bgr[..., ::-1]), inputs.to(device), original_size


def to_input_pixels(query, original_size, display_size):
    """Map an ``(X, Y)`` pixel of the image file to the resized image (pixel centres)."""
    (x, y), (width, height), (in_w, in_h) = query, original_size, display_size
    if not (0 <= x < width and 0 <= y < height):
        raise ValueError(f'--query X Y = ({x}, {y}) is outside the image, which is {width}x{height} '
                         f'(W x H): allowed 0 <= X < {width}, 0 <= Y < {height}')
    return int((x + .5) * in_w / width), int((y + .5) * in_h / height)


def visualize(cfg, image, queries, layer=None, head=None, checkpoint=None, device='cpu', resize=True,
              progress=False):
    """Compute every panel of the figure (see the module doc).

    Args:
        cfg (mmengine.Config): an mmdet/mmseg config with an mmsparse ``model.backbone``.
        image (str): image file.
        queries (Sequence[tuple[int, int]]): ``(X, Y)`` pixels of the image file.
        layer (str, optional): ``'STAGE.BLOCK'``; default the first attention block.
            Defaults to None.
        head (int, optional): see :func:`query_panels`. Defaults to None.
        checkpoint (str, optional): weights to load. Defaults to None (random).
        device (str): torch device. Defaults to ``'cpu'``.
        resize (bool): resize like the test pipeline. Defaults to True.
        progress (bool): show a progress bar over the queries. Defaults to False.

    Returns:
        Visualization: what :func:`paint` draws.

    Raises:
        ValueError: a query outside the image, an unknown ``layer`` (the message
            lists the valid ones) or a ``head`` out of range.
    """
    display, inputs, original_size = prepare_image(cfg, image, resize, device)
    display_size = (display.shape[1], display.shape[0])
    pixels = [to_input_pixels(q, original_size, display_size) for q in queries]
    backbone = build_backbone(cfg, checkpoint, device)
    blocks = find_blocks(backbone)
    if layer is not None and layer not in blocks:
        raise ValueError(f'--layer={layer!r} is not a block of {type(backbone).__name__}; '
                         f'blocks are {list(blocks)}')
    records = record_layers(backbone, inputs)
    layers = attention_layers(records)
    if not layers:
        raise ValueError(f'no block of {type(backbone).__name__} calls an attention op of {sorted(OP_GEOMETRY)}')
    layer = layers[0] if layer is None else layer
    if layer not in layers:
        raise ValueError(f'--layer={layer!r} does not call an attention op that can be shown '
                         f'(recorded: {[c.op for c in records[layer].calls] or "none"}); '
                         f'choose one of {layers}')
    bar = None
    if progress and len(pixels) > 1:
        from mmengine.utils import ProgressBar
        bar = ProgressBar(len(pixels), file=sys.stderr)
    rows = []
    for x, y in pixels:
        rows.append(query_panels(records[layer], x, y, head))
        if bar is not None:
            bar.update()
    if bar is not None:
        sys.stderr.write('\n')
    return Visualization(display, layer, layers, pixels, rows)


# ----------------------------------------------------------------------------- painting

def panel_overlay(panel, image_shape):
    """The panel's weights at image resolution: (H, W) float, padded keys cropped away."""
    cy, cx = panel.cell
    full = np.repeat(np.repeat(panel.weights, cy, axis=0), cx, axis=1)
    height, width = image_shape[:2]
    out = np.zeros((height, width))
    h, w = min(height, full.shape[0]), min(width, full.shape[1])
    out[:h, :w] = full[:h, :w]
    return out


def figure_size(vis):
    """``(width, height)`` of the PNG in pixels: one :data:`PANEL_INCHES` square per panel."""
    cols = max(len(row) for row in vis.rows)
    return round(cols * PANEL_INCHES * DPI), round(len(vis.rows) * PANEL_INCHES * DPI)


def paint(vis, out, cmap='jet'):
    """Draw ``vis`` into the PNG ``out``: one row per query, one column per panel."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    cols = max(len(row) for row in vis.rows)
    fig, axes = plt.subplots(len(vis.rows), cols, squeeze=False,
                             figsize=(cols * PANEL_INCHES, len(vis.rows) * PANEL_INCHES), dpi=DPI)
    try:
        for (x, y), row, row_axes in zip(vis.queries, vis.rows, axes):
            for ax in row_axes:
                ax.set_axis_off()
            for panel, ax in zip(row, row_axes):
                ax.imshow(vis.image, interpolation='nearest')
                overlay = panel_overlay(panel, vis.image.shape)
                peak = overlay.max()
                ax.imshow(np.ma.masked_equal(overlay, 0), cmap=cmap, alpha=.6, vmin=0,
                          vmax=peak if peak > 0 else 1, interpolation='nearest')
                cy, cx = panel.cell
                for y0, x0, y1, x1 in panel.boxes:
                    ax.add_patch(Rectangle((x0 * cx - .5, y0 * cy - .5), (x1 - x0) * cx, (y1 - y0) * cy,
                                           fill=False, edgecolor='white', linewidth=1))
                ax.plot(x, y, marker='x', color='white', markersize=8, markeredgewidth=2)
                ax.plot(x, y, marker='x', color='black', markersize=6, markeredgewidth=1)
                ax.set_xlim(-.5, vis.image.shape[1] - .5)
                ax.set_ylim(vis.image.shape[0] - .5, -.5)
                ax.set_title(f'{panel.title}\nquery ({x}, {y})', fontsize=6)
        fig.subplots_adjust(left=.01, right=.99, bottom=.01, top=.86, wspace=.05, hspace=.3)
        os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
        fig.savefig(out, dpi=DPI)  # no bbox_inches='tight': the size stays figure_size(vis)
    finally:
        plt.close(fig)


# ----------------------------------------------------------------------------- command line

def parse_args(argv=None):
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description=__doc__.split('\n', 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        usage='%(prog)s CONFIG [CKPT] IMAGE --query X Y [--query X Y ...] [--layer STAGE.BLOCK] '
        '[--head H] --out FILE.png [--device DEVICE] [--no-resize] [--cfg-options KEY=VALUE ...]')
    parser.add_argument('paths', nargs='+', metavar='CONFIG [CKPT] IMAGE',
                        help='the config, optionally a checkpoint, and the image')
    parser.add_argument('--query', nargs=2, type=int, action='append', required=True, metavar=('X', 'Y'),
                        help='query pixel (column, row) in the image file; repeat for more rows')
    parser.add_argument('--layer', default=None, metavar='STAGE.BLOCK',
                        help='the block to show (default: the first block with an attention op)')
    parser.add_argument('--head', type=int, default=None,
                        help='one head (default: mean over heads; every head for Fibottention)')
    parser.add_argument('--out', required=True, help='the figure to write (a .png file)')
    parser.add_argument('--device', default='cpu', help='torch device (default cpu)')
    parser.add_argument('--no-resize', action='store_true',
                        help="feed the image at its own size instead of the test pipeline's Resize")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, KEY=VALUE pairs merged into the config')
    args = parser.parse_args(argv)
    if len(args.paths) not in (2, 3):
        parser.error(f'expected CONFIG [CKPT] IMAGE (2 or 3 paths), got {len(args.paths)}: {args.paths}')
    args.config, args.image = args.paths[0], args.paths[-1]
    args.checkpoint = args.paths[1] if len(args.paths) == 3 else None
    for label, path in (('CONFIG', args.config), ('IMAGE', args.image), ('CKPT', args.checkpoint)):
        if path is not None and not osp.isfile(path):
            parser.error(f'{label}: {path!r} is not a file')
    if osp.splitext(args.out)[1].lower() != '.png':
        parser.error(f'--out: {args.out!r} must end in .png')
    if args.layer is not None:
        parts = args.layer.split('.')
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            parser.error(f'--layer={args.layer!r} must be STAGE.BLOCK, two non-negative ints such as 1.0')
    if args.head is not None and args.head < 0:
        parser.error(f'--head={args.head} must be >= 0')
    return args


def main(argv=None):
    args = parse_args(argv)
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    try:
        vis = visualize(cfg, args.image, [tuple(q) for q in args.query], args.layer, args.head,
                        args.checkpoint, args.device, resize=not args.no_resize, progress=True)
    except ValueError as error:
        sys.exit(f'error: {error}')
    paint(vis, args.out)
    print(f'attention of layer {vis.layer} for {len(vis.queries)} queries written to {args.out}')
    return vis


if __name__ == '__main__':
    main()
