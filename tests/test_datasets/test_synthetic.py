"""The synthetic shapes datasets: their classes, registry names and ``use_synthetic_data``."""
import copy
import glob
import importlib.util
import os.path as osp
import re
import struct
import subprocess
import sys

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope

from mmsparse.datasets.synthetic import (SYNTHETIC_DET_CLASSES, SYNTHETIC_DET_PALETTE,
                                         SYNTHETIC_SEG_CLASSES, SYNTHETIC_SEG_PALETTE,
                                         SyntheticADE20KDataset, SyntheticCocoDataset,
                                         use_synthetic_data)

from ..conftest import REPO_ROOT
from ..utils import build_in_fresh_interpreter

SEG_CONFIG = osp.join(REPO_ROOT, 'configs', 'biformer', 'upernet_ade20k.py')
DET_CONFIG = osp.join(REPO_ROOT, 'configs', 'nat', 'cascade-mask-rcnn_nat-t_fpn_3x_coco.py')


def test_classes_and_palettes():
    assert SYNTHETIC_DET_CLASSES == ('circle', 'square', 'triangle', 'ellipse', 'star', 'hexagon')
    assert SYNTHETIC_SEG_CLASSES == ('background', ) + SYNTHETIC_DET_CLASSES
    # Shape kind k is painted around hue k * 60 degrees: red, yellow, green, cyan, blue, magenta.
    assert SYNTHETIC_DET_PALETTE == [(255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255),
                                     (0, 0, 255), (255, 0, 255)]
    assert SYNTHETIC_SEG_PALETTE == [(128, 128, 128)] + SYNTHETIC_DET_PALETTE
    assert SyntheticADE20KDataset.METAINFO == dict(classes=SYNTHETIC_SEG_CLASSES,
                                                   palette=SYNTHETIC_SEG_PALETTE)
    assert SyntheticCocoDataset.METAINFO == dict(classes=SYNTHETIC_DET_CLASSES,
                                                 palette=SYNTHETIC_DET_PALETTE)


def test_registry_is_a_child_of_mmengine_root():
    from mmengine.registry import DATASETS as ROOT

    from mmsparse.registry import DATASETS
    assert DATASETS.parent is ROOT and DATASETS.scope == 'mmsparse'
    assert 'mmsparse.datasets' in DATASETS._locations
    assert DATASETS.get('SyntheticADE20KDataset') is SyntheticADE20KDataset
    assert DATASETS.get('SyntheticCocoDataset') is SyntheticCocoDataset


@pytest.mark.parametrize('codebase', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('with_imports', [True, False])
def test_datasets_resolve_in_a_fresh_interpreter(codebase, with_imports):
    build = ("for name in ('SyntheticADE20KDataset', 'SyntheticCocoDataset'):\n"
             "    dataset = DATASETS.build(dict(type='mmsparse.' + name, data_root='unused', "
             "lazy_init=True))\n"
             "    print(type(dataset).__module__, type(dataset).__name__, "
             "len(dataset.metainfo['classes']))")
    lines = build_in_fresh_interpreter(codebase, 'DATASETS', 'mmsparse.datasets', build,
                                       with_imports)
    assert lines[-2:] == [
        'mmsparse.datasets.synthetic SyntheticADE20KDataset 7',
        'mmsparse.datasets.synthetic SyntheticCocoDataset 6',
    ]


def test_package_and_ops_do_not_import_codebases():
    code = ('import sys, mmsparse, mmsparse.ops, mmsparse.registry; '
            'assert not {"mmdet", "mmseg"} & {m.split(".")[0] for m in sys.modules}, sorted(sys.modules)')
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def _num_classes(node):
    """Every ``num_classes`` value in the nested dicts and lists of ``node``."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == 'num_classes'] + [
            n for k, v in node.items() if k != 'num_classes' for n in _num_classes(v)]
    if isinstance(node, (list, tuple)):
        return [n for v in node for n in _num_classes(v)]
    return []


def test_points_a_segmentation_config_at_the_synthetic_ade20k(synthetic_data):
    cfg = Config.fromfile(SEG_CONFIG)
    assert _num_classes(cfg.model) == [150, 150]
    assert use_synthetic_data(cfg, str(synthetic_data)) is cfg
    # decode_head and auxiliary_head
    assert _num_classes(cfg.model) == [7, 7]
    root = osp.join(str(synthetic_data), 'ade', 'ADEChallengeData2016')
    for split, folder in (('train', 'training'), ('val', 'validation'), ('test', 'validation')):
        dataset = cfg[f'{split}_dataloader'].dataset
        assert dataset.type == 'mmsparse.SyntheticADE20KDataset' and dataset.data_root == root
        assert dataset.data_prefix == dict(img_path=f'images/{folder}',
                                           seg_map_path=f'annotations/{folder}')
    from mmseg.registry import DATASETS
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = DATASETS.build(cfg.val_dataloader.dataset)
    assert len(dataset) == 4 and dataset.metainfo['classes'] == SYNTHETIC_SEG_CLASSES
    gt = dataset[0]['data_samples'].gt_sem_seg.data
    assert set(gt.unique().tolist()) <= set(range(7)) | {255}


def test_points_a_detection_config_at_the_synthetic_coco(synthetic_data):
    cfg = Config.fromfile(DET_CONFIG)
    assert _num_classes(cfg.model) == [80, 80, 80, 80]
    use_synthetic_data(cfg, str(synthetic_data))
    # the three cascade bbox_heads and the mask_head
    assert _num_classes(cfg.model) == [6, 6, 6, 6]
    root = osp.join(str(synthetic_data), 'coco')
    for split, ann in (('train', 'train'), ('val', 'val'), ('test', 'val')):
        dataset = cfg[f'{split}_dataloader'].dataset
        assert dataset.type == 'mmsparse.SyntheticCocoDataset' and dataset.data_root == root
        assert dataset.ann_file == f'annotations/instances_{ann}2017.json'
    for split in ('val', 'test'):
        ann_file = cfg[f'{split}_evaluator'].ann_file
        assert ann_file == osp.join(root, 'annotations', 'instances_val2017.json')
        assert osp.isfile(ann_file)
    from mmdet.registry import DATASETS
    with DefaultScope.overwrite_default_scope('mmdet'):
        dataset = DATASETS.build(cfg.val_dataloader.dataset)
    assert len(dataset) == 4 and dataset.metainfo['classes'] == SYNTHETIC_DET_CLASSES
    labels = {inst['bbox_label'] for i in range(len(dataset)) for inst in dataset.get_data_info(i)['instances']}
    assert labels and labels <= set(range(6))


def test_looks_through_dataset_wrappers_and_evaluator_lists(synthetic_data):
    coco = dict(type='CocoDataset', ann_file='annotations/instances_train2017.json', pipeline=[])
    cfg = Config(dict(
        default_scope='mmdet',
        model=dict(type='RetinaNet', bbox_head=dict(type='RetinaHead', num_classes=80)),
        train_dataloader=dict(dataset=dict(type='RepeatDataset', times=3, dataset=dict(
            type='ConcatDataset', datasets=[copy.deepcopy(coco), copy.deepcopy(coco)]))),
        val_dataloader=dict(dataset=dict(coco, ann_file='annotations/instances_val2017.json')),
        val_evaluator=[dict(type='CocoMetric', ann_file='data/coco/x.json'), dict(type='DumpResults')]))
    use_synthetic_data(cfg, str(synthetic_data))
    root = osp.join(str(synthetic_data), 'coco')
    for dataset in cfg.train_dataloader.dataset.dataset.datasets:
        assert dataset.type == 'mmsparse.SyntheticCocoDataset' and dataset.data_root == root
    assert cfg.train_dataloader.dataset.type == 'RepeatDataset'
    assert cfg.val_evaluator[0].ann_file == osp.join(root, 'annotations', 'instances_val2017.json')
    assert 'ann_file' not in cfg.val_evaluator[1]
    assert cfg.model.bbox_head.num_classes == 6


def test_rejects_bad_input(synthetic_data, tmp_path):
    cfg = Config(dict(default_scope='mmpretrain', model=dict()))
    with pytest.raises(ValueError, match=r"cfg.default_scope .*\('mmseg', 'mmdet'\).*'mmpretrain'"):
        use_synthetic_data(cfg, str(synthetic_data))
    with pytest.raises(FileNotFoundError,
                       match=rf"data_root='{re.escape(str(tmp_path))}' holds no coco .*--datasets coco"):
        use_synthetic_data(Config.fromfile(DET_CONFIG), str(tmp_path))
    coco = dict(type='CocoDataset', ann_file='annotations/instances_val2017.json')
    cfg = Config(dict(default_scope='mmdet', model=dict(),
                      val_dataloader=dict(dataset=dict(type='ConcatDataset', datasets=[coco, coco])),
                      val_evaluator=dict(type='CocoMetric', ann_file='x.json')))
    with pytest.raises(ValueError, match='cfg.val_evaluator has an ann_file.*got 2'):
        use_synthetic_data(cfg, str(synthetic_data))


def _load_mmseg_confusion_matrix_tool():
    """mmseg's stock ``tools/analysis_tools/confusion_matrix.py``, as installed with mmseg."""
    import matplotlib
    matplotlib.use('Agg')
    import mmseg
    path = osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools', 'analysis_tools', 'confusion_matrix.py')
    spec = importlib.util.spec_from_file_location('mmseg_confusion_matrix', path)
    module = importlib.util.module_from_spec(spec)
    # The script calls init_default_scope('mmseg') on import; keep that out of the other tests.
    with DefaultScope.overwrite_default_scope('mmseg'):
        spec.loader.exec_module(module)
    return module


def test_mmseg_confusion_matrix_tool(synthetic_data, tmp_path):
    """The stock tool, as its main() runs it on the test set: a 7x7 matrix and a small figure."""
    import matplotlib.pyplot as plt
    from mmseg.registry import DATASETS
    tool = _load_mmseg_confusion_matrix_tool()
    cfg = use_synthetic_data(Config.fromfile(SEG_CONFIG), str(synthetic_data))
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = DATASETS.build(cfg.test_dataloader.dataset)
        # The ground truth fed as the predictions.
        results = [dataset[i]['data_samples'].gt_sem_seg.data.squeeze().numpy().astype(np.uint8)
                   for i in range(len(dataset))]
        # The pipeline already applied reduce_zero_label; the tool subtracts 1 again when the
        # flag is set (open-mmlab/mmsegmentation#1687), so clear it on this instance only.
        dataset.reduce_zero_label = False
        matrix = tool.calculate_confusion_matrix(dataset, results)

    counts = np.zeros(7)
    for path in glob.glob(osp.join(cfg.test_dataloader.dataset.data_root, 'annotations', 'validation', '*.png')):
        raw = cv2.imread(path, cv2.IMREAD_UNCHANGED).ravel()
        counts += np.bincount(raw[raw > 0] - 1, minlength=7)  # 0 is the ignored frame
    assert matrix.shape == (7, 7)
    # all on the diagonal, one count per labelled pixel (the frame is ignored)
    assert (np.diag(matrix) == counts).all() and matrix.sum() == counts.sum(), (matrix, counts)
    assert counts[0] > 0 and (counts[1:] > 0).sum() >= 2

    tool.plot_confusion_matrix(matrix, dataset.METAINFO['classes'], save_dir=str(tmp_path), show=False)
    plt.close('all')
    with open(tmp_path / 'confusion_matrix.png', 'rb') as f:
        header = f.read(24)
    assert header[:8] == b'\x89PNG\r\n\x1a\n'
    # 2 inches per class at 300 dpi (4200 x 3360 pixels): with ADE20K's 150 classes it would be
    # 90000 x 72000 pixels, tens of GB.
    assert struct.unpack('>II', header[16:24]) == (2 * 7 * 300, round(1.6 * 7 * 300))
