"""tools/deployment/pytorch2onnx.py: every backbone family and an mmseg segmentor through ONNX.

Each export runs ``torch.onnx.export(dynamo=True)`` on the reference path and the
``.onnx`` file in onnxruntime (CPU); outputs must match PyTorch within 1e-4 (max abs).
"""
import os.path as osp

import pytest
import torch

from mmsparse.models.attentions import Fibottention2d
from mmsparse.ops.fibottention import fibonacci_offsets

from ..conftest import REPO_ROOT, load_tool
from ..test_models.test_backbones.utils import tiny_backbone
from ..utils import run_command, write_shrunk_config

onnxruntime = pytest.importorskip('onnxruntime', reason='the onnx extra (requirements/onnx.txt) is not installed')
tool = load_tool('deployment/pytorch2onnx.py')

ATOL = 1e-4
EXPORT_SHAPE = (64, 64)
# The backbone tests' tiny archs, so that an export takes seconds (a 2-layer ViT here).
BACKBONES = {
    'biformer': lambda: tiny_backbone('biformer'),
    'nat': lambda: tiny_backbone('nat'),
    'hatnet': lambda: tiny_backbone('hat_net'),
    'fibottention': lambda: tiny_backbone('fibottention_vit', out_indices=(0, 1), out_scales=(1, 0.5),
                                          arch=dict(embed_dims=32, num_layers=2, num_heads=2, mlp_ratio=2)),
}
# Second size of each dynamic export, different in height and width from the traced
# 64x64 and needing padding where 64x64 needs none, so a graph that baked the traced
# size's Python branches fails there: BiFormer pads its 6x5 stage-3 map to n_win=2
# (pad_nhwc_to_multiple); HAT-Net's 14x18 stage-1 map is not a multiple of its grid
# size 8 (grid_attention's window mask). NAT needs no padding; 96x80 changes its sizes.
# FibottentionViT pads 100x72 to its 7x5 patch grid, whose pattern differs from the traced
# 4x4 grid's (test_fibottention_second_shape_changes_the_pattern).
SECOND_SHAPE = {'biformer': (96, 80), 'nat': (96, 80), 'hatnet': (56, 72), 'fibottention': (100, 72)}
SEG_CONFIG = 'configs/biformer/upernet_biformer-t_1xb4-200it_synthetic-ade20k-96x96.py'


def _export_and_verify(family, tmp_path, dynamic):
    model = BACKBONES[family]().eval()
    out = str(tmp_path / f'{family}.onnx')
    ranges = tool.export(model, EXPORT_SHAPE, out, batch=2, dynamic=dynamic)
    shapes = [EXPORT_SHAPE] + ([SECOND_SHAPE[family]] if dynamic else [])
    if dynamic:
        for axis, size in zip(('height', 'width'), SECOND_SHAPE[family]):
            low, high = ranges[axis]  # a tuple: the axis stayed dynamic
            assert low <= size and (high is None or size <= high), (axis, ranges)
    results = tool.verify(model, out, shapes, batch=2, atol=ATOL)
    assert [shape for shape, _ in results] == shapes
    assert all(diff <= ATOL for _, diff in results)


@pytest.mark.slow
@pytest.mark.parametrize('family', sorted(BACKBONES))
def test_static_backbone_matches_onnxruntime(family, tmp_path):
    _export_and_verify(family, tmp_path, dynamic=False)


@pytest.mark.slow
@pytest.mark.parametrize('family', sorted(SECOND_SHAPE))
def test_dynamic_backbone_matches_onnxruntime_at_two_sizes(family, tmp_path):
    _export_and_verify(family, tmp_path, dynamic=True)


def test_fibottention_second_shape_changes_the_pattern():
    """The dynamic check of FibottentionViT can fail: a graph that kept the traced pattern differs there."""
    layer_0 = [fibonacci_offsets(gh * gw, 2, 0) for gh, gw in ((4, 4), (7, 5))]
    assert layer_0[0] != layer_0[1]


@pytest.mark.parametrize('mode, layout', [('sparse', '1d'), ('official', '2d'),
                                          pytest.param('official', '1d', marks=pytest.mark.slow),
                                          pytest.param('sparse', '2d', marks=pytest.mark.slow)])
def test_dynamic_fibottention_mixer_matches_onnxruntime(layout, mode, tmp_path):
    """The mixer alone (no CLS: sparse mode has rows with no kept key) in one graph for every map size."""
    mixer = Fibottention2d(16, 4, layer_id=3, mode=mode, offset_layout=layout).eval()
    path = str(tmp_path / 'mixer.onnx')
    auto = torch.export.Dim.AUTO
    torch.onnx.export(mixer, (torch.randn(2, 6, 5, 16), ), dynamo=True, input_names=['input'],
                      dynamic_shapes=({0: auto, 1: auto, 2: auto}, )).save(path)
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    gen = torch.Generator().manual_seed(0)
    for shape in ((2, 6, 5), (1, 1, 9), (3, 11, 7), (1, 16, 16)):
        x = torch.randn(*shape, 16, generator=gen)
        with torch.no_grad():
            expected = mixer(x)
        got, = session.run(None, {'input': x.numpy()})
        assert (torch.from_numpy(got) - expected).abs().max() <= ATOL, shape


@pytest.mark.slow
def test_verify_fails_on_a_wrong_graph(tmp_path):
    """The comparison can fail: a graph exported from other weights is caught."""
    out = str(tmp_path / 'nat.onnx')
    tool.export(BACKBONES['nat']().eval(), EXPORT_SHAPE, out)
    with pytest.raises(AssertionError, match='differs from PyTorch by'):
        tool.verify(BACKBONES['nat']().eval(), out, [EXPORT_SHAPE], atol=ATOL)


@pytest.mark.slow
def test_cli_exports_a_whole_segmentor(synthetic_data, tmp_path):
    config = write_shrunk_config(
        SEG_CONFIG, str(synthetic_data), str(tmp_path / 'work'), tmp_path / 'cfg.py', checkpoint_interval=1,
        **{'model.backbone.arch': dict(_delete_=True, depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), head_dim=8),
           'model.backbone.n_win': 2, 'model.backbone.topks': (1, 2, 4, -1),
           'model.decode_head.in_channels': [16, 32, 64, 128],
           'model.decode_head.channels': 16, 'model.auxiliary_head.in_channels': 64,
           'model.auxiliary_head.channels': 16})
    out = tmp_path / 'seg.onnx'
    log = run_command('python', 'tools/deployment/pytorch2onnx.py', config, '--shape', '64', '64',
                      '--model', 'whole', '--out', out, '--verify')
    assert osp.isfile(out)
    assert 'verified at 64x64' in log
    # the whole segmentor: the logits of the decode head over the synthetic classes, stride 4
    import onnx
    graph = onnx.load(str(out)).graph
    dims = [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, 7, 16, 16]


def test_bad_shape_is_named(capsys):
    with pytest.raises(SystemExit) as exc:
        tool.parse_args(['cfg.py', '--shape', '64', '0'])
    assert exc.value.code == 2
    assert "--shape: '0' is not an int >= 1" in capsys.readouterr().err


def test_missing_checkpoint_is_named(tmp_path, capsys):
    missing = str(tmp_path / 'nope.pth')
    with pytest.raises(SystemExit):
        tool.parse_args([osp.join(REPO_ROOT, SEG_CONFIG), missing, '--shape', '64', '64'])
    assert f'checkpoint {missing!r} does not exist' in capsys.readouterr().err


def test_verify_shape_needs_dynamic(capsys):
    with pytest.raises(SystemExit):
        tool.parse_args(['cfg.py', '--shape', '64', '64', '--verify', '--verify-shape', '96', '80'])
    assert '--verify-shape [[96, 80]] needs --dynamic' in capsys.readouterr().err


def test_config_without_backbone_is_named(tmp_path):
    config = tmp_path / 'no_backbone.py'
    config.write_text("default_scope = 'mmseg'\nmodel = dict(type='EncoderDecoder')\n")
    with pytest.raises(ValueError, match='the config has no model.backbone to export'):
        tool.run(tool.parse_args([str(config), '--shape', '64', '64']))


def test_whole_model_of_a_detector_is_refused():
    args = tool.parse_args([osp.join(REPO_ROOT, 'configs/biformer/retinanet_biformer-t_fpn_1x_coco.py'),
                            '--shape', '64', '64', '--model', 'whole'])
    with pytest.raises(ValueError, match=r"part='whole' \(--model whole\) exports mmseg segmentors"):
        tool.run(args)
