"""The synthetic shapes data of ``tools/misc/generate_synthetic_data.py`` as mmseg / mmdet datasets.

The generator draws coloured shapes of six kinds on textured backgrounds and writes the
same scenes in the ADE20K and COCO 2017 file layouts. The classes are the shape kinds
(plus ``'background'`` for segmentation), declared here once: the generator writes its
COCO categories and ADE20K label values from :data:`SYNTHETIC_DET_CLASSES`, and the
datasets below carry them as their ``METAINFO``, so metrics, visualizers and mmseg's
confusion-matrix tool see 7 (or 6) classes with these names instead of ADE20K's 150 or
COCO's 80.

:func:`use_synthetic_data` points any mmseg or mmdet config at the generated folders.
"""
import colorsys
import os.path as osp

from mmdet.datasets import CocoDataset
from mmseg.datasets import ADE20KDataset

from mmsparse.registry import DATASETS

#: The shape kinds, in the order of their COCO category ids (1..6) and ADE20K labels (2..7).
SYNTHETIC_DET_CLASSES = ('circle', 'square', 'triangle', 'ellipse', 'star', 'hexagon')
#: The segmentation classes after ``reduce_zero_label``: the background texture, then the shapes.
SYNTHETIC_SEG_CLASSES = ('background', ) + SYNTHETIC_DET_CLASSES
#: RGB colour of each shape kind: the centre of the hue band the generator paints it in
#: (kind ``k`` at ``k / 6`` of the hue circle), at full saturation and value.
SYNTHETIC_DET_PALETTE = [
    tuple(round(255 * c) for c in colorsys.hsv_to_rgb(k / len(SYNTHETIC_DET_CLASSES), 1., 1.))
    for k in range(len(SYNTHETIC_DET_CLASSES))
]
#: The segmentation palette: grey for the (unsaturated) background, then the shape colours.
SYNTHETIC_SEG_PALETTE = [(128, 128, 128)] + SYNTHETIC_DET_PALETTE
#: Each dataset's folder under the generator's ``--out``: the ``data_root`` of its configs.
SYNTHETIC_ROOTS = {'ade': osp.join('ade', 'ADEChallengeData2016'), 'coco': 'coco'}


@DATASETS.register_module()
class SyntheticADE20KDataset(ADE20KDataset):
    """The synthetic shapes in the ADE20K layout, with their own 7 classes.

    Files, suffixes (``.jpg`` images, ``.png`` label maps) and ``reduce_zero_label=True``
    are those of :class:`mmseg.datasets.ADE20KDataset`: label 0 (the unlabelled frame
    around each image) becomes the ignore index, 1 (background) becomes class 0 and
    ``2 + k`` (shape kind ``k``) becomes class ``1 + k`` of :data:`SYNTHETIC_SEG_CLASSES`.

    Args:
        **kwargs: The arguments of :class:`mmseg.datasets.ADE20KDataset`, e.g.
            ``data_root``, ``data_prefix`` and ``pipeline``.
    """

    METAINFO = dict(classes=SYNTHETIC_SEG_CLASSES, palette=SYNTHETIC_SEG_PALETTE)


@DATASETS.register_module()
class SyntheticCocoDataset(CocoDataset):
    """The synthetic shapes in the COCO 2017 layout, with the 6 shape kinds as classes.

    The annotation files name their categories (ids 1..6) after
    :data:`SYNTHETIC_DET_CLASSES`; mmdet maps categories to labels by name.

    Args:
        **kwargs: The arguments of :class:`mmdet.datasets.CocoDataset`, e.g.
            ``data_root``, ``ann_file``, ``data_prefix`` and ``pipeline``.
    """

    METAINFO = dict(classes=SYNTHETIC_DET_CLASSES, palette=SYNTHETIC_DET_PALETTE)


# default scope -> (dataset class, key of its folder in SYNTHETIC_ROOTS)
_SCOPE_DATASETS = {'mmseg': (SyntheticADE20KDataset, 'ade'), 'mmdet': (SyntheticCocoDataset, 'coco')}


def _leaf_datasets(dataset_cfg):
    """The dataset configs inside ``dataset_cfg``, looking through wrappers.

    ``RepeatDataset``-like wrappers hold one ``dataset``, ``ConcatDataset`` a list of
    ``datasets``.
    """
    if 'dataset' in dataset_cfg:
        return _leaf_datasets(dataset_cfg['dataset'])
    if 'datasets' in dataset_cfg:
        return [leaf for inner in dataset_cfg['datasets'] for leaf in _leaf_datasets(inner)]
    return [dataset_cfg]


def _set_num_classes(node, num_classes):
    """Set every ``num_classes`` key in the nested dicts and lists of ``node``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == 'num_classes':
                node[key] = num_classes
            else:
                _set_num_classes(value, num_classes)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _set_num_classes(value, num_classes)


def use_synthetic_data(cfg, data_root):
    """Point an mmseg or mmdet config at the synthetic data, in place.

    The config's ``default_scope`` picks the dataset: ``'mmseg'`` configs get
    :class:`SyntheticADE20KDataset` on ``<data_root>/ade/ADEChallengeData2016``,
    ``'mmdet'`` configs :class:`SyntheticCocoDataset` on ``<data_root>/coco``. Every
    train / val / test dataset (inside wrappers too) gets that ``type`` and
    ``data_root`` and keeps its pipeline, ``data_prefix`` and ``ann_file`` (the
    generator writes the stock layouts). Val / test metrics with an ``ann_file``
    (``CocoMetric``) read the annotation file of their split's dataset, and every
    ``num_classes`` in ``cfg.model`` (decode and auxiliary heads, each cascade stage's
    ``bbox_head``, ``mask_head``, ...) becomes the synthetic class count.

    Args:
        cfg (mmengine.Config): The config to change.
        data_root (str): The generator's ``--out`` folder (holding ``ade/`` and/or
            ``coco/``).

    Returns:
        mmengine.Config: ``cfg`` itself.

    Examples:
        >>> # after python tools/misc/generate_synthetic_data.py --out data
        >>> from mmengine.config import Config
        >>> from mmsparse.datasets.synthetic import use_synthetic_data
        >>> cfg = use_synthetic_data(Config.fromfile('configs/biformer/upernet_ade20k.py'), 'data')
        >>> cfg.train_dataloader.dataset.type, cfg.model.decode_head.num_classes
        ('mmsparse.SyntheticADE20KDataset', 7)
    """
    scope = cfg.get('default_scope')
    if scope not in _SCOPE_DATASETS:
        raise ValueError(f'cfg.default_scope must be one of {tuple(_SCOPE_DATASETS)} to pick the '
                         f'synthetic dataset, got {scope!r}')
    dataset_cls, name = _SCOPE_DATASETS[scope]
    root = osp.join(data_root, SYNTHETIC_ROOTS[name])
    if not osp.isdir(root):
        raise FileNotFoundError(f'data_root={data_root!r} holds no {SYNTHETIC_ROOTS[name]} folder; '
                                f'write it with python tools/misc/generate_synthetic_data.py '
                                f'--out {data_root} --datasets {name}')

    for split in ('train', 'val', 'test'):
        loader = cfg.get(f'{split}_dataloader')
        if loader is None:
            continue
        leaves = _leaf_datasets(loader['dataset'])
        for dataset in leaves:
            dataset['type'] = f'mmsparse.{dataset_cls.__name__}'
            dataset['data_root'] = root
        evaluator = cfg.get(f'{split}_evaluator')
        metrics = evaluator if isinstance(evaluator, list) else [evaluator]
        for metric in metrics:
            if metric is not None and 'ann_file' in metric:
                if len(leaves) != 1:
                    raise ValueError(f'cfg.{split}_evaluator has an ann_file, so cfg.{split}_dataloader '
                                     f'must hold one dataset to take it from, got {len(leaves)}')
                metric['ann_file'] = osp.join(root, leaves[0]['ann_file'])
    _set_num_classes(cfg.model, len(dataset_cls.METAINFO['classes']))
    return cfg
