"""Generate a small, learnable synthetic dataset in ADE20K and COCO layouts.

Every image shows 1-4 coloured geometric shapes on a textured background
(noise, stripes, gradient or checkers), with colours from a hue band per shape
kind, random sizes, positions and rotations. The shape kinds are the classes,
named once in ``mmsparse.datasets.synthetic.SYNTHETIC_DET_CLASSES`` (circle,
square, triangle, ellipse, star, hexagon); ``SHAPE_KINDS`` adds each kind's
geometry, in that order. Shapes may overlap a little; an occluded shape stays
one connected region without holes, keeps ``MIN_VISIBLE_FRACTION`` of its area
and is at least ``MIN_OBJECT_SIZE`` (32) pixels wide and high. The same scene
is written to both datasets, so the ADE20K label map and the COCO masks agree.
Output is deterministic given ``--seed`` (scene ``i`` of a split depends only
on the seed, the split and ``i``, not on which datasets are written).

Layout written under ``--out`` (default ``data``)::

    ade/ADEChallengeData2016/
        images/{training,validation}/ADE_{train,val}_00000001.jpg
        annotations/{training,validation}/ADE_{train,val}_00000001.png
    coco/
        {train2017,val2017}/000000000001.jpg
        annotations/instances_{train,val}2017.json

ADE20K label maps are uint8 PNGs following ADE20K's ``reduce_zero_label``
convention: 0 = unlabelled (a 2-pixel frame around the image, ignored as 255
after ``reduce_zero_label``), 1 = background texture, ``2 + k`` = shape kind
``k``, so after ``reduce_zero_label`` the labels are the 7 classes of
``SYNTHETIC_SEG_CLASSES`` (``'background'``, then the shape kinds).

COCO annotation files hold ``info``, ``licenses``, ``images`` (``id``,
``file_name``, ``height``, ``width``), ``annotations`` (``id``, ``image_id``,
``category_id``, tight ``bbox`` ``[x, y, w, h]``, ``area`` = visible mask
pixels, ``iscrowd`` 0, one polygon in ``segmentation`` that pycocotools
rasterizes back to exactly the visible mask) and ``categories``: shape kind
``k`` is category ``k + 1``, named after it (supercategory ``'shape'``), since
mmdet maps classes by name. Image ids are unique across both splits.

Load them with ``mmsparse.SyntheticADE20KDataset`` and
``mmsparse.SyntheticCocoDataset``, which declare these classes;
``mmsparse.datasets.synthetic.use_synthetic_data(cfg, out)`` points an mmseg or
mmdet config at them.

Usage (from the repository root)::

    python tools/misc/generate_synthetic_data.py --out data --num-train 24 \\
        --num-val 8 --size 128 160 --seed 0 --datasets ade coco [--overwrite] \\
        [--no-progress]

A progress bar over the scenes (mmengine's ``ProgressBar``: count, elapsed time,
ETA) goes to stderr; ``--no-progress`` turns it off.
"""
import argparse
import json
import math
import os
import os.path as osp
import shutil
import sys
import time

import cv2
import numpy as np
from mmengine.utils import ProgressBar

from mmsparse.datasets.synthetic import SYNTHETIC_DET_CLASSES, SYNTHETIC_ROOTS

DATASETS = tuple(SYNTHETIC_ROOTS)  # ('ade', 'coco')
DEFAULT_OUT = 'data'
DEFAULT_NUM_TRAIN = 24
DEFAULT_NUM_VAL = 8
DEFAULT_SIZE = (128, 160)
MIN_IMAGE_SIDE = 64
MIN_OBJECT_SIZE = 32  # mmdet's train filter uses min_size=32
MAX_OBJECTS = 4
HUE_JITTER = 8  # OpenCV hue units (0-180); kinds are 30 apart
MIN_VISIBLE_FRACTION = 0.65  # of a shape's area left visible under overlaps
PLACEMENT_TRIES = 30
BORDER = 2  # width of the unlabelled (0) frame in ADE20K label maps
JPEG_QUALITY = 95

# vertices, inner radius ratio (stars), minor/major axis ratio range, by kind
SHAPE_GEOMETRY = {
    'circle': (48, 1.0, (1.0, 1.0)),
    'square': (4, 1.0, (1.0, 1.0)),
    'triangle': (3, 1.0, (1.0, 1.0)),
    'ellipse': (48, 1.0, (0.55, 0.7)),
    'star': (10, 0.45, (1.0, 1.0)),
    'hexagon': (6, 1.0, (1.0, 1.0)),
}
assert set(SHAPE_GEOMETRY) == set(SYNTHETIC_DET_CLASSES), (
    'one geometry per class of mmsparse.datasets.synthetic')
# (name, vertices, inner radius ratio, axis ratio range); kind k is class k
SHAPE_KINDS = tuple(
    (name, *SHAPE_GEOMETRY[name]) for name in SYNTHETIC_DET_CLASSES)
# Every kind is at least this many circumradii wide and high (ellipse:
# 2 * 0.55).
MIN_EXTENT_PER_RADIUS = 1.1

ADE_SPLITS = {'train': 'training', 'val': 'validation'}
COCO_SPLITS = {'train': 'train2017', 'val': 'val2017'}
DATASET_FOLDERS = {
    'ade': [
        osp.join(kind, split) for kind in ('images', 'annotations')
        for split in ADE_SPLITS.values()
    ],
    'coco': [*COCO_SPLITS.values(), 'annotations'],
}
ADE_LABEL_UNLABELLED, ADE_LABEL_BACKGROUND, ADE_LABEL_FIRST_SHAPE = 0, 1, 2

COCO_CATEGORIES = [
    dict(id=kind + 1, name=name, supercategory='shape')
    for kind, name in enumerate(SYNTHETIC_DET_CLASSES)
]


def _hsv_colour(rng, sat_range, val_range, hue_range=(0, 180)):
    """Return a random BGR colour (float32, shape (3,)) from HSV ranges (OpenCV hue 0-180)."""
    hsv = np.array([[[rng.uniform(*hue_range) % 180,
                      rng.uniform(*sat_range) * 255,
                      rng.uniform(*val_range) * 255]]]).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _shape_colour(rng, kind):
    """A saturated colour from the hue band of shape ``kind``.

    Each kind owns a band of ``HUE_JITTER`` around its own hue (the colour
    of its class in ``SYNTHETIC_DET_PALETTE``), so colour and shape both tell
    the class: a small model learns it in a few hundred iterations on a CPU,
    which the end-to-end training test relies on.
    """
    centre = kind * 180 / len(SHAPE_KINDS)
    return _hsv_colour(rng, (0.6, 1), (0.6, 1), (centre - HUE_JITTER, centre + HUE_JITTER))


def _background(rng, height, width):
    """Return a muted textured background (float32, HxWx3, BGR)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, math.pi)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    texture = rng.integers(4)
    if texture == 0:  # smooth noise
        coarse = rng.random((height // 16 + 2, width // 16 + 2))
        t = cv2.resize(coarse.astype(np.float32), (width, height),
                       interpolation=cv2.INTER_CUBIC)
    elif texture == 1:  # stripes
        t = 0.5 + 0.5 * np.sin(2 * math.pi * u / rng.uniform(8, 32) +
                               rng.uniform(0, 2 * math.pi))
    elif texture == 2:  # linear gradient
        t = (u - u.min()) / max(float(np.ptp(u)), 1.0)
    else:  # rotated checkers
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        cell = rng.uniform(8, 24)
        t = (np.floor(u / cell) + np.floor(v / cell)) % 2
    t = np.clip(t, 0, 1)[..., None]
    low = _hsv_colour(rng, (0, 0.35), (0.2, 0.8))
    high = _hsv_colour(rng, (0, 0.35), (0.2, 0.8))
    return low + t * (high - low)


def _shape_polygon(rng, kind, height, width):
    """Return the int32 (N, 2) polygon of a random shape of ``kind``.

    The shape fits in the image and is at least ``MIN_OBJECT_SIZE`` pixels
    wide and high.
    """
    _, vertices, inner_ratio, aspect_range = SHAPE_KINDS[kind]
    r_min = MIN_OBJECT_SIZE / MIN_EXTENT_PER_RADIUS
    r_max = max(r_min, 0.42 * min(height, width))
    radius = rng.uniform(r_min, r_max)
    centre = (rng.uniform(radius, width - radius),
              rng.uniform(radius, height - radius))
    angles = 2 * math.pi * np.arange(vertices) / vertices
    radii = np.where(np.arange(vertices) % 2 == 1, inner_ratio, 1.0) * radius
    points = np.stack([radii * np.cos(angles),
                       radii * np.sin(angles) * rng.uniform(*aspect_range)], 1)
    rotation = rng.uniform(0, 2 * math.pi)
    rot = np.array([[math.cos(rotation), -math.sin(rotation)],
                    [math.sin(rotation), math.cos(rotation)]])
    return np.round(points @ rot.T + centre).astype(np.int32)


def _is_valid_instance(mask, full_area):
    """Whether a visible mask is one hole-free region, big enough to keep."""
    ys, xs = np.nonzero(mask)
    if len(xs) < MIN_VISIBLE_FRACTION * full_area:
        return False
    if (xs.max() - xs.min() + 1 < MIN_OBJECT_SIZE
            or ys.max() - ys.min() + 1 < MIN_OBJECT_SIZE):
        return False
    contours, _ = cv2.findContours(mask, cv2.RETR_CCOMP,
                                   cv2.CHAIN_APPROX_SIMPLE)
    return len(contours) == 1


def render_scene(rng, height, width):
    """Render one random scene.

    Args:
        rng (np.random.Generator): Source of randomness.
        height (int): Image height.
        width (int): Image width.

    Returns:
        tuple: ``image`` (uint8, HxWx3, BGR), ``label`` (uint8, HxW, ADE20K
        labels incl. the unlabelled frame) and ``instances``, a list of
        ``(kind, mask)`` with ``mask`` the visible uint8 HxW {0, 1} mask, in
        painting order.
    """
    num_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    shapes = []  # [kind, polygon, full area, visible mask]
    for _ in range(num_objects * PLACEMENT_TRIES):
        if len(shapes) == num_objects:
            break
        kind = int(rng.integers(len(SHAPE_KINDS)))
        polygon = _shape_polygon(rng, kind, height, width)
        mask = np.zeros((height, width), np.uint8)
        cv2.fillPoly(mask, [polygon], 1)
        area = int(mask.sum())
        occluded = [shape[3] & (1 - mask) for shape in shapes]
        if _is_valid_instance(mask, area) and all(
                _is_valid_instance(visible, shape[2])
                for visible, shape in zip(occluded, shapes)):
            for shape, visible in zip(shapes, occluded):
                shape[3] = visible
            shapes.append([kind, polygon, area, mask])
    if not shapes:
        raise RuntimeError(f'could not place a shape in a {height}x{width} '
                           'image')

    image = _background(rng, height, width)
    label = np.full((height, width), ADE_LABEL_BACKGROUND, np.uint8)
    for kind, polygon, _, _ in shapes:
        cv2.fillPoly(image, [polygon], _shape_colour(rng, kind).tolist())
        cv2.fillPoly(label, [polygon], ADE_LABEL_FIRST_SHAPE + kind)
    image += rng.normal(0, 6, image.shape).astype(np.float32)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    label[:BORDER] = label[-BORDER:] = ADE_LABEL_UNLABELLED
    label[:, :BORDER] = label[:, -BORDER:] = ADE_LABEL_UNLABELLED
    return image, label, [(kind, mask) for kind, _, _, mask in shapes]


def _coco_annotation(ann_id, image_id, kind, mask):
    """Return the COCO annotation dict of one visible instance mask.

    The polygon traces the mask upsampled 2x, i.e. runs a quarter pixel inside
    the outer pixel edges, so pycocotools rasterizes it back to exactly
    ``mask``: ``area`` and the tight ``bbox`` hold for polygon and mask alike.
    """
    ys, xs = np.nonzero(mask)
    x0, y0 = int(xs.min()), int(ys.min())
    upsampled = cv2.resize(
        mask, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(upsampled, cv2.RETR_CCOMP,
                                   cv2.CHAIN_APPROX_SIMPLE)
    # contour points are pixel indices; COCO puts pixel centres at +0.5
    polygon = ((contours[0].reshape(-1, 2) + 0.5) / 2).flatten().tolist()
    return dict(
        id=ann_id,
        image_id=image_id,
        category_id=COCO_CATEGORIES[kind]['id'],
        bbox=[x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
        area=len(xs),
        iscrowd=0,
        segmentation=[polygon])


class _AdeWriter:
    """Writes scenes as ADE20K JPEG images and PNG label maps."""

    def __init__(self, root):
        self.root = root

    def add(self, split, index, image, label, instances):
        stem = f'ADE_{split}_{index + 1:08d}'
        split_dir = ADE_SPLITS[split]
        cv2.imwrite(
            osp.join(self.root, 'images', split_dir, stem + '.jpg'), image,
            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        cv2.imwrite(
            osp.join(self.root, 'annotations', split_dir, stem + '.png'),
            label)

    def close(self):
        pass


class _CocoWriter:
    """Writes scenes as COCO JPEG images and ``instances_*.json`` files."""

    def __init__(self, root, description):
        self.root = root
        self.description = description
        self.files = {split: self._empty_file(split) for split in COCO_SPLITS}
        self.next_image_id = 1

    def _empty_file(self, split):
        return dict(
            info=dict(
                description=f'{self.description}, {split}',
                version='1.0',
                contributor='mmsparse tools/misc/generate_synthetic_data.py'),
            licenses=[
                dict(
                    id=1,
                    name='CC0 1.0',
                    url='https://creativecommons.org/publicdomain/zero/1.0/')
            ],
            images=[],
            annotations=[],
            categories=COCO_CATEGORIES)

    def add(self, split, index, image, label, instances):
        coco = self.files[split]
        image_id = self.next_image_id
        self.next_image_id += 1
        file_name = f'{image_id:012d}.jpg'
        cv2.imwrite(
            osp.join(self.root, COCO_SPLITS[split], file_name), image,
            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        coco['images'].append(
            dict(
                id=image_id,
                file_name=file_name,
                height=image.shape[0],
                width=image.shape[1],
                license=1))
        for kind, mask in instances:
            coco['annotations'].append(
                _coco_annotation(
                    len(coco['annotations']) + 1, image_id, kind, mask))

    def close(self):
        for split, coco in self.files.items():
            ann_file = osp.join(self.root, 'annotations',
                                f'instances_{COCO_SPLITS[split]}.json')
            with open(ann_file, 'w') as f:
                json.dump(coco, f)


def _check_args(datasets, num_train, num_val, size, seed):
    unknown = [name for name in datasets if name not in DATASETS]
    if unknown or not datasets:
        raise ValueError(f'datasets must be a non-empty subset of {DATASETS}, '
                         f'got {tuple(datasets)}')
    for name, value, minimum in (('num_train', num_train, 1),
                                 ('num_val', num_val, 1), ('seed', seed, 0)):
        if not isinstance(value, int) or value < minimum:
            raise ValueError(
                f'{name} must be an integer >= {minimum}, got {value!r}')
    if (len(size) != 2 or not all(isinstance(s, int) for s in size)
            or min(size) < MIN_IMAGE_SIDE):
        raise ValueError('size must be (height, width), integers >= '
                         f'{MIN_IMAGE_SIDE}, got {size!r}')


def generate(out_dir=DEFAULT_OUT,
             datasets=DATASETS,
             num_train=DEFAULT_NUM_TRAIN,
             num_val=DEFAULT_NUM_VAL,
             size=DEFAULT_SIZE,
             seed=0,
             overwrite=False,
             progress=True):
    """Write the synthetic datasets (see the module docstring) to disk.

    Args:
        out_dir (str): Folder that receives ``ade/`` and/or ``coco/``.
        datasets (Sequence[str]): Any of ``'ade'``, ``'coco'``.
        num_train (int): Training images per dataset.
        num_val (int): Validation images per dataset.
        size (tuple[int, int]): Image ``(height, width)``.
        seed (int): Seed >= 0; the same seed gives byte-identical files.
        overwrite (bool): Replace non-empty dataset folders instead of
            raising ``FileExistsError``.
        progress (bool): Show a progress bar over the scenes (count, elapsed
            time, ETA) on stderr, leaving stdout as it is. Defaults to True.

    Returns:
        dict[str, str]: Dataset name to its root folder (the ``data_root`` of
        the stock configs).
    """
    if isinstance(datasets, str):
        datasets = (datasets, )
    datasets = tuple(dict.fromkeys(datasets))
    size = tuple(size)
    _check_args(datasets, num_train, num_val, size, seed)
    height, width = size
    roots = {
        name: osp.join(out_dir, SYNTHETIC_ROOTS[name])
        for name in DATASETS if name in datasets
    }
    for root in roots.values():
        if not overwrite and osp.isdir(root) and os.listdir(root):
            raise FileExistsError(
                f'{root} already exists and is not empty; pass --overwrite '
                '(overwrite=True) to replace it')
    for name, root in roots.items():
        if osp.isdir(root):
            shutil.rmtree(root)
        for folder in DATASET_FOLDERS[name]:
            os.makedirs(osp.join(root, folder))

    start = time.time()
    description = (f'mmsparse synthetic shapes, seed {seed}, '
                   f'{height}x{width}')
    writers = {
        name: _AdeWriter(root) if name == 'ade' else _CocoWriter(
            root, description)
        for name, root in roots.items()
    }
    bar = ProgressBar(num_train + num_val, file=sys.stderr) if progress else None
    for split_index, (split, num_images) in enumerate(
            (('train', num_train), ('val', num_val))):
        for index in range(num_images):
            rng = np.random.default_rng([seed, split_index, index])
            scene = render_scene(rng, height, width)
            for writer in writers.values():
                writer.add(split, index, *scene)
            if bar is not None:
                bar.update()
    if bar is not None:
        sys.stderr.write('\n')  # ProgressBar leaves the cursor on its line
    for name, writer in writers.items():
        writer.close()
        print(f'[synthetic] {name}: {num_train} train + {num_val} val images '
              f'of {height}x{width} -> {roots[name]}', flush=True)
    print(f'[synthetic] done: {len(roots)} dataset(s), '
          f'{len(SHAPE_KINDS)} shape kinds, seed {seed}, '
          f'{time.time() - start:.1f} s', flush=True)
    return roots


def _int_at_least(minimum):
    """argparse type: an integer >= ``minimum``."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(
                f'invalid value {text!r}: must be an integer >= {minimum}')
        return value

    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Generate a small synthetic shapes dataset in the '
        'ADE20K and COCO 2017 layouts.')
    parser.add_argument(
        '--out',
        default=DEFAULT_OUT,
        help='output folder (default: %(default)s)')
    parser.add_argument(
        '--num-train',
        type=_int_at_least(1),
        default=DEFAULT_NUM_TRAIN,
        help='training images per dataset (default: %(default)s)')
    parser.add_argument(
        '--num-val',
        type=_int_at_least(1),
        default=DEFAULT_NUM_VAL,
        help='validation images per dataset (default: %(default)s)')
    parser.add_argument(
        '--size',
        nargs=2,
        type=_int_at_least(MIN_IMAGE_SIDE),
        default=list(DEFAULT_SIZE),
        metavar=('H', 'W'),
        help='image height and width (default: %(default)s)')
    parser.add_argument(
        '--seed',
        type=_int_at_least(0),
        default=0,
        help='random seed (default: %(default)s)')
    parser.add_argument(
        '--datasets',
        nargs='+',
        choices=DATASETS,
        default=list(DATASETS),
        help='datasets to write (default: %(default)s)')
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='replace non-empty dataset folders')
    parser.add_argument(
        '--no-progress',
        dest='progress',
        action='store_false',
        help='do not show the progress bar (on stderr)')
    return parser, parser.parse_args(argv)


def main(argv=None):
    parser, args = parse_args(argv)
    try:
        generate(args.out, args.datasets, args.num_train, args.num_val,
                 args.size, args.seed, args.overwrite, args.progress)
    except FileExistsError as e:
        parser.error(str(e))


if __name__ == '__main__':
    main()
