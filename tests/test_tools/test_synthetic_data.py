"""Tests for ``tools/misc/generate_synthetic_data.py``.

The generated folders must load through the stock mmseg ADE20K and mmdet COCO
instance dataset configs with only ``type`` (the synthetic datasets, which
declare the shape classes) and ``data_root`` overridden, ``CocoMetric`` fed
the ground truth as predictions must score mAP 1.0, and each class name must
match what is drawn: its geometry and its palette colour.
"""
import copy
import glob
import importlib.util
import json
import os
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmengine.hub import get_config
from mmengine.registry import DefaultScope
from pycocotools import mask as mask_util

from mmsparse.datasets.synthetic import (SYNTHETIC_DET_CLASSES,
                                         SYNTHETIC_DET_PALETTE,
                                         SYNTHETIC_SEG_CLASSES)

SCRIPT = osp.join(
    osp.dirname(osp.abspath(__file__)), '..', '..', 'tools', 'misc',
    'generate_synthetic_data.py')
_spec = importlib.util.spec_from_file_location('generate_synthetic_data',
                                               SCRIPT)
gsd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gsd)

NUM_TRAIN, NUM_VAL = 6, 3
HEIGHT, WIDTH = gsd.DEFAULT_SIZE
K = len(SYNTHETIC_DET_CLASSES)
COCO_IDS = list(range(1, K + 1))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('synthetic')
    roots = gsd.generate(
        str(out), num_train=NUM_TRAIN, num_val=NUM_VAL, seed=0)
    assert roots == {
        'ade': str(out / 'ade' / 'ADEChallengeData2016'),
        'coco': str(out / 'coco')
    }
    return out


def _files(root):
    return sorted(
        osp.relpath(osp.join(d, f), root) for d, _, files in os.walk(root)
        for f in files)


def _load_coco(data_dir, split):
    path = data_dir / 'coco' / 'annotations' / f'instances_{split}2017.json'
    with open(path) as f:
        return json.load(f)


def test_ade_layout(data_dir):
    root = data_dir / 'ade' / 'ADEChallengeData2016'
    expected = []
    for split, folder, n in (('train', 'training', NUM_TRAIN),
                             ('val', 'validation', NUM_VAL)):
        for i in range(1, n + 1):
            expected += [
                f'images/{folder}/ADE_{split}_{i:08d}.jpg',
                f'annotations/{folder}/ADE_{split}_{i:08d}.png'
            ]
    assert _files(root) == sorted(expected)

    seen = set()
    for name in expected[::2]:
        image = cv2.imread(str(root / name))
        label = cv2.imread(
            str(root / name.replace('images', 'annotations').replace(
                '.jpg', '.png')), cv2.IMREAD_UNCHANGED)
        assert image.shape == (HEIGHT, WIDTH, 3)
        assert label.shape == (HEIGHT, WIDTH) and label.dtype == np.uint8
        values = set(np.unique(label).tolist())
        assert values <= set(range(K + 2))
        # unlabelled frame, background texture and at least one shape
        assert {0, 1} <= values and len(values) >= 3
        assert (label[:gsd.BORDER] == 0).all()
        assert (label[:, -gsd.BORDER:] == 0).all()
        seen |= values
    assert seen == set(range(K + 2)), 'every shape kind appears'


def test_shape_kinds_are_the_dataset_classes():
    assert [kind[0] for kind in gsd.SHAPE_KINDS] == list(SYNTHETIC_DET_CLASSES)
    assert K == 6 and SYNTHETIC_SEG_CLASSES == ('background', 'circle',
                                                'square', 'triangle',
                                                'ellipse', 'star', 'hexagon')


def test_default_val_split_shows_every_class(tmp_path):
    """The quick start's val split (default seed, image size and number of
    val images; the train split does not change it) shows every class, so no
    per-class IoU is NaN."""
    root = gsd.generate(str(tmp_path), datasets='ade', num_train=1)['ade']
    values = set()
    for path in glob.glob(osp.join(root, 'annotations', 'validation', '*')):
        label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        values |= set(np.unique(label).tolist())
    assert len(os.listdir(osp.join(root, 'images', 'validation'))) == 8
    assert values == set(range(K + 2))  # the frame, background, each shape


def _looks_like(mask):
    """Name the shape of a {0, 1} mask from its corners, convexity and
    roundness."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_NONE)
    contour = max(contours, key=cv2.contourArea)
    corners = len(
        cv2.approxPolyDP(contour, 0.03 * cv2.arcLength(contour, True), True))
    solidity = cv2.contourArea(contour) / cv2.contourArea(
        cv2.convexHull(contour))
    width, height = cv2.minAreaRect(contour)[1]
    if solidity < 0.7:
        return 'star'
    if corners in (3, 4, 6):
        return {3: 'triangle', 4: 'square', 6: 'hexagon'}[corners]
    return 'circle' if min(width, height) / max(width, height) > 0.9 \
        else 'ellipse'


@pytest.mark.parametrize('kind', range(K))
def test_each_kind_draws_the_shape_its_class_names(kind):
    for index in range(20):
        rng = np.random.default_rng([5, kind, index])
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        cv2.fillPoly(mask, [gsd._shape_polygon(rng, kind, HEIGHT, WIDTH)], 1)
        assert _looks_like(mask) == SYNTHETIC_DET_CLASSES[kind], index


def _hue(rgb):
    """OpenCV hue (0-180) of an RGB colour."""
    return int(cv2.cvtColor(np.uint8([[rgb]]), cv2.COLOR_RGB2HSV)[0, 0, 0])


def test_shapes_are_painted_in_their_palette_colour(data_dir):
    """The median colour inside every instance is nearest its class's
    palette hue."""
    palette_hues = np.array([_hue(rgb) for rgb in SYNTHETIC_DET_PALETTE])
    kernel = np.ones((7, 7), np.uint8)
    for split in ('train', 'val'):
        coco = _load_coco(data_dir, split)
        images = {img['id']: img['file_name'] for img in coco['images']}
        for ann in coco['annotations']:
            image = cv2.imread(
                str(data_dir / 'coco' / f'{split}2017' /
                    images[ann['image_id']]))
            mask = mask_util.decode(
                mask_util.merge(
                    mask_util.frPyObjects(ann['segmentation'], HEIGHT,
                                          WIDTH)))
            inner = cv2.erode(mask, kernel) > 0  # away from JPEG edges
            bgr = np.median(image[inner], axis=0).astype(np.uint8)
            distance = np.abs(palette_hues - _hue(bgr[::-1]))
            distance = np.minimum(distance, 180 - distance)
            assert distance.argmin() == ann['category_id'] - 1, ann['id']


def test_coco_layout(data_dir):
    root = data_dir / 'coco'
    image_id = 0
    for split, n in (('train', NUM_TRAIN), ('val', NUM_VAL)):
        coco = _load_coco(data_dir, split)
        assert set(coco) == {
            'info', 'licenses', 'images', 'annotations', 'categories'
        }
        assert coco['categories'] == [
            dict(id=i + 1, name=name, supercategory='shape')
            for i, name in enumerate(SYNTHETIC_DET_CLASSES)
        ]

        assert [img['id'] for img in coco['images']
                ] == list(range(image_id + 1, image_id + n + 1))
        image_id += n
        files = []
        for img in coco['images']:
            assert {'id', 'file_name', 'height', 'width'} <= set(img)
            assert img['file_name'] == f'{img["id"]:012d}.jpg'
            assert (img['height'], img['width']) == (HEIGHT, WIDTH)
            files.append(f'{split}2017/{img["file_name"]}')
            assert cv2.imread(str(root / files[-1])).shape == (HEIGHT, WIDTH,
                                                                3)
        assert sorted(f for f in _files(root)
                      if f.startswith(f'{split}2017')) == sorted(files)

        anns = coco['annotations']
        assert len({a['id'] for a in anns}) == len(anns)
        assert {a['image_id'] for a in anns} == {
            img['id']
            for img in coco['images']
        }, 'every image has at least one object'
        for ann in anns:
            assert set(ann) == {
                'id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd',
                'segmentation'
            }
            assert ann['category_id'] in COCO_IDS
            assert ann['iscrowd'] == 0
            x, y, w, h = ann['bbox']
            assert w >= 32 and h >= 32
            assert x >= 0 and y >= 0 and x + w <= WIDTH and y + h <= HEIGHT
            polygons = ann['segmentation']
            assert polygons and all(
                len(p) >= 6 and len(p) % 2 == 0 for p in polygons)
            mask = mask_util.decode(
                mask_util.merge(
                    mask_util.frPyObjects(polygons, HEIGHT, WIDTH)))
            # the polygon rasterizes to a mask with exactly that area and bbox
            assert mask.sum() == ann['area']
            ys, xs = np.nonzero(mask)
            assert [xs.min(), ys.min(), xs.max() + 1 - x,
                    ys.max() + 1 - y] == ann['bbox']


def test_coco_masks_match_ade_labels(data_dir):
    """Both datasets describe the same scenes."""
    coco = _load_coco(data_dir, 'val')
    # shape kind k: category id k + 1, label k + 2
    label_of = {c: c + 1 for c in COCO_IDS}
    inner = np.s_[gsd.BORDER:-gsd.BORDER, gsd.BORDER:-gsd.BORDER]
    for index, img in enumerate(coco['images']):
        label = cv2.imread(
            str(data_dir / 'ade' / 'ADEChallengeData2016' / 'annotations' /
                'validation' / f'ADE_val_{index + 1:08d}.png'),
            cv2.IMREAD_UNCHANGED)
        drawn = np.ones_like(label)
        for ann in coco['annotations']:
            if ann['image_id'] == img['id']:
                rle = mask_util.merge(
                    mask_util.frPyObjects(ann['segmentation'], HEIGHT, WIDTH))
                drawn[mask_util.decode(rle) > 0] = label_of[ann['category_id']]
        assert (drawn[inner] == label[inner]).all()


def test_stock_mmseg_ade20k_config(data_dir):
    from mmseg.registry import DATASETS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = get_config('mmseg::_base_/datasets/ade20k.py')
    root = data_dir / 'ade' / 'ADEChallengeData2016'
    samples = {}
    with DefaultScope.overwrite_default_scope('mmseg'):
        for split, loader, n in (('train', cfg.train_dataloader, NUM_TRAIN),
                                 ('val', cfg.val_dataloader, NUM_VAL)):
            dataset_cfg = copy.deepcopy(loader.dataset)
            dataset_cfg.type = 'mmsparse.SyntheticADE20KDataset'
            dataset_cfg.data_root = str(root)
            dataset = DATASETS.build(dataset_cfg)
            assert len(dataset) == n
            assert dataset.metainfo['classes'] == SYNTHETIC_SEG_CLASSES
            samples[split] = dataset[0]
            assert samples[split]['inputs'].shape[0] == 3
            gt = samples[split]['data_samples'].gt_sem_seg.data
            values = set(gt.unique().tolist())
            assert values <= set(range(K + 1)) | {255}
            assert len(values - {255}) >= 2

    train = samples['train']
    assert train['data_samples'].gt_sem_seg.data.shape[-2:] == train[
        'inputs'].shape[-2:]
    # the val pipeline loads the labels at full size: exact reduce_zero_label
    raw = cv2.imread(
        str(root / 'annotations' / 'validation' / 'ADE_val_00000001.png'),
        cv2.IMREAD_UNCHANGED).astype(np.int64)
    expected = np.where(raw == 0, 255, raw - 1)
    gt = samples['val']['data_samples'].gt_sem_seg.data
    assert (gt[0].numpy() == expected).all()


def _coco_map(val_dataset, ann_file, label_shift=0):
    """bbox and segm mAP of the GT fed to CocoMetric as predictions."""
    from mmdet.evaluation import CocoMetric
    metric = CocoMetric(ann_file=ann_file, metric=['bbox', 'segm'])
    metric.dataset_meta = val_dataset.metainfo
    for i in range(len(val_dataset)):
        info = val_dataset.get_data_info(i)
        h, w = info['height'], info['width']
        instances = info['instances']
        masks = [
            mask_util.decode(
                mask_util.merge(mask_util.frPyObjects(inst['mask'], h, w)))
            for inst in instances
        ]
        labels = [(inst['bbox_label'] + label_shift) % K for inst in instances]
        pred = dict(
            bboxes=torch.tensor([inst['bbox'] for inst in instances]),
            scores=torch.ones(len(instances)),
            labels=torch.tensor(labels),
            masks=torch.from_numpy(np.stack(masks)).bool())
        metric.process({}, [
            dict(img_id=info['img_id'], ori_shape=(h, w), pred_instances=pred)
        ])
    results = metric.evaluate(len(val_dataset))
    return results['coco/bbox_mAP'], results['coco/segm_mAP']


def test_stock_mmdet_coco_instance_config(data_dir):
    from mmdet.registry import DATASETS
    from mmdet.structures.mask import BitmapMasks
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)
    cfg = get_config('mmdet::_base_/datasets/coco_instance.py')
    datasets = {}
    with DefaultScope.overwrite_default_scope('mmdet'):
        for split, loader, n in (('train', cfg.train_dataloader, NUM_TRAIN),
                                 ('val', cfg.val_dataloader, NUM_VAL)):
            dataset_cfg = copy.deepcopy(loader.dataset)
            dataset_cfg.type = 'mmsparse.SyntheticCocoDataset'
            dataset_cfg.data_root = str(data_dir / 'coco')
            dataset = DATASETS.build(dataset_cfg)
            assert len(dataset) == n, 'no image is filtered out'
            assert dataset.metainfo['classes'] == SYNTHETIC_DET_CLASSES
            gt = dataset[0]['data_samples'].gt_instances
            assert len(gt) >= 1 and gt.bboxes.shape == (len(gt), 4)
            assert isinstance(gt.masks, BitmapMasks)
            assert len(gt.masks) == len(gt)
            assert ((gt.labels >= 0) & (gt.labels < K)).all()
            datasets[split] = dataset

        ann_file = str(data_dir / 'coco' / 'annotations' /
                       'instances_val2017.json')
        assert _coco_map(datasets['val'], ann_file) == (1.0, 1.0)
        # the check can fail: wrong classes score (far) below 1
        bbox_map, segm_map = _coco_map(datasets['val'], ann_file, 1)
        assert bbox_map < 0.5 and segm_map < 0.5


def _read_all(root):
    return {f: (root / f).read_bytes() for f in _files(root)}


def test_determinism_and_overwrite(tmp_path):
    kwargs = dict(num_train=2, num_val=1, size=(96, 112))
    gsd.generate(str(tmp_path / 'a'), seed=3, **kwargs)
    gsd.generate(str(tmp_path / 'b'), seed=3, **kwargs)
    gsd.generate(str(tmp_path / 'c'), seed=4, **kwargs)
    gsd.generate(str(tmp_path / 'd'), datasets=['coco'], seed=3, **kwargs)
    first = _read_all(tmp_path / 'a')
    assert len(first) == 2 * 3 + 3 + 2
    assert _read_all(tmp_path / 'b') == first
    other = _read_all(tmp_path / 'c')
    assert other.keys() == first.keys()
    assert all(other[f] != first[f] for f in first if f.endswith('.jpg'))
    assert _read_all(tmp_path / 'd') == {
        f: data
        for f, data in first.items() if f.startswith('coco')
    }

    with pytest.raises(FileExistsError, match=str(tmp_path / 'a' / 'coco')):
        gsd.generate(str(tmp_path / 'a'), datasets=['coco'], seed=4, **kwargs)
    assert _read_all(tmp_path / 'a') == first
    gsd.generate(str(tmp_path / 'a'), seed=4, overwrite=True, **kwargs)
    assert _read_all(tmp_path / 'a') == other


def test_cli(tmp_path, capsys):
    out = str(tmp_path / 'data')
    gsd.main(['--out', out, '--num-train', '1', '--num-val', '1', '--size',
              '64', '80', '--datasets', 'ade'])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith('[synthetic] ade: 1 train + 1 val')
    assert lines[1].startswith('[synthetic] done')
    assert _files(tmp_path / 'data') == [
        'ade/ADEChallengeData2016/annotations/training/ADE_train_00000001.png',
        'ade/ADEChallengeData2016/annotations/validation/ADE_val_00000001.png',
        'ade/ADEChallengeData2016/images/training/ADE_train_00000001.jpg',
        'ade/ADEChallengeData2016/images/validation/ADE_val_00000001.jpg',
    ]
    assert cv2.imread(
        osp.join(out, 'ade/ADEChallengeData2016/images/training/'
                 'ADE_train_00000001.jpg')).shape == (64, 80, 3)

    for argv, expected in (
        (['--out', out, '--datasets', 'ade'],
         [osp.join(out, 'ade', 'ADEChallengeData2016'), '--overwrite']),
        (['--num-train', '0'], ['--num-train', "'0'", '>= 1']),
        (['--num-val', 'x'], ['--num-val', "'x'", '>= 1']),
        (['--size', '32', '64'], ['--size', "'32'", '>= 64']),
        (['--seed', '-1'], ['--seed', "'-1'", '>= 0']),
        (['--datasets', 'voc'], ['--datasets', "'voc'", "'ade', 'coco'"]),
    ):
        with pytest.raises(SystemExit) as exc:
            gsd.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        for text in expected:
            assert text in err, (text, err)


@pytest.mark.parametrize('kwargs, name', [
    (dict(num_train=0), 'num_train'),
    (dict(num_val=1.5), 'num_val'),
    (dict(size=(128, 40)), 'size'),
    (dict(seed=-1), 'seed'),
    (dict(datasets=('ade', 'voc')), 'datasets'),
])
def test_generate_rejects_bad_args(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        gsd.generate(str(tmp_path), **kwargs)
    assert not os.listdir(tmp_path)
