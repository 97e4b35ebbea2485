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


ADE_DILATIONS = [[1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4] * 3, [1, 2, 1, 2, 1]]
COCO_DILATIONS = [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]]
NO_DECAY_ON_RPB_AND_NORMS = {'rpb': dict(decay_mult=0.), 'norm': dict(decay_mult=0.)}


@pytest.mark.parametrize('path,dilations', [
    ('configs/nat/upernet_nat-t_8xb2-160k_ade20k-512x512.py', None),
    ('configs/nat/upernet_dinat-t_8xb2-160k_ade20k-512x512.py', ADE_DILATIONS),
])
def test_nat_upernet_uses_the_official_recipe(path, dilations):
    """The official recipe (segmentation/configs/nat/upernet_nat_*_512x512_160k_ade20k.py of
    https://github.com/SHI-Labs/Neighborhood-Attention-Transformer): AdamW 6e-5 wd 0.01,
    1500-iter warmup from 1e-6, poly(1) to 160k."""
    cfg = load(path)
    backbone = cfg.model.backbone
    assert (backbone.arch, backbone.kernel_size, backbone.drop_path_rate) == ('tiny', 7, 0.3)
    assert backbone.get('dilations') == dilations
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', 6e-5, 0.01)
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == NO_DECAY_ON_RPB_AND_NORMS
    warmup, poly = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end) == ('LinearLR', 1e-6, 1500)
    assert (poly.type, poly.power, poly.eta_min, poly.begin, poly.end) == ('PolyLR', 1.0, 0.0, 1500, 160000)
    assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2
    assert tuple(cfg.crop_size) == (512, 512)
    assert cfg.model.decode_head.in_channels == [64, 128, 256, 512]
    assert cfg.model.auxiliary_head.in_channels == 256


@pytest.mark.parametrize('path', ['configs/nat/mask-rcnn_nat-t_fpn_1x_coco.py',
                                  'configs/nat/mask-rcnn_dinat-t_fpn_1x_coco.py',
                                  'configs/nat/retinanet_dinat-t_fpn_1x_coco.py'] + NAT_CASCADE)
def test_nat_coco_configs_use_the_official_optimiser_and_dilations(path):
    cfg = load(path)
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', 1e-4, 0.05)
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys == NO_DECAY_ON_RPB_AND_NORMS
    expected = COCO_DILATIONS if 'dinat' in path else None
    assert cfg.model.backbone.get('dilations') == expected


@pytest.mark.parametrize('path', ['configs/hat_net/fpn_hat-net-t_8xb2-80k_ade20k-512x512.py',
                                  'configs/hat_net/fpn_hat-net-s_8xb2-80k_ade20k-512x512.py'])
def test_hatnet_semantic_fpn_evaluates_with_pvts_align_resize(path):
    cfg = load(path)
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        resize = loader.dataset.pipeline[1]
        assert resize == dict(type='mmsparse.AlignResize', scale=(2048, 512), size_divisor=32)
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.weight_decay) == ('AdamW', 1e-4, 1e-4)


def test_hatnet_upernet_decays_no_norm():
    """HAT-Net's GroupNorms are not all named '*norm*': decay is switched off by module type."""
    import torch
    from mmengine.optim import build_optim_wrapper

    from mmsparse.models.backbones import HATNet
    cfg = load('configs/hat_net/upernet_hat-net-s_8xb2-160k_ade20k-512x512.py')
    model = torch.nn.Module()
    model.backbone = HATNet('tiny')
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    norm_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.GroupNorm) for p in m.parameters()}
    decays = {g['weight_decay'] for g in wrapper.optimizer.param_groups if id(g['params'][0]) in norm_params}
    assert len(norm_params) > 0 and decays == {0.}


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
