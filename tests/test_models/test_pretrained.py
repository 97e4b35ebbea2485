"""load_pretrained_weights: URLs, whole-detector checkpoints, and nothing half-loaded silently."""
import pytest
import torch
from torch import nn

from mmsparse.models.utils import pretrained


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.head = nn.Linear(4, 2)


def saved_weights(tmp_path, state_dict):
    path = str(tmp_path / 'weights.pth')
    torch.save({'state_dict': state_dict}, path)
    return path


def test_whole_detector_checkpoint_loads_its_backbone(tmp_path):
    source = TwoLayers()
    state_dict = {f'backbone.{k}': v for k, v in source.state_dict().items()}
    state_dict['neck.conv.weight'] = torch.zeros(1)
    model = TwoLayers()
    pretrained.load_pretrained_weights(model, saved_weights(tmp_path, state_dict))
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)


def test_nothing_loadable_raises_even_when_not_strict(tmp_path):
    path = saved_weights(tmp_path, {'other.weight': torch.zeros(2)})
    model = TwoLayers()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match='not a single tensor'):
        pretrained.load_pretrained_weights(model, path, strict=False)
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value)


def test_not_strict_loads_the_rest_and_reports(tmp_path):
    source = TwoLayers()
    state_dict = dict(source.state_dict(), **{'head.weight': torch.zeros(5, 5)})
    model = TwoLayers()
    pretrained.load_pretrained_weights(model, saved_weights(tmp_path, state_dict), strict=False)
    torch.testing.assert_close(model.stem.weight, source.stem.weight, rtol=0, atol=0)
    assert not torch.equal(model.head.weight, torch.zeros(2, 4))


def test_urls_are_passed_to_the_loader(monkeypatch):
    source = TwoLayers()
    seen = []

    def fake_loader(path):
        seen.append(path)
        return source.state_dict()

    monkeypatch.setattr(pretrained, 'load_state_dict_from_checkpoint', fake_loader)
    model = TwoLayers()
    url = 'https://example.com/weights/two_layers.pth'
    pretrained.load_pretrained_weights(model, url)
    assert seen == [url]
    torch.testing.assert_close(model.head.bias, source.head.bias, rtol=0, atol=0)


def test_missing_local_file_is_named(tmp_path):
    missing = str(tmp_path / 'absent.pth')
    with pytest.raises(FileNotFoundError, match='absent.pth'):
        pretrained.load_pretrained_weights(TwoLayers(), missing)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_non_tensor_value_is_refused_before_any_weight_is_copied(tmp_path):
    state_dict = dict(TwoLayers().state_dict(), **{'head.scale': 0.5})
    path = saved_weights(tmp_path, state_dict)
    model = TwoLayers()
    before = snapshot(model)
    for strict in (True, False):
        with pytest.raises(TypeError, match=rf"checkpoint {path} .*'head.scale' \(float\)"):
            pretrained.load_pretrained_weights(model, path, strict=strict)
        assert_unchanged(model, before)


def test_non_tensor_from_a_conversion_is_refused_before_any_weight_is_copied(tmp_path):
    path = saved_weights(tmp_path, TwoLayers().state_dict())
    model = TwoLayers()
    before = snapshot(model)
    with pytest.raises(TypeError, match=rf"checkpoint {path} .*'stem.bias' \(str\)"):
        pretrained.load_pretrained_weights(model, path, convert=lambda sd: dict(sd, **{'stem.bias': 'x'}),
                                           is_official=lambda sd: True, strict=False)
    assert_unchanged(model, before)


def test_empty_checkpoint_is_refused_by_name(tmp_path):
    path = tmp_path / 'empty.pth'
    path.write_bytes(b'')
    model = TwoLayers()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match=f'checkpoint {path} is an empty file'):
        pretrained.load_pretrained_weights(model, str(path))
    assert_unchanged(model, before)


def test_backbone_init_cfg_refuses_non_tensor_checkpoint(tmp_path):
    from mmsparse.models.backbones import NAT
    arch = dict(embed_dims=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2.)
    source = NAT(arch)
    state_dict = dict(source.state_dict(), **{'stages.0.0.gamma': None})
    path = saved_weights(tmp_path, state_dict)
    model = NAT(arch, init_cfg=dict(type='Pretrained', checkpoint=path))
    before = snapshot(model)
    with pytest.raises(TypeError, match=rf"checkpoint {path} .*'stages.0.0.gamma' \(NoneType\)"):
        model.init_weights()
    assert_unchanged(model, before)
