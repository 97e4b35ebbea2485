"""tools/model_converters/biformer2mmsparse.py: official checkpoint -> weights_only-loadable mmsparse file."""
import subprocess
import sys

import pytest
import torch

from mmsparse.models.backbones import BiFormer
from mmsparse.models.utils.ckpt_convert import biformer_side_dwconv
from ..conftest import REPO_ROOT
from ..test_models.test_backbones.test_biformer import (TINY_KWARGS, official_config_to_kwargs, randomized,
                                                        save_official_mm_checkpoint)


def run_converter(src, dst):
    """Run the script as a user would; return its stdout."""
    return subprocess.run([sys.executable, 'tools/model_converters/biformer2mmsparse.py', str(src), str(dst)],
                          cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout


def test_converts_official_checkpoint(load_official, tmp_path):
    fixture = load_official('biformer_backbone_tiny_reduced.pt')
    src, dst = tmp_path / 'official.pth', tmp_path / 'converted' / 'biformer.pth'
    # An official mmdet checkpoint: weights under 'state_dict', keys under 'backbone.'.
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in fixture['state_dict'].items()},
                'meta': {'epoch': 12}}, src)
    assert 'side_dwconv=5' in run_converter(src, dst)
    converted = torch.load(dst, weights_only=True)['state_dict']
    model = BiFormer(**official_config_to_kwargs(fixture['config'])).double().eval()
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        outs = model(fixture['input'])
    for out, expected in zip(outs, fixture['outputs']):
        torch.testing.assert_close(out, expected, atol=1e-9, rtol=1e-7)


def test_converts_checkpoint_of_other_side_dwconv(tmp_path):
    source = randomized(BiFormer(**TINY_KWARGS, side_dwconv=3))
    src, dst = tmp_path / 'official.pth', tmp_path / 'biformer.pth'
    save_official_mm_checkpoint(source, src)
    assert 'build mmsparse.BiFormer with side_dwconv=3' in run_converter(src, dst)
    converted = torch.load(dst, weights_only=True)['state_dict']
    model = BiFormer(**TINY_KWARGS, side_dwconv=3).eval()
    model.load_state_dict(converted, strict=True)
    x = torch.randn(1, 3, 61, 45)
    with torch.no_grad():
        for out, expected in zip(model(x), source(x)):
            torch.testing.assert_close(out, expected, atol=0, rtol=0)
    with pytest.raises(RuntimeError, match=r'made with side_dwconv=3 .* model has side_dwconv=5'):
        BiFormer(**TINY_KWARGS).load_state_dict(converted)


def test_side_dwconv_is_read_from_lepe_kernels():
    state_dict = BiFormer(**TINY_KWARGS, side_dwconv=7).state_dict()
    assert biformer_side_dwconv(state_dict) == 7
    assert biformer_side_dwconv({k: v for k, v in state_dict.items() if '.lepe.' not in k}) is None
    state_dict['stages.3.0.attn.lepe.weight'] = torch.zeros(128, 1, 3, 3)
    with pytest.raises(ValueError, match=r'7x7 in stages\.0\.0\.attn\.lepe\.weight and 3 more; '
                                         r'3x3 in stages\.3\.0\.attn\.lepe\.weight$'):
        biformer_side_dwconv(state_dict)
    state_dict = {'stages.0.0.attn.lepe.weight': torch.zeros(16, 1, 3, 5)}
    with pytest.raises(ValueError, match='must be square'):
        biformer_side_dwconv(state_dict)
