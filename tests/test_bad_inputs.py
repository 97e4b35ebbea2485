"""Bad inputs above the op level: each is refused with a named error and leaves nothing changed.

Every case asserts the exception type (or a CLI's exit code) and that the message
names the argument and what is allowed. The op-level cases (bad shapes, dtypes,
devices, ``kernel_size``/``n_win``/``topk`` of the ops, empty batches, -inf logits)
live in ``tests/test_ops/test_checks.py`` and are not repeated here; this file
covers the attention modules, the backbones, the checkpoint loader, ``init_cfg``
Pretrained loading, the converters and the command-line tools.
"""
import importlib.util
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
import torch

from mmsparse.models.attentions import (BiLevelRoutingAttention, Fibottention2d, GlobalAttentionLePE,
                                        HierarchicalMHSA, NeighborhoodAttention2d)
from mmsparse.models.backbones import NAT, BiFormer, FibottentionViT, HATNet
from mmsparse.utils.checkpoint import load_state_dict_from_checkpoint, safe_load

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# Small custom archs (the backbone tests use the same sizes).
BIFORMER_ARCH = dict(depths=(1, 1, 1, 1), embed_dims=(32, 64, 96, 128), head_dim=32)
NAT_ARCH = dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2.)
HAT_ARCH = dict(embed_dims=(16, 32, 48, 64), head_dim=8, depths=(1, 1, 1, 1), expansions=(2, 2, 2, 2),
                grid_sizes=(8, 7, 7, 1), ds_ratios=(8, 4, 2, 1), kernel_sizes=(3, 3, 3, 3))
VIT_ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=2)


def _biformer(**kw):
    return BiFormer(BIFORMER_ARCH, n_win=2, topks=(1, 2, 4, -1), global_heads=2, **kw)


def _nat(**kw):
    return NAT(NAT_ARCH, **kw)


def _hat(**kw):
    return HATNet(HAT_ARCH, **kw)


def _vit(**kw):
    return FibottentionViT(VIT_ARCH, img_size=32, **kw)


# --------------------------------------------------------------------------- attention modules
ATTENTION_CASES = [
    # (constructor, kwargs, error, match: the argument and what is allowed)
    (NeighborhoodAttention2d, dict(embed_dims=30, num_heads=4), ValueError,
     r'num_heads=4 must be a positive divisor of embed_dims=30'),
    (NeighborhoodAttention2d, dict(embed_dims=32, num_heads=4, kernel_size=4), ValueError,
     r'kernel_size=4 must be an odd int >= 3'),
    (NeighborhoodAttention2d, dict(embed_dims=32, num_heads=4, kernel_size=1), ValueError,
     r'kernel_size=1 must be an odd int >= 3'),
    (NeighborhoodAttention2d, dict(embed_dims=32, num_heads=4, kernel_size=3.0), ValueError,
     r'kernel_size=3\.0 must be an odd int >= 3'),
    (NeighborhoodAttention2d, dict(embed_dims=32, num_heads=4, dilation=0), ValueError,
     r'dilation=0 must be an int >= 1'),
    (BiLevelRoutingAttention, dict(embed_dims=32, num_heads=2, n_win=2, topk=5), ValueError,
     r'topk=5 must be in \[1, n_win\*\*2 = 4\] for n_win=2'),
    (BiLevelRoutingAttention, dict(embed_dims=32, num_heads=2, n_win=2, topk=0), ValueError,
     r'topk=0 must be in \[1, n_win\*\*2 = 4\]'),
    (BiLevelRoutingAttention, dict(embed_dims=32, num_heads=2, n_win=2, topk=2, lepe_kernel=4), ValueError,
     r'lepe_kernel=4 is not allowed: .*positive odd int \(3, 5, 7'),
    (BiLevelRoutingAttention, dict(embed_dims=32, num_heads=2, n_win=2, topk=2, lepe_kernel=True), ValueError,
     r'lepe_kernel=True is not allowed: .*positive odd int'),
    (GlobalAttentionLePE, dict(embed_dims=30, num_heads=4), ValueError,
     r'num_heads=4 must be a positive divisor of embed_dims=30'),
    (GlobalAttentionLePE, dict(embed_dims=32, num_heads=4, lepe_kernel=0), ValueError,
     r'lepe_kernel=0 is not allowed: .*positive odd int'),
    (HierarchicalMHSA, dict(embed_dims=32, num_heads=5), ValueError,
     r'num_heads=5 must be a positive divisor of embed_dims=32'),
    (HierarchicalMHSA, dict(embed_dims=32, num_heads=0), ValueError,
     r'num_heads=0 must be a positive divisor of embed_dims=32'),
    (HierarchicalMHSA, dict(embed_dims=32, num_heads=4, grid_size=0), ValueError,
     r'grid_size=0 must be a positive int'),
    (HierarchicalMHSA, dict(embed_dims=32, num_heads=4, ds_ratio=1.5), ValueError,
     r'ds_ratio=1\.5 must be a positive int'),
    (HierarchicalMHSA, dict(embed_dims=32, head_dim=8), TypeError,
     r"HierarchicalMHSA does not take the argument\(s\) 'head_dim'; it takes embed_dims, num_heads, grid_size"),
    (Fibottention2d, dict(embed_dims=30, num_heads=4), ValueError,
     r'num_heads=4 must be a positive divisor of embed_dims=30'),
    (Fibottention2d, dict(embed_dims=32, num_heads=4, attention='sparse'), TypeError,
     r"Fibottention2d does not take the argument\(s\) 'attention'; it takes embed_dims, num_heads, layer_id"),
    (Fibottention2d, dict(embed_dims=32, num_heads=4, mode='fast'), ValueError,
     r"mode='fast' is not supported; expected one of"),
    (Fibottention2d, dict(embed_dims=32, num_heads=4, shuffle='never'), ValueError,
     r"shuffle='never' is not supported; expected one of"),
    (Fibottention2d, dict(embed_dims=32, num_heads=4, offset_layout='3d'), ValueError,
     r"offset_layout='3d' is not supported; expected one of"),
]


@pytest.mark.parametrize('cls, kwargs, error, match', ATTENTION_CASES,
                         ids=[f'{c[0].__name__}-{"-".join(f"{k}={v}" for k, v in c[1].items())}'
                              for c in ATTENTION_CASES])
def test_attention_bad_arguments_are_named(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


def test_bra_without_auto_pad_names_n_win():
    attn = BiLevelRoutingAttention(32, 2, n_win=2, topk=2, auto_pad=False)
    with pytest.raises(ValueError, match=r'input size 5x4 is not divisible by n_win=2; set auto_pad=True'):
        attn(torch.randn(1, 5, 4, 32))


# --------------------------------------------------------------------------- backbones
BACKBONE_CASES = [
    # (builder, kwargs, error, match)
    (BiFormer, dict(arch='huge'), ValueError,
     r"arch='huge' is not a BiFormer preset; choose one of \['base', 'small', 'tiny'\]"),
    (NAT, dict(arch='xl'), ValueError, r"arch='xl' is not a NAT preset; choose one of \['base', 'large', 'mini'"),
    (HATNet, dict(arch=7), TypeError, r'arch must be a preset name or a dict, got int'),
    (FibottentionViT, dict(arch=dict(embed_dims=32, num_layers=2, num_heads=2)), ValueError,
     r"must have exactly the keys \['embed_dims', 'mlp_ratio', 'num_heads', 'num_layers'\]"),
    (BiFormer, dict(arch=dict(BIFORMER_ARCH, heads=2)), ValueError,
     r"must have exactly the keys \['depths', 'embed_dims', 'head_dim'\]"),
    (HATNet, dict(arch=dict(HAT_ARCH, depths=(1, 1))), ValueError, r"arch\['depths'\]=\(1, 1\) must have 4 entries"),
    (_nat, dict(drop_path_rate=1.0), ValueError, r'drop_path_rate=1\.0 must be in \[0, 1\)'),
    (_hat, dict(drop_path_rate=-0.1), ValueError, r'drop_path_rate=-0\.1 must be in \[0, 1\)'),
    (_vit, dict(drop_path_rate=1.5), ValueError, r'drop_path_rate=1\.5 must be in \[0, 1\)'),
    (_biformer, dict(drop_path_rate=2.0), ValueError, r'drop_path_rate=2\.0 must be in \[0, 1\)'),
    (_hat, dict(out_indices=(4, )), ValueError, r'out_indices=\(4,\) must hold ints in \[-4, 3\].*out of range'),
    (_vit, dict(out_indices=(0, 4), out_scales=(1, 1)), ValueError,
     r'out_indices=\(0, 4\) must hold ints in \[-4, 3\].*4 is out of range for 4 outputs'),
    (_nat, dict(out_indices=()), ValueError, r'out_indices=\(\) must select at least one output: ints in \[-4, 3\]'),
    (_vit, dict(out_indices=(0, 1), out_scales=(1, 1, 1)), ValueError,
     r'out_scales=\(1, 1, 1\) must have one entry per out_indices=\(0, 1\)'),
    (_nat, dict(frozen_stages=5), ValueError, r'frozen_stages=5 must be an int in \[-1, 4\]'),
    (_hat, dict(frozen_stages=-2), ValueError, r'frozen_stages=-2 must be an int in \[-1, 4\]'),
    (_vit, dict(frozen_stages=1.0), TypeError, r'frozen_stages=1\.0 must be an int in \[-1, 4\].*got a float'),
    (_biformer, dict(frozen_stages=True), TypeError, r'frozen_stages=True must be an int in \[-1, 4\].*got a bool'),
    (_biformer, dict(side_dwconv=2), ValueError, r'side_dwconv=2 is not allowed: .*positive odd int'),
    (_biformer, dict(mlp_ratios=(3, 3)), ValueError, r'mlp_ratios=\(3, 3\) must have 4 entries'),
    (_nat, dict(dilations=[[1], [1], [0], [1]]), ValueError, r'dilations\[2\]\[0\]=0 must be an int >= 1 or None'),
]


@pytest.mark.parametrize('build, kwargs, error, match', BACKBONE_CASES,
                         ids=[f'{getattr(c[0], "__name__", "")}-{"-".join(f"{k}={v}" for k, v in c[1].items())}'[:80]
                              for c in BACKBONE_CASES])
def test_backbone_bad_arguments_are_named(build, kwargs, error, match):
    with pytest.raises(error, match=match):
        build(**kwargs)


# --------------------------------------------------------------------------- checkpoint loader
class _Evil:
    """Unpickling this runs ``touch MARKER``: the loader must refuse it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}', ))


def test_empty_checkpoint_file_is_named(tmp_path):
    path = tmp_path / 'empty.pth'
    path.write_bytes(b'')
    with pytest.raises(RuntimeError, match=r'empty\.pth is an empty file \(0 bytes\); download or save it again'):
        load_state_dict_from_checkpoint(str(path))


def test_non_tensor_value_is_named(tmp_path):
    path = tmp_path / 'mixed.pth'
    torch.save({'state_dict': {'w': torch.zeros(2), 'step': 3}}, path)
    with pytest.raises(TypeError, match=r"not a weights file: the values of its state dict must all be "
                       r"tensors, but 1 are not: 'step' \(int\)"):
        load_state_dict_from_checkpoint(str(path))


def test_non_dict_checkpoint_is_named(tmp_path):
    path = tmp_path / 'list.pth'
    torch.save([torch.zeros(2)], path)
    with pytest.raises(TypeError, match=r'list\.pth holds a list, expected a dict'):
        load_state_dict_from_checkpoint(str(path))


def test_pickle_calling_os_system_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'meta': _Evil(marker)}, path)
    with pytest.raises(pickle.UnpicklingError, match=r'global (posix|nt)\.system is not allowed'):
        safe_load(str(path))
    with pytest.raises(pickle.UnpicklingError, match=r'global (posix|nt)\.system is not allowed'):
        load_state_dict_from_checkpoint(str(path))
    assert not marker.exists()


# --------------------------------------------------------------------------- init_cfg Pretrained
def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_pretrained_shape_mismatch_changes_nothing(tmp_path):
    other = NAT(dict(NAT_ARCH, embed_dims=32, num_heads=(2, 4, 8, 16)))
    path = tmp_path / 'other.pth'
    torch.save({'state_dict': other.state_dict()}, path)
    model = _nat(init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match=r'does not match the model; .*checkpoint \(32,.*\) vs model \(16,.*'
                       r'pass strict=False in init_cfg'):
        model.init_weights()
    _assert_unchanged(model, before)


def test_pretrained_other_side_dwconv_changes_nothing(tmp_path):
    other = _biformer(side_dwconv=3)
    path = tmp_path / 'dw3.pth'
    torch.save({'state_dict': other.state_dict()}, path)
    model = _biformer(init_cfg=dict(type='Pretrained', checkpoint=str(path), strict=False))
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match=r'made with side_dwconv=3 .* but the model has side_dwconv=5; '
                       r'build the backbone with side_dwconv=3'):
        model.init_weights()
    _assert_unchanged(model, before)


def test_pretrained_missing_file_changes_nothing(tmp_path):
    model = _hat(init_cfg=dict(type='Pretrained', checkpoint=str(tmp_path / 'nope.pth')))
    before = _snapshot(model)
    with pytest.raises(FileNotFoundError, match=r'init_cfg checkpoint=.*nope\.pth.* does not exist'):
        model.init_weights()
    _assert_unchanged(model, before)


def test_pretrained_wrong_prefix_changes_nothing(tmp_path):
    path = tmp_path / 'vit.pth'
    torch.save({'state_dict': _vit().state_dict()}, path)
    model = _vit(init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match=r"has no key under prefix='backbone\.'"):
        model.init_weights()
    _assert_unchanged(model, before)


# --------------------------------------------------------------------------- converters
def _load_script(relpath):
    path = osp.join(REPO_ROOT, relpath)
    spec = importlib.util.spec_from_file_location(osp.splitext(osp.basename(path))[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONVERTERS = ['biformer2mmsparse.py', 'hatnet2mmsparse.py', 'nat2mmsparse.py', 'vit2mmsparse.py']


@pytest.mark.parametrize('script', CONVERTERS)
def test_converter_missing_source_is_named(script, tmp_path, monkeypatch):
    module = _load_script(f'tools/model_converters/{script}')
    src, dst = tmp_path / 'missing.pth', tmp_path / 'out.pth'
    monkeypatch.setattr(sys, 'argv', [script, str(src), str(dst)])
    with pytest.raises(FileNotFoundError, match=r'missing\.pth'):
        module.main()
    assert not dst.exists()


@pytest.mark.parametrize('script', ['nat2mmsparse.py', 'vit2mmsparse.py'])
def test_converter_non_checkpoint_source_is_named(script, tmp_path, monkeypatch):
    module = _load_script(f'tools/model_converters/{script}')
    src, dst = tmp_path / 'notes.pth', tmp_path / 'out.pth'
    torch.save({'state_dict': {'w': torch.zeros(1), 'epoch': 'twelve'}}, src)
    monkeypatch.setattr(sys, 'argv', [script, str(src), str(dst)])
    with pytest.raises(TypeError, match=r"notes\.pth is not a weights file: .*must all be tensors.*'epoch' \(str\)"):
        module.main()
    assert not dst.exists()


def test_converter_script_on_empty_file_exits_nonzero(tmp_path):
    src, dst = tmp_path / 'empty.pth', tmp_path / 'out.pth'
    src.write_bytes(b'')
    result = subprocess.run([sys.executable, 'tools/model_converters/biformer2mmsparse.py', str(src), str(dst)],
                            cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert 'RuntimeError: checkpoint' in result.stderr and 'is an empty file (0 bytes)' in result.stderr
    assert not dst.exists()


# --------------------------------------------------------------------------- command-line tools
def _run(args):
    return subprocess.run([sys.executable] + args, cwd=REPO_ROOT, capture_output=True, text=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason='--amp is allowed with a GPU')
def test_train_amp_without_cuda_exits_2():
    result = _run(['tools/train.py', 'configs/nat/retinanet_nat-t_fpn_1x_coco.py', '--amp'])
    assert result.returncode == 2
    assert '--amp needs a CUDA GPU' in result.stderr and 'drop --amp to train in fp32' in result.stderr


def test_test_out_bad_suffix_on_mmdet_config(tmp_path):
    ckpt = tmp_path / 'ckpt.pth'
    result = _run(['tools/test.py', 'configs/nat/retinanet_nat-t_fpn_1x_coco.py', str(ckpt), '--out',
                   str(tmp_path / 'results.json'), '--work-dir', str(tmp_path / 'work')])
    assert result.returncode == 1
    assert 'error: --out must be a .pkl or .pickle file for a mmdet config' in result.stderr
    assert 'only mmseg configs take a directory' in result.stderr


def test_confusion_matrix_missing_pred_dir(tmp_path):
    result = _run(['tools/analysis_tools/confusion_matrix.py',
                   'configs/biformer/upernet_biformer-t_1xb4-200it_synthetic-ade20k-96x96.py',
                   str(tmp_path / 'no_preds'), '--out', str(tmp_path / 'cm.png')])
    assert result.returncode == 2
    assert 'PRED_DIR' in result.stderr and 'is not a folder' in result.stderr
    assert not (tmp_path / 'cm.png').exists()


@pytest.mark.parametrize('size', [['8', '64'], ['64', 'wide']])
def test_generate_synthetic_data_bad_size(size, tmp_path, capsys):
    module = _load_script('tools/misc/generate_synthetic_data.py')
    out = tmp_path / 'data'
    with pytest.raises(SystemExit) as exit_info:
        module.main(['--out', str(out), '--size'] + size)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert '--size' in err and f'must be an integer >= {module.MIN_IMAGE_SIDE}' in err
    assert not out.exists()
