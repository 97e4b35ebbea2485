"""Helpers of the end-to-end tests: shrunk configs on disk and the tools run as processes."""
import os.path as osp
import re
import subprocess
import sys

from mmengine.config import Config

from .conftest import REPO_ROOT
from .test_configs.test_configs_run import shrink_for_cpu


def run_command(*cmd, cwd=REPO_ROOT, env=None, timeout=900):
    """Run ``cmd``; fail the test with the end of its output unless it exits 0."""
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def logged_metric(output, key):
    """The last ``key: value`` that a test or validation run logged."""
    values = re.findall(rf'{re.escape(key)}: (-?[0-9.]+)', output)
    assert values, f'{key} not in the log: {output[-3000:]}'
    return float(values[-1])


def write_shrunk_config(config, data_root, work_dir, path, checkpoint_interval, **overrides):
    """Write ``config`` (relative to the repo) shrunk to a CPU run on the synthetic data.

    The file saves a checkpoint every ``checkpoint_interval`` iterations (mmseg) or
    epochs (mmdet), tests on the validation split, and merges ``overrides`` last.

    Returns:
        str: The path of the written config.
    """
    cfg = shrink_for_cpu(Config.fromfile(osp.join(REPO_ROOT, config)), data_root, work_dir)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=checkpoint_interval,
                                        by_epoch=cfg.default_scope == 'mmdet')
    cfg.test_dataloader = cfg.val_dataloader
    cfg.test_evaluator = cfg.val_evaluator
    # mmseg's inference_model reads the top-level test_pipeline, the inferencers the loader's.
    cfg.test_pipeline = cfg.test_dataloader.dataset.pipeline
    cfg.merge_from_dict(overrides)
    cfg.dump(str(path))
    return str(path)


FRESH_BUILD = """
import sys
from mmengine.registry import init_default_scope
{imports}
from {codebase}.registry import {registry}
init_default_scope('{codebase}')
assert '{package}' not in sys.modules or {with_imports}
{build}
"""


def build_in_fresh_interpreter(codebase, registry, package, build, with_imports):
    """Run ``build`` in a new interpreter under ``codebase``'s default scope.

    ``registry`` (e.g. ``'MODELS'``) is imported from ``<codebase>.registry``; with
    ``with_imports`` the mmsparse ``package`` is imported first, as ``custom_imports``
    would, else the run asserts that the registry's ``locations`` alone import it.

    Returns:
        list[str]: The lines ``build`` printed.
    """
    imports = ('from mmengine.utils import import_modules_from_strings\n'
               f"import_modules_from_strings(['{package}'])") if with_imports else ''
    code = FRESH_BUILD.format(imports=imports, codebase=codebase, registry=registry,
                              package=package, with_imports=with_imports, build=build)
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()
