"""tools/model_converters/biformer2mmsparse.py: official checkpoint -> weights_only-loadable mmsparse file."""
import subprocess
import sys

import torch

from mmsparse.models.backbones import BiFormer
from ..conftest import REPO_ROOT
from ..test_models.test_backbones.test_biformer import official_config_to_kwargs


def test_converts_official_checkpoint(load_official, tmp_path):
    fixture = load_official('biformer_backbone_tiny_reduced.pt')
    src, dst = tmp_path / 'official.pth', tmp_path / 'converted' / 'biformer.pth'
    # An official mmdet checkpoint: weights under 'state_dict', keys under 'backbone.'.
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in fixture['state_dict'].items()},
                'meta': {'epoch': 12}}, src)
    subprocess.run([sys.executable, 'tools/model_converters/biformer2mmsparse.py', str(src), str(dst)],
                   cwd=REPO_ROOT, check=True)
    converted = torch.load(dst, weights_only=True)['state_dict']
    model = BiFormer(**official_config_to_kwargs(fixture['config'])).double().eval()
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        outs = model(fixture['input'])
    for out, expected in zip(outs, fixture['outputs']):
        torch.testing.assert_close(out, expected, atol=1e-9, rtol=1e-7)
