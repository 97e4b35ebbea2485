"""tools/install.py refuses unsupported Python and torch with a clear message."""
import pytest

from ..conftest import load_tool

install = load_tool('install.py')


@pytest.mark.parametrize('version', [(3, 9, 18), (3, 13, 0)])
def test_unsupported_python_is_refused(version, monkeypatch, capsys):
    monkeypatch.setattr(install.sys, 'version_info', version)
    with pytest.raises(SystemExit) as exc:
        install.check_python()
    assert exc.value.code == 1
    assert '3.10 to 3.12' in capsys.readouterr().err


def test_supported_python_passes(monkeypatch):
    monkeypatch.setattr(install.sys, 'version_info', (3, 11, 7))
    install.check_python()


def test_old_torch_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(install, 'probe', lambda code: '2.0.1+cu117')
    with pytest.raises(SystemExit):
        install.ensure_torch()
    err = capsys.readouterr().err
    assert 'torch 2.0.1+cu117' in err and '>= 2.1' in err


def test_installed_torch_is_kept(monkeypatch):
    monkeypatch.setattr(install, 'probe', lambda code: '2.13.0+cu128')
    monkeypatch.setattr(install, 'pip', lambda *a, **k: pytest.fail('torch must not be reinstalled'))
    assert install.ensure_torch() == '2.13.0+cu128'


@pytest.mark.parametrize('text,expected', [('2.13.0+cpu', (2, 13, 0)), ('2.6.0a0', (2, 6, 0)), ('2.1', (2, 1))])
def test_parse_version(text, expected):
    assert install.parse_version(text) == expected


def test_prebuilt_mmcv_wheel_matches_this_python(tmp_path, monkeypatch):
    monkeypatch.setattr(install.sys, 'version_info', (3, 11, 7))
    (tmp_path / 'mmcv-2.1.0-cp310-cp310-linux_x86_64.whl').touch()
    assert install.find_prebuilt_mmcv(str(tmp_path)) is None
    (tmp_path / 'mmcv-2.1.0-cp311-cp311-linux_x86_64.whl').touch()
    assert install.find_prebuilt_mmcv(str(tmp_path)).endswith('cp311-cp311-linux_x86_64.whl')
