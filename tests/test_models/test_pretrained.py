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
