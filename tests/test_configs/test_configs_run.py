"""Every config under configs/ builds, trains 2 iterations and validates with its real evaluator.

Runs on the synthetic ADE20K / COCO data (``use_synthetic_data``: its datasets and class
count) at a small image size, with each config's real model (random init: official weights
cannot be downloaded here).
"""
import glob
import math
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from mmsparse.datasets.synthetic import SYNTHETIC_DET_CLASSES, SYNTHETIC_SEG_CLASSES, use_synthetic_data

from ..conftest import REPO_ROOT

# The ablation children train in tests/test_configs/test_ablation_configs.py (each base
# equals its window child), so they are not trained a second time here.
CONFIGS = sorted(p for p in glob.glob(osp.join(REPO_ROOT, 'configs', '**', '*.py'), recursive=True)
                 if '_base_' not in p and osp.join('configs', 'ablations') not in p)
SEG_CROP = (64, 64)
DET_SCALE = (160, 96)
DET_CROP_RANGE = (64, 96)
RPN_PROPOSALS = 100
ROIS_PER_IMAGE = 64


def shrink_pipeline(pipeline, is_seg):
    """Shrink every resize/crop size, including those nested in ``RandomChoice`` branches."""
    for transform in pipeline:
        if isinstance(transform, list):
            shrink_pipeline(transform, is_seg)
            continue
        if 'scale' in transform:
            transform['scale'] = (4 * SEG_CROP[0], SEG_CROP[0]) if is_seg else DET_SCALE
        if 'scales' in transform:
            transform['scales'] = [DET_SCALE]
        if 'crop_size' in transform:
            absolute_range = transform.get('crop_type') == 'absolute_range'
            transform['crop_size'] = DET_CROP_RANGE if absolute_range else SEG_CROP
        if 'transforms' in transform:
            shrink_pipeline(transform['transforms'], is_seg)


def shrink_detector_sampling(model):
    """Fewer proposals and sampled RoIs, so heavy RoI heads (4conv1fc x 3 stages) stay cheap."""
    train_cfg, test_cfg = model.get('train_cfg') or {}, model.get('test_cfg') or {}
    for proposal_cfg in (train_cfg.get('rpn_proposal'), test_cfg.get('rpn')):
        if proposal_cfg is not None:
            proposal_cfg.nms_pre = proposal_cfg.max_per_img = RPN_PROPOSALS
    rcnn_cfgs = train_cfg.get('rcnn') or []
    for rcnn_cfg in rcnn_cfgs if isinstance(rcnn_cfgs, list) else [rcnn_cfgs]:
        rcnn_cfg.sampler.num = ROIS_PER_IMAGE


def shrink_for_cpu(cfg, data_root, work_dir):
    """Point ``cfg`` at the synthetic data and make one run take seconds on a CPU."""
    is_seg = cfg.default_scope == 'mmseg'
    use_synthetic_data(cfg, data_root)
    cfg.work_dir = work_dir
    cfg.launcher = 'none'
    cfg.model.backbone.init_cfg = None
    cfg.default_hooks.checkpoint = None
    for split, num_images in (('train', 4), ('val', 2)):
        loader = cfg[f'{split}_dataloader']
        loader.num_workers, loader.persistent_workers = 0, False
        dataset = loader.dataset
        dataset.indices = num_images
        shrink_pipeline(dataset.pipeline, is_seg)
    if not is_seg:
        # Untrained detectors score below the stock 0.05 threshold; keep every box so the
        # evaluator has something to score.
        test_cfg = cfg.model.test_cfg
        (test_cfg.rcnn if 'rcnn' in test_cfg else test_cfg).score_thr = 0.
        shrink_detector_sampling(cfg.model)
    if is_seg:
        cfg.model.data_preprocessor.size = SEG_CROP
        cfg.train_cfg.max_iters, cfg.train_cfg.val_interval = 2, 1000
    else:
        cfg.train_dataloader.batch_size = 2
        cfg.train_cfg.max_epochs, cfg.train_cfg.val_interval = 1, 1000
    return cfg


def test_every_family_has_configs():
    assert any('biformer' in p for p in CONFIGS)


@pytest.mark.parametrize('config', CONFIGS, ids=lambda p: osp.relpath(p, osp.join(REPO_ROOT, 'configs')))
def test_config_trains_and_validates(config, synthetic_data, tmp_path):
    cfg = shrink_for_cpu(Config.fromfile(config), str(synthetic_data), str(tmp_path))
    assert cfg.model.backbone.type.startswith('mmsparse.')
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    metrics = runner.val()
    is_seg = cfg.default_scope == 'mmseg'
    key = 'mIoU' if is_seg else 'coco/bbox_mAP'
    assert key in metrics and math.isfinite(metrics[key]), metrics
    # The metric scores the synthetic classes (mmseg's per-class IoU table has these rows).
    classes = SYNTHETIC_SEG_CLASSES if is_seg else SYNTHETIC_DET_CLASSES
    assert runner.val_loop.evaluator.dataset_meta['classes'] == classes
    if 'segm' in str(cfg.val_evaluator.get('metric')):
        assert 'coco/segm_mAP' in metrics
