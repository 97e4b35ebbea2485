"""tools/model_converters/hatnet2mmsparse.py: official checkpoint -> weights_only-loadable mmsparse file."""
import subprocess
import sys

import pytest
import torch

from mmsparse.models.backbones import HATNet
from ..conftest import REPO_ROOT, load_tool
from ..test_models.test_backbones.test_hat_net import official_config_to_kwargs


@pytest.mark.parametrize('layout', ['imagenet', 'mmdet'])
def test_converts_official_checkpoint(load_official, tmp_path, layout):
    fixture = load_official('hatnet_backbone_reduced.pt')
    src, dst = tmp_path / 'official.pth', tmp_path / 'converted' / 'hat-net.pth'
    if layout == 'imagenet':   # PVT-style training run: weights under 'model', DDP 'module.' prefix
        checkpoint = {'model': {f'module.{k}': v for k, v in fixture['state_dict'].items()}, 'epoch': 300}
    else:                      # a detector checkpoint: weights under 'state_dict', keys under 'backbone.'
        checkpoint = {'state_dict': {f'backbone.{k}': v for k, v in fixture['state_dict'].items()},
                      'meta': {'epoch': 12}}
    torch.save(checkpoint, src)
    if layout == 'imagenet':   # the command line once; in-process otherwise (a subprocess costs ~10 s)
        subprocess.run([sys.executable, 'tools/model_converters/hatnet2mmsparse.py', str(src), str(dst)],
                       cwd=REPO_ROOT, check=True)
    else:
        load_tool('model_converters/hatnet2mmsparse.py').convert(str(src), str(dst))
    converted = torch.load(dst, weights_only=True)['state_dict']
    assert not any(k.startswith('classifier.') or '.proj_norm.' in k for k in converted)
    model = HATNet(**official_config_to_kwargs(fixture['config'])).double().eval()
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        outs = model(fixture['input'])
    for out, expected in zip(outs, fixture['outs']):
        torch.testing.assert_close(out, expected, atol=fixture['atol'], rtol=fixture['rtol'])
