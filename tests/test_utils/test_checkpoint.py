"""Safe checkpoint loading (mmsparse.utils.checkpoint) on torch >= 2.6."""
import io
import os
import pickle
import subprocess
import sys
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.runner.checkpoint import CheckpointLoader, save_checkpoint

from mmsparse.utils import (install_safe_checkpoint_loading, load_state_dict_from_checkpoint,
                            safe_load)
from mmsparse.utils.checkpoint import load_from_local_safe


@pytest.fixture
def restore_loaders(monkeypatch):
    """Undo install_safe_checkpoint_loading() so tests do not leak global state."""
    # registering mutates the scheme dict in place: let it mutate a copy
    monkeypatch.setattr(CheckpointLoader, '_schemes', CheckpointLoader._schemes.copy())


def mmengine_checkpoint(path):
    """Save a checkpoint with the structure ``Runner.save_checkpoint`` writes."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    hub = MessageHub.get_instance('test_safe_load')
    for i in range(3):
        hub.update_scalar('train/loss', 1.0 / (i + 1))
        hub.update_scalar('train/lr', 0.1)
    hub.update_info('iter', 3)
    hub.update_info('seed_array', np.arange(4))
    hub.update_info('best_score', np.float64(0.5))
    checkpoint = dict(
        meta=dict(epoch=1, iter=3, seed=np.int64(7), experiment_name='test',
                  dataset_meta=dict(classes=('a', 'b'), counts=Counter(a=2, b=1))),
        state_dict=OrderedDict(model.state_dict()),
        optimizer=optimizer.state_dict(),
        message_hub=hub.state_dict())
    save_checkpoint(checkpoint, str(path))
    return checkpoint


def check_loaded(loaded, saved):
    for key, value in saved['state_dict'].items():
        assert torch.equal(loaded['state_dict'][key], value)
    assert loaded['meta'] == saved['meta']
    loss = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer)
    assert loss.current() == pytest.approx(1 / 3)
    # statistics methods were unpickled through the guarded getattr
    assert loss.statistics('mean') == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    info = loaded['message_hub']['runtime_info']
    np.testing.assert_array_equal(info['seed_array'], np.arange(4))
    assert info['best_score'] == np.float64(0.5)


def test_mmengine_checkpoint_needs_the_fallback(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    mmengine_checkpoint(path)
    with pytest.raises(pickle.UnpicklingError, match='was not an allowed global'):
        torch.load(path, weights_only=True)


def test_safe_load_mmengine_checkpoint(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    saved = mmengine_checkpoint(path)
    check_loaded(safe_load(path), saved)
    with open(path, 'rb') as f:  # a stream is rewound between the two attempts
        check_loaded(safe_load(f), saved)


def test_safe_load_legacy_format():
    buffer = io.BytesIO()
    hist = HistoryBuffer([1.0, 2.0], [1, 1])
    torch.save(dict(hist=hist, w=torch.ones(2)), buffer, _use_new_zipfile_serialization=False)
    buffer.seek(0)
    loaded = safe_load(buffer)
    assert loaded['hist'].mean() == 1.5
    assert torch.equal(loaded['w'], torch.ones(2))


def test_mmengine_loader_after_install(tmp_path, restore_loaders):
    path = tmp_path / 'epoch_1.pth'
    saved = mmengine_checkpoint(path)
    install_safe_checkpoint_loading()
    install_safe_checkpoint_loading()  # idempotent
    assert CheckpointLoader._get_checkpoint_loader(str(path)) is load_from_local_safe
    check_loaded(CheckpointLoader.load_checkpoint(str(path), map_location='cpu'), saved)


class RunsCommand:
    """Pickles into a call of ``os.system(command)``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command, )


@pytest.mark.parametrize('fmt', ['zip', 'legacy', 'raw-pickle'])
def test_code_execution_is_refused(tmp_path, fmt, restore_loaders):
    marker = tmp_path / 'pwned'
    payload = dict(state_dict=OrderedDict(w=torch.zeros(1)), evil=RunsCommand(f'touch {marker}'))
    path = tmp_path / 'evil.pth'
    if fmt == 'raw-pickle':
        # not a torch file at all: torch.load reads its first pickle with
        # pickle_module.load, so that one must be restricted too
        path.write_bytes(pickle.dumps(RunsCommand(f'touch {marker}'), protocol=2))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=fmt == 'zip')
    refused = f'global {os.system.__module__}.system is not allowed'
    with pytest.raises(pickle.UnpicklingError, match=refused):
        safe_load(path)
    install_safe_checkpoint_loading()
    with pytest.raises(pickle.UnpicklingError, match=refused):
        CheckpointLoader.load_checkpoint(str(path))
    assert not marker.exists()


class GetsAttribute:
    """Pickles into ``getattr(target, name)``."""

    def __init__(self, target, name):
        self.target, self.name = target, name

    def __reduce__(self):
        return getattr, (self.target, self.name)


@pytest.mark.parametrize('target,name', [(OrderedDict, 'fromkeys'),
                                         (HistoryBuffer, '_set_default_statistics'),
                                         (HistoryBuffer, '__init__')])
def test_getattr_is_guarded(tmp_path, target, name):
    path = tmp_path / 'getattr.pth'
    torch.save(dict(x=GetsAttribute(target, name)), path)
    with pytest.raises(pickle.UnpicklingError, match=f'getattr is not allowed .*{name!r}'):
        safe_load(path)


def test_getattr_allowed_for_history_buffer_statistics(tmp_path):
    path = tmp_path / 'getattr.pth'
    torch.save(dict(x=GetsAttribute(HistoryBuffer, 'mean')), path)
    assert safe_load(path)['x'] is HistoryBuffer.mean


def test_unrelated_errors_are_not_retried(tmp_path):
    path = tmp_path / 'broken.pth'
    path.write_bytes(b'not a checkpoint')
    with pytest.raises(pickle.UnpicklingError) as error:
        safe_load(path)
    assert 'is not allowed' not in str(error.value)


@pytest.mark.parametrize('key', ['state_dict', 'model', 'module', None])
@pytest.mark.parametrize('prefix', ['', 'module.'])
def test_load_state_dict_from_checkpoint(tmp_path, key, prefix):
    weights = OrderedDict([(f'{prefix}stem.weight', torch.rand(2, 3)),
                           (f'{prefix}head.bias', torch.rand(2))])
    checkpoint = weights if key is None else {key: weights, 'meta': dict(epoch=1)}
    path = tmp_path / 'pretrain.pth'
    torch.save(checkpoint, path)
    state_dict = load_state_dict_from_checkpoint(str(path))
    assert list(state_dict) == ['stem.weight', 'head.bias']
    assert torch.equal(state_dict['stem.weight'], weights[f'{prefix}stem.weight'])


def test_load_state_dict_prefers_state_dict_key(tmp_path):
    path = tmp_path / 'pretrain.pth'
    torch.save(dict(state_dict=dict(a=torch.ones(1)), model=dict(b=torch.zeros(1))), path)
    assert list(load_state_dict_from_checkpoint(str(path))) == ['a']


def test_load_state_dict_from_mmengine_checkpoint(tmp_path):
    path = tmp_path / 'epoch_1.pth'
    saved = mmengine_checkpoint(path)
    state_dict = load_state_dict_from_checkpoint(str(path))
    assert list(state_dict) == list(saved['state_dict'])


def test_utils_do_not_import_codebases():
    code = ('import sys, mmsparse.utils, mmsparse.utils.launch; '
            'assert not {"mmdet", "mmseg"} & set(sys.modules), sorted(sys.modules)')
    subprocess.run([sys.executable, '-c', code], check=True)


def test_empty_checkpoint_file_is_named(tmp_path):
    path = tmp_path / 'empty.pth'
    path.write_bytes(b'')
    with pytest.raises(RuntimeError, match=f'checkpoint {path} is an empty file'):
        load_state_dict_from_checkpoint(str(path))


def test_truncated_legacy_checkpoint_is_named(tmp_path):
    path = tmp_path / 'truncated.pth'
    torch.save({'state_dict': {'w': torch.zeros(4)}}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(RuntimeError, match=f'checkpoint {path} ends early'):
        load_state_dict_from_checkpoint(str(path))


@pytest.mark.parametrize('key', ['state_dict', None])
def test_non_tensor_value_is_named_with_key_and_type(tmp_path, key):
    weights = {'stem.weight': torch.zeros(2), 'stem.scale': 3, 'head.bias': [1.0]}
    path = tmp_path / 'odd.pth'
    torch.save(weights if key is None else {key: weights}, path)
    with pytest.raises(TypeError, match=rf"checkpoint {path} .*2 are not: 'stem.scale' \(int\), "
                                        r"'head.bias' \(list\)"):
        load_state_dict_from_checkpoint(str(path))


def test_weights_entry_that_is_not_a_dict_is_named(tmp_path):
    path = tmp_path / 'odd.pth'
    torch.save({'model': [torch.zeros(1)]}, path)
    with pytest.raises(TypeError, match=f"checkpoint {path}: its 'model' entry is a list"):
        load_state_dict_from_checkpoint(str(path))
