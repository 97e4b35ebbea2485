"""The configs carry the papers' recipes: checked on the merged config, without training."""
import glob
import os.path as osp
import re

import pytest
from mmengine.config import Config

from ..conftest import REPO_ROOT

NAT_CASCADE = ['configs/nat/cascade-mask-rcnn_nat-t_fpn_3x_coco.py',
               'configs/nat/cascade-mask-rcnn_dinat-t_fpn_3x_coco.py']
DETR_SHORT_SIDES = list(range(480, 801, 32))


def load(path):
    return Config.fromfile(osp.join(REPO_ROOT, path))


@pytest.mark.parametrize('path', NAT_CASCADE)
def test_nat_cascade_uses_the_papers_heads(path):
    heads = load(path).model.roi_head.bbox_head
    assert len(heads) == 3
    expected_stds = [[0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067]]
    for head, stds in zip(heads, expected_stds):
        assert head.type == 'ConvFCBBoxHead'
        assert (head.num_shared_convs, head.num_shared_fcs) == (4, 1)
        assert head.reg_decoded_bbox and not head.reg_class_agnostic
        assert head.loss_bbox == dict(type='GIoULoss', loss_weight=10.0)
        assert head.norm_cfg.type == 'SyncBN'
        assert list(head.bbox_coder.target_stds) == stds


@pytest.mark.parametrize('path', NAT_CASCADE)
def test_nat_cascade_uses_the_detr_crop_pipeline_and_3x_schedule(path):
    cfg = load(path)
    choice = next(t for t in cfg.train_dataloader.dataset.pipeline if t.type == 'RandomChoice')
    multiscale, crop_branch = choice.transforms
    assert [s[0] for s in multiscale[0].scales] == DETR_SHORT_SIDES
    assert [t.type for t in crop_branch] == ['RandomChoiceResize', 'RandomCrop', 'RandomChoiceResize']
    assert [s[0] for s in crop_branch[0].scales] == [400, 500, 600]
    assert crop_branch[1].crop_type == 'absolute_range' and tuple(crop_branch[1].crop_size) == (384, 600)
    assert [s[0] for s in crop_branch[2].scales] == DETR_SHORT_SIDES

    assert cfg.train_cfg.max_epochs == 36
    warmup, steps = cfg.param_scheduler
    assert (warmup.type, warmup.end, warmup.by_epoch) == ('LinearLR', 500, False)
    assert (steps.type, list(steps.milestones)) == ('MultiStepLR', [27, 33])
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', 1e-4, 0.05)
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys.rpb.decay_mult == 0.
    assert set(cfg.val_evaluator.metric) == {'bbox', 'segm'}
    # The stock base imports mmpretrain for its ConvNeXt; nothing of it may remain.
    assert cfg.custom_imports.imports == ['mmsparse.models']
    assert cfg.model.backbone.type == 'mmsparse.NAT'


CONFIG_FILES = sorted(glob.glob(osp.join(REPO_ROOT, 'configs', '*', '*.py')))


@pytest.mark.parametrize('path', CONFIG_FILES, ids=lambda p: osp.relpath(p, REPO_ROOT))
def test_configs_inherit_stock_or_sibling_configs(path):
    """Every config starts from a stock mmdet/mmseg file or a sibling that does."""
    source = open(path).read()
    bases = re.findall(r"_base_ = \[(.*?)\]", source, flags=re.S)
    assert len(bases) == 1, f'{path}: expected one _base_ list'
    for base in re.findall(r"'([^']+)'", bases[0]):
        assert base.startswith(('mmdet::', 'mmseg::', './')), f'{path}: base {base!r}'
        if base.startswith('./'):
            assert osp.isfile(osp.join(osp.dirname(path), base)), f'{path}: missing {base}'
