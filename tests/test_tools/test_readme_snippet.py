"""The README's "in your own mmdet / mmseg project" config, copied out of the repository.

The snippet must train with the backbone family's recipe (its AdamW, learning rate and
weight decay), not the SGD 0.02 it would otherwise inherit, and run with the stock mmdet
``train.py`` from a folder that is not this repository.
"""
import json
import os
import os.path as osp
import re
import sys

import mmdet
import pytest
from mmengine.config import Config

from ..conftest import REPO_ROOT
from ..utils import run_command, write_shrunk_config

FAMILY_CONFIG = 'configs/biformer/mask-rcnn_biformer-s_fpn_1x_coco.py'
SECTION = '### In your own mmdet / mmseg project'


def readme_snippet():
    """The first ```python block after :data:`SECTION` in README.md."""
    with open(osp.join(REPO_ROOT, 'README.md')) as f:
        readme = f.read()
    assert SECTION in readme
    match = re.search(r'```python\n(.*?)```', readme[readme.index(SECTION):], re.S)
    assert match, f'no python block under {SECTION!r}'
    return match.group(1)


@pytest.fixture
def project(tmp_path):
    """A user's project folder outside the repository, holding the snippet as a config."""
    folder = tmp_path / 'my_project' / 'configs'
    folder.mkdir(parents=True)
    (folder / 'mask-rcnn_biformer-s_fpn_1x_coco.py').write_text(readme_snippet())
    return folder.parent


def test_snippet_uses_the_family_recipe(project):
    snippet = Config.fromfile(str(project / 'configs' / 'mask-rcnn_biformer-s_fpn_1x_coco.py'))
    family = Config.fromfile(osp.join(REPO_ROOT, FAMILY_CONFIG))
    assert snippet.optim_wrapper.to_dict() == family.optim_wrapper.to_dict()
    assert snippet.optim_wrapper.optimizer.type == 'AdamW'
    for key in ('type', 'arch', 'n_win', 'topks', 'auto_pad', 'norm_eval', 'drop_path_rate'):
        assert snippet.model.backbone[key] == family.model.backbone[key], key
    assert snippet.model.neck.to_dict() == family.model.neck.to_dict()


@pytest.mark.slow
def test_snippet_trains_with_stock_mmdet_train(project, synthetic_data):
    work_dir = project / 'work_dirs' / 'snippet'
    config = write_shrunk_config(
        str(project / 'configs' / 'mask-rcnn_biformer-s_fpn_1x_coco.py'), str(synthetic_data),
        str(work_dir), project / 'configs' / 'snippet_cpu.py', checkpoint_interval=1,
        train_dataloader=dict(dataset=dict(indices=2)))
    # The installed mmsparse, not this checkout's sources on PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    stock_train = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    run_command(sys.executable, stock_train, config, cwd=project, env=env)
    (scalars, ) = work_dir.glob('*/vis_data/scalars.json')
    records = [json.loads(line) for line in scalars.read_text().splitlines()]
    train = [r for r in records if 'loss' in r]
    assert [r['iter'] for r in train] == [1]
    # AdamW at 1e-4 under the stock 1x warmup (LinearLR from 0.001): 1e-7 at the first step
    assert train[0]['lr'] == pytest.approx(1e-4 * 0.001)
    (dumped, ) = work_dir.glob('*/vis_data/config.py')
    assert Config.fromfile(str(dumped)).optim_wrapper.optimizer.type == 'AdamW'
