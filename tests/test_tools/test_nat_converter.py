"""tools/model_converters/nat2mmsparse.py: official checkpoint -> weights_only-loadable mmsparse file."""
import subprocess
import sys

import pytest
import torch

from mmsparse.models.backbones import NAT
from ..conftest import REPO_ROOT
from ..test_models.test_backbones.test_nat import official_config_to_kwargs


@pytest.mark.parametrize('name', ['nat_backbone_reduced.pt', 'dinat_backbone_reduced.pt'])
def test_converts_official_checkpoint(load_official, tmp_path, name):
    fixture = load_official(name)
    src, dst = tmp_path / 'official.pth', tmp_path / 'converted' / 'nat.pth'
    # An official mmdet checkpoint: weights under 'state_dict', keys under 'backbone.'.
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in fixture['state_dict'].items()},
                'meta': {'epoch': 36}}, src)
    subprocess.run([sys.executable, 'tools/model_converters/nat2mmsparse.py', str(src), str(dst)],
                   cwd=REPO_ROOT, check=True)
    converted = torch.load(dst, weights_only=True)['state_dict']
    model = NAT(**official_config_to_kwargs(fixture['config'])).double().eval()
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        outs = model(fixture['input'])
    for out, expected in zip(outs, fixture['outputs']):
        torch.testing.assert_close(out, expected, atol=1e-9, rtol=1e-7)


def test_drops_the_imagenet_classifier(load_official, tmp_path):
    """A flat ImageNet state dict: norm.* and head.* go, everything else maps one to one."""
    fixture = load_official('nat_backbone_reduced.pt')
    state_dict = {k: v for k, v in fixture['state_dict'].items() if not k.startswith('norm')}
    state_dict.update({'norm.weight': torch.ones(64), 'norm.bias': torch.zeros(64),
                       'head.weight': torch.zeros(1000, 64), 'head.bias': torch.zeros(1000)})
    src, dst = tmp_path / 'nat_mini.pth', tmp_path / 'nat.pth'
    torch.save(state_dict, src)
    subprocess.run([sys.executable, 'tools/model_converters/nat2mmsparse.py', str(src), str(dst)],
                   cwd=REPO_ROOT, check=True)
    converted = torch.load(dst, weights_only=True)['state_dict']
    own = NAT(**official_config_to_kwargs(fixture['config'])).state_dict()
    assert set(converted) == {k for k in own if not k.startswith('norm')}
    assert converted['downsample_layers.1.proj.weight'].shape == (16, 8, 3, 3)
    assert converted['stages.0.1.attn.rpb'].shape == (1, 13, 13)
