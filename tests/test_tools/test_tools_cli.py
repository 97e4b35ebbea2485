"""Command lines of tools/train.py, tools/test.py and the launch scripts.

No training runs here: the config preparation is tested directly.
"""
import os
import os.path as osp
import stat
import subprocess
import sys

import pytest
import torch
from mmengine.runner.checkpoint import CheckpointLoader

from mmsparse.utils import launch

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOOLS = osp.join(REPO_ROOT, 'tools')

CONFIG = """
default_scope = 'mmengine'
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='SGD', lr=0.1))
env_cfg = dict(dist_cfg=dict(backend='nccl', timeout=1800))
find_unused_parameters = True
default_hooks = dict(visualization=dict(type='VisualizationHook', draw=False))
visualizer = dict(type='Visualizer')
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / 'toy_config.py'
    path.write_text(CONFIG)
    return str(path)


# the fixture below replaces it in the module; keep the real one for its own test
import_mmsparse_models = launch.import_mmsparse_models


@pytest.fixture(autouse=True)
def isolate(monkeypatch):
    """Keep LOCAL_RANK, torch.cuda.set_device and the checkpoint loaders as they were."""
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    monkeypatch.setattr(torch.cuda, 'set_device', torch.cuda.set_device)
    # registering mutates the scheme dict in place: let it mutate a copy
    monkeypatch.setattr(CheckpointLoader, '_schemes', CheckpointLoader._schemes.copy())
    # mmsparse.models is tested on its own; keep these tests independent of it
    monkeypatch.setattr(launch, 'import_mmsparse_models', lambda: True)


def cpu_env():
    """Environment of a child process that sees no CUDA device."""
    return dict(os.environ, CUDA_VISIBLE_DEVICES='')


@pytest.mark.parametrize('script,options', [
    ('train.py', ['--work-dir', '--amp', '--resume', '--cfg-options', '--launcher',
                  '--local_rank']),
    ('test.py', ['checkpoint', '--work-dir', '--out', '--show-dir', '--cfg-options',
                 '--launcher']),
])
def test_help(script, options):
    result = subprocess.run([sys.executable, osp.join(TOOLS, script), '--help'],
                            capture_output=True, text=True, check=True)
    for option in options:
        assert option in result.stdout


def test_amp_without_cuda_fails_early(config):
    result = subprocess.run([sys.executable, osp.join(TOOLS, 'train.py'), config, '--amp'],
                            capture_output=True, text=True, env=cpu_env())
    assert result.returncode == 2
    assert '--amp needs a CUDA GPU' in result.stderr


def test_amp_with_cuda(monkeypatch, config):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = launch.prepare_train_cfg(launch.parse_train_args([config, '--amp']))
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    assert 'model_wrapper_cfg' not in cfg  # launcher none: no distributed changes


def test_train_cfg_defaults(config):
    args = launch.parse_train_args([config, '--cfg-options', 'optim_wrapper.optimizer.lr=0.5'])
    assert os.environ['LOCAL_RANK'] == '0'
    cfg = launch.prepare_train_cfg(args)
    assert cfg.work_dir == osp.join('./work_dirs', 'toy_config')
    assert cfg.optim_wrapper.optimizer.lr == 0.5
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert cfg.launcher == 'none'
    assert 'resume' not in cfg


@pytest.mark.parametrize('argv,resume,load_from', [
    (['--resume'], True, None),
    (['--resume', 'work/epoch_3.pth'], True, 'work/epoch_3.pth'),
])
def test_train_cfg_resume(config, tmp_path, argv, resume, load_from):
    args = launch.parse_train_args([config, '--work-dir', str(tmp_path)] + argv)
    cfg = launch.prepare_train_cfg(args)
    assert cfg.work_dir == str(tmp_path)
    assert cfg.resume is resume
    assert cfg.load_from == load_from


def test_install_checkpoint_loader(config):
    launch.prepare_train_cfg(launch.parse_train_args([config]))
    loader = CheckpointLoader._get_checkpoint_loader('epoch_1.pth')
    assert loader.__name__ == 'load_from_local_safe'


@pytest.mark.parametrize('has_env_cfg,dist_cfg', [(True, dict(backend='gloo', timeout=1800)),
                                                   (False, dict(backend='gloo'))])
def test_cpu_distributed(monkeypatch, config, has_env_cfg, dist_cfg):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    if not has_env_cfg:
        with open(config, 'a') as f:
            f.write('del env_cfg\n')
    cfg = launch.prepare_train_cfg(launch.parse_train_args([config, '--launcher', 'pytorch']))
    assert cfg.env_cfg.dist_cfg == dist_cfg
    assert cfg.model_wrapper_cfg == dict(
        type='MMDistributedDataParallel', device_ids=None, find_unused_parameters=True)
    torch.cuda.set_device(3)  # no-op instead of an error on CPU builds


def test_gpu_distributed_untouched(monkeypatch, config):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = launch.prepare_train_cfg(launch.parse_train_args([config, '--launcher', 'pytorch']))
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    assert 'model_wrapper_cfg' not in cfg


def test_local_rank_from_launcher(monkeypatch, config):
    monkeypatch.setenv('LOCAL_RANK', '1')
    launch.parse_train_args([config, '--local-rank', '0'])
    assert os.environ['LOCAL_RANK'] == '1'


def test_test_cfg(config, tmp_path):
    args = launch.parse_test_args(
        [config, 'ckpt.pth', '--show-dir', str(tmp_path), '--out', 'results.pkl'])
    cfg = launch.prepare_test_cfg(args)
    assert cfg.load_from == 'ckpt.pth'
    assert cfg.default_hooks.visualization.draw is True
    assert cfg.visualizer.save_dir == str(tmp_path)


def test_test_out_must_be_pickle_outside_mmseg(config):
    args = launch.parse_test_args([config, 'ckpt.pth', '--out', 'results.json'])
    with pytest.raises(SystemExit, match=r'--out must be a \.pkl or \.pickle file for a mmengine '
                       r'config \(only mmseg configs take a directory\), got results\.json'):
        launch.prepare_test_cfg(args)


def test_test_out_is_a_directory_for_mmseg(tmp_path):
    path = tmp_path / 'seg_config.py'
    path.write_text(CONFIG.replace("'mmengine'", "'mmseg'")
                    + "test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])\n")
    cfg = launch.prepare_test_cfg(launch.parse_test_args([str(path), 'ckpt.pth', '--out', 'preds']))
    assert cfg.test_evaluator == dict(type='IoUMetric', iou_metrics=['mIoU'], output_dir='preds',
                                      keep_results=True)


def test_missing_pkg_resources_is_one_line(monkeypatch, config):
    def no_pkg_resources(path):
        raise ModuleNotFoundError("No module named 'pkg_resources'", name='pkg_resources')

    monkeypatch.setattr(launch.Config, 'fromfile', no_pkg_resources)
    with pytest.raises(SystemExit, match=r'pip install "setuptools<82"'):
        launch.prepare_train_cfg(launch.parse_train_args([config]))


def test_sync_bn_becomes_bn_for_cpu_distributed(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    path = tmp_path / 'syncbn_config.py'
    path.write_text(CONFIG + "norm_cfg = dict(type='SyncBN', requires_grad=True)\n"
                    "model = dict(backbone=dict(norm_cfg=norm_cfg), heads=[dict(norm_cfg=norm_cfg), "
                    "dict(norm_cfg=dict(type='GN', num_groups=8))])\n")
    args = launch.parse_train_args([str(path), '--launcher', 'pytorch'])
    cfg = launch.prepare_train_cfg(args)
    assert cfg.model.backbone.norm_cfg.type == 'BN'
    assert [head.norm_cfg.type for head in cfg.model.heads] == ['BN', 'GN']
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg = launch.prepare_train_cfg(args)
    assert cfg.model.backbone.norm_cfg.type == 'SyncBN'


def test_build_runner_dispatch(monkeypatch):
    monkeypatch.setattr(launch.RUNNERS, 'build', lambda cfg: 'registry')
    monkeypatch.setattr(launch.Runner, 'from_cfg', lambda cfg: 'mmengine')
    assert launch.build_runner(dict(runner_type='CustomRunner')) == 'registry'
    assert launch.build_runner(dict()) == 'mmengine'


def test_import_mmsparse_models(monkeypatch):
    def missing(name):
        raise ModuleNotFoundError(f'No module named {name!r}', name=name)

    monkeypatch.setattr(launch.importlib, 'import_module', missing)
    assert import_mmsparse_models() is False

    def broken(name):
        raise ModuleNotFoundError("No module named 'triton'", name='triton')

    monkeypatch.setattr(launch.importlib, 'import_module', broken)
    with pytest.raises(ModuleNotFoundError, match='triton'):
        import_mmsparse_models()


def test_shell_scripts_executable():
    for script in ('dist_train.sh', 'dist_test.sh', 'slurm_train.sh'):
        assert os.stat(osp.join(TOOLS, script)).st_mode & stat.S_IXUSR


@pytest.mark.parametrize('extra,expected', [
    (['work/x', '--amp'], ['--work-dir', 'work/x', '--launcher', 'slurm', '--amp']),
    (['--amp'], ['--launcher', 'slurm', '--amp']),
])
def test_slurm_train_arguments(tmp_path, extra, expected):
    # a fake srun that prints the command it would run
    srun = tmp_path / 'srun'
    srun.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    srun.chmod(0o755)
    env = dict(os.environ, PATH=f'{tmp_path}{os.pathsep}{os.environ["PATH"]}')
    result = subprocess.run(['bash', osp.join(TOOLS, 'slurm_train.sh'), 'part', 'job', 'cfg.py']
                            + extra, capture_output=True, text=True, env=env, check=True)
    words = result.stdout.split('\n')
    assert words[words.index('-p') + 1] == 'part'
    assert '--job-name=job' in words
    command = words[words.index('-u') + 1:-1]
    assert command == [osp.join(TOOLS, 'train.py'), 'cfg.py'] + expected
