"""tools/model_converters/vit2mmsparse.py: official/timm ViT checkpoint -> weights_only-loadable mmsparse file."""
import os
import subprocess
import sys

import torch

from ..conftest import REPO_ROOT, load_tool
from ..test_models.test_backbones.test_fibottention_vit import official_model


def _official_checkpoint(load_official, path):
    fixture = load_official('fibottention_vit_reduced.pt')
    # The official MAE-style checkpoint: weights under 'model', classifier included.
    torch.save({'model': fixture['state_dict'], 'epoch': 99}, path)
    return fixture


def test_converts_official_checkpoint(load_official, tmp_path):
    src, dst = tmp_path / 'checkpoint-99.pth', tmp_path / 'converted' / 'fib-vit.pth'
    fixture = _official_checkpoint(load_official, src)
    subprocess.run([sys.executable, 'tools/model_converters/vit2mmsparse.py', str(src), str(dst)],
                   cwd=REPO_ROOT, check=True, env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    converted = torch.load(dst, weights_only=True)['state_dict']
    model = official_model(fixture)
    model.load_state_dict(converted, strict=True)      # no head, nothing missing
    with torch.no_grad():
        tokens = model.forward_tokens(fixture['input'])
    torch.testing.assert_close(tokens, fixture['tokens'], atol=1e-10, rtol=1e-8)


def test_resizes_pos_embed(load_official, tmp_path):
    src, dst = tmp_path / 'checkpoint-99.pth', tmp_path / 'fib-vit-48.pth'
    fixture = _official_checkpoint(load_official, src)
    load_tool('model_converters/vit2mmsparse.py').convert(str(src), str(dst), img_size=[48], patch_size=4)
    pos = torch.load(dst, weights_only=True)['state_dict']['pos_embed']
    assert pos.shape == (1, 1 + 12 * 12, 48)
    torch.testing.assert_close(pos[:, 0], fixture['state_dict']['pos_embed'][:, 0])   # CLS slot untouched
