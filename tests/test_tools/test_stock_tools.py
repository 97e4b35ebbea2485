"""The stock OpenMMLab tools and APIs read the checkpoints that an mmsparse run writes.

A 2-iteration run of the shrunk entry config (UperNet, BiFormer-T for speed) and a
1-epoch (2-iteration) run of a shrunk mmdet config (BiFormer-T RetinaNet) write MMEngine
checkpoints (``message_hub`` with ``HistoryBuffer`` and numpy objects). Then the
scripts shipped inside the installed packages (``<pkg>/.mim/tools/train.py``,
``test.py``), ``mim test`` and the Python APIs use them, with nothing of mmsparse but
the config's ``custom_imports``. These are the slow end-to-end tests of the suite.
"""
import os
import os.path as osp
import subprocess
import sys

import mmdet
import mmseg
import numpy as np
import pytest
import torch

from mmsparse.utils import safe_load

from ..conftest import REPO_ROOT
from ..utils import logged_metric, run_command, write_shrunk_config

SEG_CONFIG = 'configs/biformer/upernet_ade20k.py'
DET_CONFIG = 'configs/biformer/retinanet_biformer-t_fpn_1x_coco.py'
pytestmark = pytest.mark.slow


def stock_tool(package, script):
    """Path of a script shipped inside an installed OpenMMLab package."""
    return osp.join(osp.dirname(package.__file__), '.mim', 'tools', script)


def assert_weights_match(model, checkpoint):
    state_dict = safe_load(checkpoint)['state_dict']
    model_state = model.state_dict()
    assert set(state_dict) == set(model_state)
    for name, value in state_dict.items():
        assert torch.equal(model_state[name].cpu(), value), name


@pytest.fixture(scope='module')
def seg_run(synthetic_data, tmp_path_factory):
    """A shrunk mmseg config and the checkpoint of its 2-iteration mmsparse run."""
    root = tmp_path_factory.mktemp('stock_seg')
    work_dir = root / 'work'
    config = write_shrunk_config(SEG_CONFIG, str(synthetic_data), str(work_dir),
                                 root / 'upernet_shrunk.py', checkpoint_interval=2,
                                 model=dict(backbone=dict(arch='tiny')))
    run_command(sys.executable, 'tools/train.py', config, cwd=REPO_ROOT)
    checkpoint = work_dir / 'iter_2.pth'
    assert checkpoint.exists()
    image = sorted((synthetic_data / 'ade' / 'ADEChallengeData2016' / 'images' /
                    'validation').glob('*.jpg'))[0]
    return dict(config=config, checkpoint=str(checkpoint), work_dir=str(work_dir), root=root,
                image=str(image))


@pytest.fixture(scope='module')
def det_run(synthetic_data, tmp_path_factory):
    """A shrunk mmdet config and the checkpoint of its 1-epoch mmsparse run."""
    root = tmp_path_factory.mktemp('stock_det')
    work_dir = root / 'work'
    config = write_shrunk_config(DET_CONFIG, str(synthetic_data), str(work_dir),
                                 root / 'retinanet_shrunk.py', checkpoint_interval=1)
    run_command(sys.executable, 'tools/train.py', config, cwd=REPO_ROOT)
    checkpoint = work_dir / 'epoch_1.pth'
    assert checkpoint.exists()
    image = sorted((synthetic_data / 'coco' / 'val2017').glob('*.jpg'))[0]
    return dict(config=config, checkpoint=str(checkpoint), root=root, image=str(image))


def test_stock_mmseg_train_resumes(seg_run):
    # Same work_dir, two more iterations: the stock script resumes from iter_2.pth.
    output = run_command(sys.executable, stock_tool(mmseg, 'train.py'), seg_run['config'], '--resume',
                 '--cfg-options', 'train_cfg.max_iters=4', cwd=seg_run['root'])
    assert 'resumed epoch: 0, iter: 2' in output
    resumed = osp.join(seg_run['work_dir'], 'iter_4.pth')
    assert safe_load(resumed)['meta']['iter'] == 4


def test_stock_mmseg_test_and_mim_test_agree_with_mmsparse(seg_run):
    ours = logged_metric(run_command(sys.executable, 'tools/test.py', seg_run['config'],
                             seg_run['checkpoint'], '--work-dir', seg_run['root'] / 'ours',
                             cwd=REPO_ROOT), 'mIoU')
    stock = logged_metric(run_command(sys.executable, stock_tool(mmseg, 'test.py'), seg_run['config'],
                              seg_run['checkpoint'], '--work-dir', seg_run['root'] / 'stock',
                              cwd=seg_run['root']), 'mIoU')
    mim = logged_metric(run_command(sys.executable, '-m', 'mim', 'test', 'mmseg', seg_run['config'],
                            '--checkpoint', seg_run['checkpoint'], '--work-dir',
                            seg_run['root'] / 'mim', cwd=seg_run['root']), 'mIoU')
    assert stock == ours == mim


def test_mmseg_apis(seg_run):
    from mmseg.apis import MMSegInferencer, inference_model, init_model

    model = init_model(seg_run['config'], seg_run['checkpoint'], device='cpu')
    assert_weights_match(model, seg_run['checkpoint'])
    result = inference_model(model, seg_run['image'])
    prediction = result.pred_sem_seg.data[0].numpy()
    assert prediction.shape == tuple(result.ori_shape)

    inferencer = MMSegInferencer(model=seg_run['config'], weights=seg_run['checkpoint'],
                                 device='cpu')
    assert_weights_match(inferencer.model, seg_run['checkpoint'])
    predictions = inferencer(seg_run['image'])['predictions']
    np.testing.assert_array_equal(predictions, prediction)


def test_stock_mmdet_test_and_mim_test_agree_with_mmsparse(det_run):
    ours = logged_metric(run_command(sys.executable, 'tools/test.py', det_run['config'],
                             det_run['checkpoint'], '--work-dir', det_run['root'] / 'ours',
                             '--out', det_run['root'] / 'ours.pkl', cwd=REPO_ROOT),
                         'coco/bbox_mAP')
    stock = logged_metric(run_command(sys.executable, stock_tool(mmdet, 'test.py'), det_run['config'],
                              det_run['checkpoint'], '--work-dir', det_run['root'] / 'stock',
                              '--out', det_run['root'] / 'stock.pkl', cwd=det_run['root']),
                          'coco/bbox_mAP')
    assert ours == stock
    from mmengine.fileio import load
    ours_results, stock_results = load(det_run['root'] / 'ours.pkl'), load(det_run['root'] /
                                                                           'stock.pkl')
    assert len(ours_results) == len(stock_results) == 2
    for a, b in zip(ours_results, stock_results):
        torch.testing.assert_close(a['pred_instances']['bboxes'], b['pred_instances']['bboxes'])
    mim = logged_metric(run_command(sys.executable, '-m', 'mim', 'test', 'mmdet', det_run['config'],
                            '--checkpoint', det_run['checkpoint'], '--work-dir',
                            det_run['root'] / 'mim', cwd=det_run['root']), 'coco/bbox_mAP')
    assert mim == ours


def test_mmdet_apis(det_run):
    from mmdet.apis import DetInferencer, inference_detector, init_detector

    model = init_detector(det_run['config'], det_run['checkpoint'], device='cpu')
    assert_weights_match(model, det_run['checkpoint'])
    result = inference_detector(model, det_run['image'])
    boxes = result.pred_instances.bboxes
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes) > 0

    inferencer = DetInferencer(model=det_run['config'], weights=det_run['checkpoint'],
                               device='cpu', show_progress=False)
    assert_weights_match(inferencer.model, det_run['checkpoint'])
    predictions = inferencer(det_run['image'], no_save_pred=True)['predictions'][0]
    np.testing.assert_allclose(np.asarray(predictions['bboxes']), boxes.numpy(), atol=1e-3)


def test_refused_pickle_stays_refused_after_import(tmp_path):
    """Importing mmsparse.models installs the allow-list, not an open door."""
    marker = tmp_path / 'pwned'
    code = f"""
import os, pickle, sys, torch
import mmsparse.models  # noqa: F401
from mmengine.runner.checkpoint import CheckpointLoader

class Evil:
    def __reduce__(self):
        return (os.system, ('touch {marker}',))

torch.save({{'state_dict': {{}}, 'meta': Evil()}}, '{tmp_path / 'evil.pth'}')
try:
    CheckpointLoader.load_checkpoint('{tmp_path / 'evil.pth'}')
except pickle.UnpicklingError as error:
    print('refused:', error)
"""
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    assert 'refused: global posix.system is not allowed' in result.stdout
    assert not marker.exists()
