"""Fibottention's in-graph mask (``traced_pattern``), for a dynamic export: equal to the Python pattern's.

``fibottention_mask_traced`` called with ints is compared bit for bit with
``fibottention_mask(fibottention_pattern(...))`` on every token count from 1 to 300 and a few
large ones (1-D layout), and on every grid up to 17 x 17 (2-D layout), for several head
counts, layers, shuffles, ``is_modified`` and ``wmin``; the caps with the float arithmetic
of ``fibonacci_offsets``; the same construction exported to ONNX with symbolic sizes and run
in onnxruntime at many sizes; and ``fibottention_attention_traced`` against naive masking.
"""
import pytest
import torch

from mmsparse.ops.fibottention import (fibonacci_candidates, fibonacci_offsets, fibottention_attention_traced,
                                       fibottention_mask, fibottention_mask_traced, fibottention_pattern)
from mmsparse.ops.fibottention.traced_pattern import head_caps

from .test_fibottention import NAIVE_CASES, _naive

# (num_heads, layer_id, shuffle, is_modified, wmin): one head (no spread), the official
# shapes of DeiT-T / S and ViT-B / L, the modified rule (offset 0, a repeated 1), other wmin.
LAYERS = [
    (1, 0, 'per_layer', False, 5),
    (3, 2, 'per_layer', False, 5),
    (6, 5, 'shared', True, 5),
    (12, 0, 'per_layer', False, 5),
    (12, 7, 'none', True, 2),
    (16, 11, 'per_layer', False, 9),
]
LAYER_IDS = [f'H{h}-l{layer}-{shuffle}-mod{int(mod)}-wmin{wmin}' for h, layer, shuffle, mod, wmin in LAYERS]


def _pattern_mask(grid, layer, layout, with_cls):
    heads, layer_id, shuffle, is_modified, wmin = layer
    return fibottention_mask(fibottention_pattern(grid, heads, layer_id, layout, shuffle, is_modified, wmin),
                             with_cls)


def _traced_mask(grid, layer, layout, with_cls):
    heads, layer_id, shuffle, is_modified, wmin = layer
    return fibottention_mask_traced(grid, heads, layer_id, layout, shuffle, is_modified, wmin, with_cls)


@pytest.mark.parametrize('layer', LAYERS, ids=LAYER_IDS)
def test_1d_mask_equals_the_pattern_mask(layer):
    for n in [*range(1, 301), 577, 1024]:
        with_cls = n % 2 == 0
        expected = _pattern_mask((1, n), layer, '1d', with_cls)
        assert torch.equal(_traced_mask((1, n), layer, '1d', with_cls), expected), n
    # The 1-D layout depends on the grid only through gh * gw.
    assert torch.equal(_traced_mask((8, 9), layer, '1d', True), _pattern_mask((8, 9), layer, '1d', True))


@pytest.mark.parametrize('layer', LAYERS, ids=LAYER_IDS)
def test_2d_mask_equals_the_pattern_mask(layer):
    for gh in range(1, 18):
        for gw in range(1, 18):
            with_cls = (gh + gw) % 2 == 0
            expected = _pattern_mask((gh, gw), layer, '2d', with_cls)
            assert torch.equal(_traced_mask((gh, gw), layer, '2d', with_cls), expected), (gh, gw)


@pytest.mark.parametrize('layer', LAYERS, ids=LAYER_IDS)
def test_offsets_are_prefixes_of_the_candidates(layer):
    """The premise of the construction: only the caps depend on N, and they cut each run after a prefix."""
    heads, layer_id, shuffle, is_modified, wmin = layer
    _, runs = fibonacci_candidates(heads, layer_id, shuffle, is_modified)
    for n in (1, 14, 15, 196, 1024, 10**6):
        offsets = fibonacci_offsets(n, heads, layer_id, shuffle, is_modified, wmin)
        assert [tuple(o) for o in offsets] == [run[:len(o)] for run, o in zip(runs, offsets)], n


def test_caps_repeat_the_float_arithmetic():
    """``int((wmax - wmin) / (H - 1) * (i - 1))`` in floats, truncated toward zero (negative below 3 * wmin)."""
    # 1 / 49 * 49 is 0.999...: integer arithmetic would give head 50 the cap 6 at N = 18.
    assert int(1 / 49 * 49) == 0
    for heads in (2, 3, 7, 12, 50):
        index = torch.arange(heads)
        for wmin in (0, 2, 5, 9):
            for size in [*range(1, 200), 3136, 10**6]:
                expected = [wmin + int((size // 3 - wmin) / (heads - 1) * i) for i in range(heads)]
                assert head_caps(size, index, heads, wmin).tolist() == expected, (heads, wmin, size)
    assert head_caps(18, torch.arange(50), 50, 5)[-1] == 5
    assert head_caps(100, torch.arange(1), 1, 5).tolist() == [5]


class _MaskGraph(torch.nn.Module):
    """The traced mask of a layer on the grid given by the input's shape, as int8 (for onnxruntime)."""

    def __init__(self, layer, layout, with_cls):
        super().__init__()
        self.layer, self.layout, self.with_cls = layer, layout, with_cls

    def forward(self, x):
        return _traced_mask(tuple(x.shape), self.layer, self.layout, self.with_cls).to(torch.int8)


@pytest.mark.parametrize('layout, layer, with_cls', [('1d', LAYERS[3], True), ('2d', LAYERS[2], False)],
                         ids=['1d', '2d'])
def test_onnx_mask_equals_the_pattern_mask_at_many_sizes(layout, layer, with_cls, tmp_path):
    """One graph exported at 5 x 7, run in onnxruntime at other grids: the caps and lookups stay symbolic."""
    onnxruntime = pytest.importorskip('onnxruntime', reason='the onnx extra (requirements/onnx.txt) is not installed')
    path = str(tmp_path / 'mask.onnx')
    auto = torch.export.Dim.AUTO
    torch.onnx.export(_MaskGraph(layer, layout, with_cls).eval(), (torch.zeros(5, 7, dtype=torch.int8), ), dynamo=True,
                      dynamic_shapes=({0: auto, 1: auto}, )).save(path)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    grids = [(1, n) for n in range(1, 80)] + [(gh, gw) for gh in range(2, 16) for gw in (2, 3, 7, 13)] + [(24, 24)]
    for grid in grids:
        got, = session.run(None, {session.get_inputs()[0].name: torch.zeros(grid, dtype=torch.int8).numpy()})
        assert torch.equal(torch.from_numpy(got).bool(), _pattern_mask(grid, layer, layout, with_cls)), grid


@pytest.mark.parametrize('mode', ['sparse', 'official'])
@pytest.mark.parametrize('grid, heads, layout, with_cls', NAIVE_CASES)
def test_traced_attention_matches_naive_masking(mode, grid, heads, layout, with_cls):
    mask = fibottention_mask(fibottention_pattern(grid, heads, 2, layout=layout), with_cls=with_cls)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, heads, mask.shape[-1], 4, generator=gen, dtype=torch.float64) * 2 for _ in range(3))
    out = fibottention_attention_traced(q, k, v, grid, 2, layout, scale=0.5, mode=mode, with_cls=with_cls)
    torch.testing.assert_close(out, _naive(q, k, v, mask, 0.5, mode), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('kwargs, match', [
    (dict(mode='dense'), r"mode='dense' is not supported"),
    (dict(grid_size=(3, 3)), r'q.shape\[2\]=17 tokens does not match grid_size=\(3, 3\) with with_cls=True'),
    (dict(layout='3d'), r"layout='3d' is not supported"),
    (dict(scale=-1.), 'scale'),
])
def test_traced_attention_rejects_bad_input(kwargs, match):
    q = torch.randn(1, 2, 17, 4)
    args = {'grid_size': (4, 4), **kwargs}
    with pytest.raises(ValueError, match=match):
        fibottention_attention_traced(q, q, q, **args)
