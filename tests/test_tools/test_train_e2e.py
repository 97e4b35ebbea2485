"""End-to-end runs of the documented commands on the synthetic ADE20K (CPU).

These are the slowest tests of the suite (marked ``slow``); CI runs them.
"""
import glob
import json
import os.path as osp
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from mmsparse.datasets import SYNTHETIC_SEG_CLASSES
from mmsparse.utils import safe_load

from ..conftest import REPO_ROOT, load_tool
from ..utils import run_command, write_shrunk_config

ENTRY_CONFIG = 'configs/biformer/upernet_ade20k.py'
# The README's quick start: the entry config on the synthetic data, shrunk for a CPU.
QUICK_START_CONFIG = 'configs/biformer/upernet_biformer-t_1xb4-200it_synthetic-ade20k-96x96.py'
# Only to keep the test process count down; the README command uses the config's workers.
CPU_OPTIONS = [f'{split}_dataloader.{key}' for split in ('train', 'val', 'test')
               for key in ('num_workers=0', 'persistent_workers=False')]


def schedule_options(max_iters, interval, warmup=20):
    return [f'train_cfg.max_iters={max_iters}', f'train_cfg.val_interval={interval}',
            f'default_hooks.checkpoint.interval={interval}', 'default_hooks.logger.interval=5',
            f'param_scheduler.0.end={warmup}', f'param_scheduler.1.begin={warmup}',
            f'param_scheduler.1.end={max_iters}']


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('e2e_data')
    load_tool('misc/generate_synthetic_data.py').generate(str(root), datasets=('ade', ), seed=1)
    return osp.join(root, 'ade', 'ADEChallengeData2016')


def data_options(ade_root):
    return [f'{split}_dataloader.dataset.data_root={ade_root}' for split in ('train', 'val', 'test')]


def run_tool(script, *args, timeout=1800):
    return subprocess.run([sys.executable, f'tools/{script}', *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def read_scalars(work_dir):
    """The records of mmengine's ``vis_data/scalars.json`` of every run in ``work_dir``."""
    records = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            records += [json.loads(line) for line in f]
    return records


def majority_class_miou(ade_root):
    """mIoU (%) of always predicting the most frequent class, over the classes in the val GT."""
    counts = np.zeros(256, dtype=np.int64)
    for path in glob.glob(osp.join(ade_root, 'annotations', 'validation', '*.png')):
        counts += np.bincount(np.asarray(Image.open(path)).ravel(), minlength=256)
    counts = counts[1:]  # reduce_zero_label: 0 is ignored
    present = counts > 0
    return 100 * counts.max() / counts.sum() / present.sum()


@pytest.mark.slow
def test_short_training_learns(ade_root, tmp_path):
    work_dir = str(tmp_path / 'work')
    result = run_tool('train.py', QUICK_START_CONFIG, '--work-dir', work_dir, '--cfg-options',
                      *CPU_OPTIONS, 'default_hooks.logger.interval=5', *data_options(ade_root))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = read_scalars(work_dir)
    losses = [r['loss'] for r in records if 'loss' in r]
    assert len(losses) >= 10
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:2]), losses
    miou = [r['mIoU'] for r in records if 'mIoU' in r][-1]
    # The per-class table names the 7 synthetic classes, none of them NaN.
    table = result.stdout + result.stderr
    for name in SYNTHETIC_SEG_CLASSES:
        assert re.search(rf'\|\s+{name}\s+\|\s+[0-9.]+\s+\|', table), name
    assert 'nan' not in table.split('per class results:')[-1].split('Iter(val)')[0]
    chance = majority_class_miou(ade_root)
    assert miou > max(3 * chance, 50.), (miou, chance)


@pytest.mark.slow
def test_interrupted_training_resumes_and_tests(ade_root, tmp_path):
    work_dir = str(tmp_path / 'work')
    args = [sys.executable, 'tools/train.py', QUICK_START_CONFIG, '--work-dir', work_dir, '--cfg-options',
            *CPU_OPTIONS, *schedule_options(60, 2, warmup=2), *data_options(ade_root)]
    # Interrupt the first run once its first checkpoint is complete.
    proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 1200
    while not osp.exists(osp.join(work_dir, 'last_checkpoint')):
        assert proc.poll() is None, 'training ended before writing a checkpoint'
        assert time.time() < deadline, 'no checkpoint within 20 minutes'
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        interrupted_at = int(osp.basename(f.read().strip())[len('iter_'):-len('.pth')])
    assert interrupted_at < 60

    # Resume to a short end: the schedule continues from the checkpoint's iteration.
    result = run_tool('train.py', QUICK_START_CONFIG, '--work-dir', work_dir, '--resume', '--cfg-options',
                      *CPU_OPTIONS, *schedule_options(interrupted_at + 4, 2, warmup=2),
                      *data_options(ade_root))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert f'resumed epoch: 0, iter: {interrupted_at}' in log, log[-3000:]
    final = osp.join(work_dir, f'iter_{interrupted_at + 4}.pth')
    assert osp.exists(final)

    result = run_tool('test.py', QUICK_START_CONFIG, final, '--work-dir', str(tmp_path / 'test'),
                      '--cfg-options', *CPU_OPTIONS, *data_options(ade_root))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert 'mIoU' in result.stdout + result.stderr


@pytest.mark.slow
def test_resume_is_exact_with_dropout_and_drop_path(synthetic_data, tmp_path):
    """4 iterations straight == 2 iterations + ``--resume`` to 4: same losses, same weights.

    Drop path (0.3, the entry config's) and the heads' dropout (0.1) are on, and the
    pipeline's random resize, crop, flip and photometric distortion draw numbers too.
    """
    def train(work_dir, max_iters, *extra):
        config = write_shrunk_config(
            ENTRY_CONFIG, str(synthetic_data), str(work_dir), tmp_path / f'{work_dir.name}.py',
            checkpoint_interval=2, model=dict(backbone=dict(arch='tiny')),
            randomness=dict(seed=0), train_cfg=dict(max_iters=max_iters),
            default_hooks=dict(logger=dict(interval=1)))
        run_command(sys.executable, 'tools/train.py', config, *extra)
        return {r['iter']: r['loss'] for r in read_scalars(str(work_dir)) if 'loss' in r}

    straight = train(tmp_path / 'straight', 4)
    first = train(tmp_path / 'resumed', 2)
    resumed = train(tmp_path / 'resumed', 4, '--resume')
    assert sorted(straight) == [1, 2, 3, 4]
    assert {i: first[i] for i in (1, 2)} == {i: straight[i] for i in (1, 2)}
    assert {i: resumed[i] for i in (3, 4)} == {i: straight[i] for i in (3, 4)}
    checkpoint = safe_load(str(tmp_path / 'resumed' / 'iter_2.pth'))
    assert len(checkpoint['rng_state']['ranks']) == 1 and checkpoint['rng_state']['batches'] == 2
    final_straight = safe_load(str(tmp_path / 'straight' / 'iter_4.pth'))['state_dict']
    final_resumed = safe_load(str(tmp_path / 'resumed' / 'iter_4.pth'))['state_dict']
    assert final_straight.keys() == final_resumed.keys()
    for name, value in final_straight.items():
        assert torch.equal(value, final_resumed[name]), name
