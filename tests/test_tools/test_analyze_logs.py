"""tools/analysis_tools/analyze_logs.py on the scalars.json of real (shrunk) mmseg and mmdet runs."""
import glob
import json
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ..conftest import REPO_ROOT, load_tool
from ..utils import run_command, write_shrunk_config

analyze = load_tool('analysis_tools/analyze_logs.py')
SCRIPT = osp.join('tools', 'analysis_tools', 'analyze_logs.py')
# The cheapest backbone of each codebase; every iteration is logged and validated
# (mmseg: every 2 of 4 iterations; mmdet: after its one epoch of 2 iterations).
RUNS = {
    'seg': ('configs/hat_net/fpn_hat-net-t_8xb2-80k_ade20k-512x512.py',
            dict(train_cfg=dict(max_iters=4, val_interval=2))),
    'det': ('configs/hat_net/retinanet_hat-net-t_fpn_1x_coco.py',
            dict(train_cfg=dict(val_interval=1))),
}


@pytest.fixture(scope='module')
def logs(synthetic_data, tmp_path_factory):
    """``{'seg': path, 'det': path}`` of the scalars.json of one training run each."""
    root = tmp_path_factory.mktemp('analyze_logs')
    paths = {}
    for name, (config, overrides) in RUNS.items():
        work_dir = root / f'work_{name}'
        cfg = write_shrunk_config(config, str(synthetic_data), str(work_dir), root / f'{name}.py',
                                  1000, default_hooks=dict(logger=dict(interval=1)), **overrides)
        run_command(sys.executable, 'tools/train.py', cfg)
        (paths[name], ) = glob.glob(str(work_dir / '*' / 'vis_data' / 'scalars.json'))
    return paths


def read_json_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def run_analyze(*args):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True)


@pytest.mark.slow
def test_plot_curve_writes_one_panel_per_key(logs, tmp_path):
    out = tmp_path / 'sub' / 'curve.png'
    result = run_analyze('plot_curve', logs['seg'], logs['det'], '--keys', 'loss', 'lr', 'time',
                         '--legend', 'seg', 'det', '--title', 'two runs', '--out', out)
    assert result.returncode == 0, result.stderr[-2000:]
    image = np.asarray(Image.open(out).convert('RGB'))
    # figsize (6, 2.6 per key) at 80 dpi: three stacked panels
    assert image.shape == (round(3 * 2.6 * 80), 6 * 80, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 20  # lines and text, not blank
    assert f'saved the curves of loss, lr, time to {out}' in result.stdout


@pytest.mark.slow
def test_series_follow_the_log(logs):
    seg, det = read_json_lines(logs['seg']), read_json_lines(logs['det'])
    # mmseg validates at iterations: mIoU at steps 2 and 4, as logged
    steps, values, x_label = analyze.key_series(seg, 'mIoU', logs['seg'])
    assert x_label == 'iter' and steps.tolist() == [2, 4]
    assert values.tolist() == [r['mIoU'] for r in seg if 'mIoU' in r]
    # mmdet validates at epochs; its losses are per iteration
    steps, values, x_label = analyze.key_series(det, 'coco/bbox_mAP', logs['det'])
    assert x_label == 'epoch' and steps.tolist() == [1]
    steps, values, x_label = analyze.key_series(det, 'loss', logs['det'])
    assert x_label == 'iter' and steps.tolist() == [1, 2]
    # validation lines have a 'time' too; a training key is read from training lines only
    steps, values, _ = analyze.key_series(seg, 'time', logs['seg'])
    assert steps.tolist() == [1, 2, 3, 4]
    assert values.tolist() == [r['time'] for r in seg if 'iter' in r]


def expected_times(path, include_outliers):
    timed = [(r['iter'], r['time']) for r in read_json_lines(path) if 'iter' in r]
    timed = timed if include_outliers else timed[1:]
    times = np.array([t for _, t in timed])
    return dict(average=times.mean(), std=times.std(),
                slowest=(timed[int(times.argmax())][0], times.max()),
                fastest=(timed[int(times.argmin())][0], times.min()))


@pytest.mark.slow
@pytest.mark.parametrize('include_outliers', [False, True])
def test_cal_train_time_matches_the_json(logs, include_outliers):
    args = ['cal_train_time', logs['seg'], logs['det']] + ['--include-outliers'] * include_outliers
    result = run_analyze(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    blocks = result.stdout.split('-----Analyze train time of ')[1:]
    assert len(blocks) == 2
    for path, block in zip((logs['seg'], logs['det']), blocks):
        assert block.startswith(path)
        expected = expected_times(path, include_outliers)
        printed = {kind: (int(it), float(t)) for kind, it, t in
                   re.findall(r'(slowest|fastest) iter (\d+), time ([\d.]+) s', block)}
        for kind in ('slowest', 'fastest'):
            assert printed[kind][0] == expected[kind][0]
            assert printed[kind][1] == pytest.approx(expected[kind][1], abs=5e-5)
        average = float(re.search(r'average iter time: ([\d.]+) s/iter', block).group(1))
        std = float(re.search(r'time std over \d+ logged iters is ([\d.]+) s', block).group(1))
        assert average == pytest.approx(expected['average'], abs=5e-5)
        assert std == pytest.approx(expected['std'], abs=5e-5)


@pytest.fixture
def small_log(tmp_path):
    """A two-line scalars.json in MMEngine's format (one training and one validation line)."""
    path = tmp_path / 'scalars.json'
    path.write_text('{"lr": 0.1, "loss": 1.5, "time": 0.5, "iter": 1, "step": 1}\n'
                    '{"mIoU": 3.0, "aAcc": 20.0, "time": 0.1, "step": 1}\n')
    return path


def test_missing_key_lists_the_log_keys(small_log, tmp_path):
    result = run_analyze('plot_curve', small_log, '--keys', 'loss', 'bbox_mAP',
                         '--out', tmp_path / 'c.png')
    assert result.returncode == 2
    assert (f"key 'bbox_mAP' is not in {small_log}; it has: aAcc, loss, lr, mIoU, time"
            in result.stderr)
    assert not (tmp_path / 'c.png').exists()


@pytest.mark.parametrize('task', ['plot_curve', 'cal_train_time'])
def test_missing_file(task, tmp_path):
    missing = tmp_path / 'nope' / 'scalars.json'
    extra = ['--out', tmp_path / 'c.png'] if task == 'plot_curve' else []
    result = run_analyze(task, missing, *extra)
    assert result.returncode == 2
    assert f"json_log='{missing}' does not exist" in result.stderr


def test_legend_must_match_the_logs(small_log, tmp_path):
    with pytest.raises(ValueError, match=r'legend has 2 entries .* but there are 1 logs'):
        analyze.plot_curve([str(small_log)], ['loss'], str(tmp_path / 'c.png'), legend=['a', 'b'])


def test_not_a_scalars_json(tmp_path):
    path = tmp_path / 'scalars.json'
    path.write_text('{"loss": 1.0}\n')
    with pytest.raises(ValueError, match=r'scalars.json:1 has no "step"'):
        analyze.load_scalars(str(path))


def test_a_single_timed_iteration_needs_include_outliers(small_log):
    records = analyze.load_scalars(str(small_log))
    with pytest.raises(ValueError, match='no timed training iteration after the first'):
        analyze.train_time_stats(records)
    stats = analyze.train_time_stats(records, include_outliers=True)
    assert stats == dict(average=0.5, std=0.0, slowest=(1, 0.5), fastest=(1, 0.5), num_iters=1)
