"""tools/analysis_tools/confusion_matrix.py on the synthetic ADE20K data (reduce_zero_label=True).

The "predictions" are the validation annotation PNGs themselves (raw space, as
``tools/test.py --out`` writes a perfect prediction: class + 1) and a copy in which one
class is painted as another; no model is run.
"""
import csv
import os.path as osp
import shutil
import subprocess
import sys

import numpy as np
import pytest
from mmengine.config import Config
from PIL import Image

from mmsparse.datasets.synthetic import SYNTHETIC_SEG_CLASSES, use_synthetic_data

from ..conftest import REPO_ROOT

TOOL = osp.join('tools', 'analysis_tools', 'confusion_matrix.py')
N = len(SYNTHETIC_SEG_CLASSES)


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *map(str, args)], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def read_csv(path):
    with open(path, newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == list(SYNTHETIC_SEG_CLASSES)
    assert [row[0] for row in rows[1:]] == list(SYNTHETIC_SEG_CLASSES)
    return np.array([[int(v) for v in row[1:]] for row in rows[1:]], dtype=np.int64)


@pytest.fixture(scope='module')
def setup(synthetic_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp('confusion_matrix')
    cfg = use_synthetic_data(Config.fromfile(osp.join(REPO_ROOT, 'configs/biformer/upernet_ade20k.py')),
                             str(synthetic_data))
    config = tmp / 'cfg.py'
    cfg.dump(str(config))

    ann_dir = synthetic_data / 'ade' / 'ADEChallengeData2016' / 'annotations' / 'validation'
    anns = sorted(ann_dir.glob('*.png'))
    assert anns
    raws = {ann.name: np.array(Image.open(ann)) for ann in anns}
    # per-class pixel counts, independently of mmseg: raw 0 is the unlabelled frame, raw k is class k-1
    counts = np.zeros(N, dtype=np.int64)
    for raw in raws.values():
        values, num = np.unique(raw[raw > 0], return_counts=True)
        counts[values.astype(np.int64) - 1] += num
    assert counts.sum() > 0

    perfect = tmp / 'perfect'
    perfect.mkdir()
    for ann in anns:
        shutil.copy(ann, perfect / ann.name)

    # corrupt: the most frequent shape class (not background) is painted as another shape class
    src = 1 + int(np.argmax(counts[1:]))
    dst = src + 1 if src + 1 < N else 1
    corrupted = tmp / 'corrupted'
    corrupted.mkdir()
    for name, raw in raws.items():
        bad = raw.copy()
        bad[raw == src + 1] = dst + 1  # raw = class + 1
        Image.fromarray(bad).save(corrupted / name)

    missing = tmp / 'missing'
    shutil.copytree(perfect, missing)
    (missing / anns[-1].name).unlink()
    return dict(tmp=tmp, config=config, counts=counts, perfect=perfect, corrupted=corrupted, src=src,
                dst=dst, missing=missing, missing_name=anns[-1].name)


def test_perfect_predictions_give_diagonal(setup):
    tmp = setup['tmp']
    out, table = tmp / 'perfect.png', tmp / 'perfect.csv'
    proc = run_tool(setup['config'], setup['perfect'], '--out', out, '--csv', table)
    assert proc.returncode == 0, proc.stderr
    matrix = read_csv(table)
    np.testing.assert_array_equal(matrix, np.diag(setup['counts']))
    with Image.open(out) as img:
        width, height = img.size
    assert 0 < width < 3000 and 0 < height < 3000


def test_corrupted_class_moves_off_diagonal(setup):
    tmp = setup['tmp']
    src, dst, counts = setup['src'], setup['dst'], setup['counts']
    assert src != dst and counts[src] > 0
    out, table = tmp / 'corrupted.png', tmp / 'corrupted.csv'
    proc = run_tool(setup['config'], setup['corrupted'], '--out', out, '--csv', table, '--normalize')
    assert proc.returncode == 0, proc.stderr
    expected = np.diag(counts)
    expected[src, src] = 0
    expected[src, dst] = counts[src]
    np.testing.assert_array_equal(read_csv(table), expected)
    assert out.is_file()


def test_missing_prediction_names_file(setup):
    proc = run_tool(setup['config'], setup['missing'], '--out', setup['tmp'] / 'missing.png')
    assert proc.returncode != 0
    assert setup['missing_name'] in proc.stderr
    assert str(setup['missing']) in proc.stderr
    assert not (setup['tmp'] / 'missing.png').exists()
