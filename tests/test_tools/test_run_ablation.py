"""tools/analysis_tools/run_ablation.py: a 2-child grid on the synthetic ADE20K, a rerun, a resume."""
import csv
import math
import os
import os.path as osp
import subprocess
import sys
import time

import pytest
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from PIL import Image

from mmsparse.utils.complexity import model_complexity

from ..conftest import REPO_ROOT, load_tool
from ..utils import run_command, write_shrunk_config

run_ablation = load_tool('analysis_tools/run_ablation.py')
SCRIPT = osp.join(REPO_ROOT, 'tools', 'analysis_tools', 'run_ablation.py')
CHILD = 'configs/ablations/upernet_sparse-t-{}_8xb2-160k_ade20k-512x512.py'
ATTENTIONS = ('bra', 'dense')
# Three iterations with a checkpoint at the last (the options reach the training) and
# narrow heads, which keep the checkpoints small (the stock 512 channels write 0.5 GB).
OPTIONS = ['train_cfg.max_iters=3', 'default_hooks.checkpoint.interval=3', 'model.decode_head.channels=32',
           'model.auxiliary_head.channels=16']


def test_attention_name():
    assert run_ablation.attention_name(CHILD.format('dina')) == 'dina'
    assert run_ablation.task_name(CHILD.format('dina')) == 'upernet'
    with pytest.raises(ValueError, match="config='configs/biformer/upernet_ade20k.py' is not named"):
        run_ablation.attention_name('configs/biformer/upernet_ade20k.py')


def test_bad_arguments(capsys):
    for argv, message in (([CHILD.format('bra'), '--work-dir', 'w', '--gpus', '2'],
                           '--gpus=2 needs --launcher'),
                          (['missing_sparse-t-bra_x.py', '--work-dir', 'w'], 'is not a file'),
                          (['configs/biformer/upernet_ade20k.py', '--work-dir', 'w'], 'names no attention'),
                          ([CHILD.format('bra')] * 2 + ['--work-dir', 'w'], 'must be unique')):
        with pytest.raises(SystemExit):
            run_ablation.parse_args(argv)
        assert message in capsys.readouterr().err


def test_default_input_shape():
    seg = Config.fromfile(osp.join(REPO_ROOT, CHILD.format('bra')))
    det = Config.fromfile(osp.join(REPO_ROOT, 'configs/ablations/retinanet_sparse-t-bra_fpn_1x_coco.py'))
    assert run_ablation.default_input_shape(seg) == (512, 512)
    assert run_ablation.default_input_shape(det) == (800, 1344)  # (1333, 800) padded to 32


def test_distributed_commands():
    args = run_ablation.parse_args([CHILD.format('bra'), '--work-dir', 'w', '--launcher', 'pytorch',
                                    '--gpus', '8'])
    cmd = run_ablation._tool_cmd(args, 'test', 'cfg.py', 'ckpt.pth')
    assert cmd == ['bash', osp.join(REPO_ROOT, 'tools', 'dist_test.sh'), 'cfg.py', 'ckpt.pth', 8]


def read_rows(work_dir):
    with open(osp.join(work_dir, 'results.csv')) as f:
        return list(csv.DictReader(f))


def flops_at(config, shape):
    """FLOPs of the config's backbone at ``shape``, computed here, not by the runner."""
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    return model_complexity(MODELS.build(cfg.model.backbone), (3, *shape)).flops


@pytest.mark.slow
def test_grid_rerun_and_resume(tmp_path):
    data = tmp_path / 'data'
    run_command(sys.executable, 'tools/misc/generate_synthetic_data.py', '--out', data, '--datasets', 'ade',
                '--num-train', 4, '--num-val', 2, '--size', 64, 96)
    configs = [write_shrunk_config(CHILD.format(a), str(data), str(tmp_path / 'unused'),
                                   tmp_path / osp.basename(CHILD.format(a)), checkpoint_interval=1000)
               for a in ATTENTIONS]
    work_dir = tmp_path / 'grid'
    grid = [sys.executable, SCRIPT, *configs, '--work-dir', work_dir, '--cfg-options', *OPTIONS,
            '--warmup', 1, '--iters', 2]
    output = run_command(*grid)
    names = [run_ablation.config_name(c) for c in configs]
    for name in names:
        assert f'trained: {name}' in output, output[-2000:]
        assert osp.isfile(work_dir / name / 'iter_3.pth')

    rows = read_rows(work_dir)
    assert [r['attention'] for r in rows] == list(ATTENTIONS)
    assert list(rows[0]) == list(run_ablation.COLUMNS)
    shape = Config.fromfile(configs[0]).model.data_preprocessor.size  # the shrunk crop
    for row, config in zip(rows, configs):
        assert row['config'] == config and row['metric_name'] == 'mIoU'
        assert 0 <= float(row['metric']) <= 100
        assert int(row['flops']) == flops_at(config, shape)
        assert int(row['params']) > 10**6
        assert math.isfinite(float(row['latency_ms'])) and float(row['latency_ms']) > 0
        assert math.isfinite(float(row['peak_memory_mb'])) and float(row['peak_memory_mb']) >= 0
    with Image.open(work_dir / 'results.png') as image:
        image.load()
        assert image.size == (640, 480)

    # A rerun finds both markers: no training, no test, the same table.
    logs = {n: os.path.getsize(work_dir / n / 'train.log') for n in names}
    start = time.perf_counter()
    output = run_command(*grid)
    assert time.perf_counter() - start < 30
    assert all(f'skipped: {n}' in output for n in names), output[-2000:]
    assert {n: os.path.getsize(work_dir / n / 'train.log') for n in names} == logs
    assert read_rows(work_dir) == rows

    # Other options would mix two experiments in one table.
    other = [str(a) for a in grid]
    other[other.index(OPTIONS[0])] = 'train_cfg.max_iters=4'
    result = subprocess.run(other, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and 'was written with --cfg-options' in result.stderr, result.stderr[-2000:]
    assert 'max_iters=4' not in open(work_dir / names[0] / run_ablation.RESULT_FILE).read()

    # An interrupted child (checkpoint written, no markers) resumes from its checkpoint.
    for marker in (run_ablation.RESULT_FILE, run_ablation.TRAIN_DONE):
        os.remove(work_dir / names[1] / marker)
    output = run_command(*grid)
    assert f'skipped: {names[0]}' in output and f'resumed: {names[1]}' in output, output[-2000:]
    with open(work_dir / names[1] / 'train.log') as f:
        train_log = f.read()
    assert '--resume' in train_log and 'resumed from the latest checkpoint' in train_log
    assert read_rows(work_dir)[1]['flops'] == rows[1]['flops']
