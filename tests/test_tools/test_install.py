"""tools/install.py: unsupported Python and torch refused, setuptools<82 kept, the result verified."""
import os.path as osp
import runpy
import subprocess
import sys

import pytest
import setuptools

from ..conftest import REPO_ROOT, load_tool

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


def test_every_pip_call_keeps_setuptools_below_82(monkeypatch, tmp_path):
    monkeypatch.setattr(install, 'CONSTRAINT_FILE', str(tmp_path / 'constraints.txt'))
    calls = []
    monkeypatch.setattr(install.subprocess, 'check_call', lambda cmd, env=None: calls.append(cmd))
    install.write_constraints('torch==2.13.0+cpu')
    install.pip('torch==2.13.0')
    assert calls[0][calls[0].index('-c') + 1] == install.CONSTRAINT_FILE
    assert (tmp_path / 'constraints.txt').read_text().split() == ['setuptools<82', 'torch==2.13.0+cpu']


def test_pip_install_routes_keep_setuptools_below_82():
    # setup.py's install_requires and requirements/runtime.txt (pip install -e . / pip install .)
    with open(osp.join(REPO_ROOT, 'requirements', 'runtime.txt')) as f:
        assert 'setuptools<82' in f.read().split()
    with open(osp.join(REPO_ROOT, 'setup.py')) as f:
        assert "read_requirements('requirements/runtime.txt')" in f.read()


def test_verify_stack_names_each_broken_check(monkeypatch, capsys):
    def fake_run(code):
        broken = 'pkg_resources' in code or 'mmdet::' in code
        stderr = "Traceback ...\nModuleNotFoundError: No module named 'pkg_resources'\n" if broken else ''
        return subprocess.CompletedProcess([], 1 if broken else 0, '', stderr)

    monkeypatch.setattr(install, 'run_python', fake_run)
    with pytest.raises(SystemExit) as exc:
        install.verify_stack()
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "pkg_resources (setuptools<82): ModuleNotFoundError: No module named 'pkg_resources'" in err
    assert 'an mmdet:: base config: ModuleNotFoundError' in err
    assert 'mmcv compiled ops' not in err


@pytest.mark.slow  # a fresh interpreter per check; onnxscript alone imports for ~10 s
def test_verify_stack_passes_on_this_install(capsys):
    install.verify_stack()
    out = capsys.readouterr().out
    for what in ('an mmseg:: base config', 'psutil (the stock benchmark tools)', 'the onnx extra',
                 'mim search mmsparse'):
        assert f'verified: {what}' in out


def requirements_installed():
    """The requirement names of the files tools/install.py installs."""
    names = set()
    for name in install.REQUIREMENTS:
        with open(osp.join(REPO_ROOT, 'requirements', name)) as f:
            names |= {line.split('<')[0].split('=')[0].strip() for line in f
                      if line.strip() and not line.startswith('#')}
    return names


def test_installer_installs_psutil_and_the_onnx_extra():
    # psutil: the stock mmdet .mim/tools/analysis_tools/benchmark.py imports it;
    # onnx, onnxscript, onnxruntime: the ONNX export tool and its tests.
    assert {'psutil', 'onnx', 'onnxscript', 'onnxruntime'} <= requirements_installed()
    args = install.requirement_args()
    assert args[::2] == ['-r'] * len(install.REQUIREMENTS)
    assert [osp.basename(path) for path in args[1::2]] == ['runtime.txt', 'tests.txt', 'onnx.txt']
    whats = [what for what, _ in install.FINAL_CHECKS]
    assert 'psutil (the stock benchmark tools)' in whats and 'mim search mmsparse' in whats


def test_setup_declares_the_onnx_extra(monkeypatch):
    captured = {}
    monkeypatch.setattr(setuptools, 'setup', lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, 'argv', ['setup.py'])  # no command: .mim is left alone
    runpy.run_path(osp.join(REPO_ROOT, 'setup.py'), run_name='__main__')
    assert captured['extras_require']['onnx'] == ['onnx', 'onnxscript', 'onnxruntime']
    assert 'psutil' in captured['install_requires']
    assert '.mim/model-index.yml' in captured['package_data']['mmsparse']


def test_probes_run_outside_the_checkout():
    cwd = install.run_python('import os; print(os.getcwd())').stdout.strip()
    assert not osp.realpath(cwd).startswith(osp.realpath(REPO_ROOT))


def test_link_package_for_mim(monkeypatch, tmp_path):
    site = tmp_path / 'site-packages'
    site.mkdir()
    target = site / 'mmsparse'
    monkeypatch.setattr(install, 'probe', lambda code: str(target))
    package = osp.join(REPO_ROOT, 'mmsparse')
    install.link_package_for_mim()
    assert target.is_symlink() and osp.realpath(target) == osp.realpath(package)
    install.link_package_for_mim()  # idempotent
    assert osp.realpath(target) == osp.realpath(package)
    # a link to another checkout is replaced
    target.unlink()
    other = tmp_path / 'other' / 'mmsparse'
    other.mkdir(parents=True)
    target.symlink_to(other)
    install.link_package_for_mim()
    assert osp.realpath(target) == osp.realpath(package)
    # a real package folder (a normal install) is kept
    target.unlink()
    target.mkdir()
    install.link_package_for_mim()
    assert target.is_dir() and not target.is_symlink()


def test_link_package_for_mim_without_mim_fails(monkeypatch, capsys):
    monkeypatch.setattr(install, 'probe', lambda code: None)
    with pytest.raises(SystemExit):
        install.link_package_for_mim()
    assert 'mim cannot find the installed mmsparse distribution' in capsys.readouterr().err
