"""Progress bars of the converters and the synthetic-data generator: on stderr, stdout unchanged."""
import re
import subprocess
import sys

import pytest
import torch

from ..conftest import REPO_ROOT, load_tool

# Keys every converter accepts: a backbone tensor and classifier ones (dropped by some).
STATE_DICT = {'stages.0.0.norm1.weight': torch.ones(4), 'stages.0.0.norm1.bias': torch.zeros(4),
              'head.weight': torch.zeros(3, 4), 'head.bias': torch.zeros(3)}
CONVERTERS = ('biformer2mmsparse.py', 'nat2mmsparse.py', 'hatnet2mmsparse.py', 'vit2mmsparse.py')


def bar_counts(text):
    """The ``done/total`` counts that mmengine's ProgressBar wrote."""
    return [tuple(map(int, m)) for m in re.findall(r'\] (\d+)/(\d+)', text)]


@pytest.mark.parametrize('converter', CONVERTERS)
def test_converter_progress_over_the_tensors(converter, tmp_path, capsys):
    src, dst = tmp_path / 'official.pth', tmp_path / 'out.pth'
    torch.save({'model': STATE_DICT}, src)
    tool = load_tool(f'model_converters/{converter}')
    tool.convert(str(src), str(dst), progress=False)
    quiet = capsys.readouterr()
    expected = torch.load(dst, weights_only=True)
    tool.convert(str(src), str(dst), progress=True)
    shown = capsys.readouterr()
    assert shown.out == quiet.out  # the converter's own report is unchanged
    assert quiet.err == ''
    counts = bar_counts(shown.err)
    assert counts[0] == (0, len(STATE_DICT)) and counts[-1] == (len(STATE_DICT), len(STATE_DICT))
    assert 'ETA' in shown.err
    converted = torch.load(dst, weights_only=True)
    assert converted.keys() == expected.keys()
    for key, value in expected['state_dict'].items():
        torch.testing.assert_close(converted['state_dict'][key], value, rtol=0, atol=0)


def test_converter_no_progress_flag(tmp_path, capsys):
    src, dst = tmp_path / 'official.pth', tmp_path / 'out.pth'
    torch.save(STATE_DICT, src)
    load_tool('model_converters/nat2mmsparse.py').convert(str(src), str(dst))
    shown = capsys.readouterr()
    run = subprocess.run([sys.executable, 'tools/model_converters/nat2mmsparse.py', str(src),
                          str(dst), '--no-progress'], cwd=REPO_ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout == shown.out
    assert bar_counts(shown.err)[-1] == (len(STATE_DICT), len(STATE_DICT))
    assert bar_counts(run.stderr) == []


def test_synthetic_data_progress_over_the_scenes(tmp_path, capsys):
    generator = load_tool('misc/generate_synthetic_data.py')
    outputs = []
    for progress in (False, True):
        generator.generate(str(tmp_path / str(progress)), datasets=('ade', ), num_train=3,
                           num_val=2, size=(64, 64), seed=0, progress=progress)
        outputs.append(capsys.readouterr())
    quiet, shown = outputs

    def without_paths_and_time(text):
        return re.sub(r'-> \S+|[\d.]+ s$', '', text, flags=re.M)

    assert without_paths_and_time(shown.out) == without_paths_and_time(quiet.out)
    assert quiet.err == ''
    assert bar_counts(shown.err)[-1] == (5, 5) and 'ETA' in shown.err
