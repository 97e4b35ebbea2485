"""Pixel confusion matrix of saved segmentation predictions against a config's test set.

Reads the PNG label maps that ``tools/test.py CONFIG CKPT --out PRED_DIR`` writes
(mmseg's ``IoUMetric(output_dir=..., keep_results=True)``: one ``<image basename>.png``
per test image) and compares them with the ground truth that the config's
``test_dataloader.dataset`` pipeline yields::

    python tools/analysis_tools/confusion_matrix.py CONFIG PRED_DIR --out cm.png \\
        [--csv cm.csv] [--normalize] [--cfg-options KEY=VALUE ...]

Rows are ground-truth classes, columns predicted classes, ``n = len(classes)`` of the
dataset's ``metainfo``. Differences from mmseg's stock ``confusion_matrix.py``:

* Label spaces. The pipeline's ``LoadAnnotations(reduce_zero_label=True)`` has already
  reduced the ground truth (raw ``k`` -> class ``k - 1``, raw 0 -> ``ignore_index``),
  so the ground truth is used as the pipeline yields it (the stock tool subtracts 1
  again, open-mmlab/mmsegmentation#1687). ``IoUMetric`` saves ``prediction + 1`` for
  samples with ``reduce_zero_label``, i.e. in the raw annotation space, so those
  prediction files are mapped back with ``- 1`` (raw 0 -> ignored). Ground-truth pixels
  equal to ``ignore_index`` (255) and ignored predictions are left out of the matrix.
* Nothing is resized: a prediction whose shape differs from its ground truth is an error.
* The figure is at most 30 x 30 inches at dpi 100 (``min(0.5 * n + 2, 30)`` inches), so
  ADE20K's 150 classes fit in memory; counts (or row percentages with ``--normalize``)
  are written in the cells only when ``n <= 30``. Cell colours are always the
  row-normalised fractions, so frequent classes do not wash out the rest.
* ``--csv`` writes the raw int64 counts (header row and first column: class names).
"""
import argparse
import csv
import os
import os.path as osp
import sys

import numpy as np

#: Largest figure side in inches; at ``DPI`` this bounds the PNG to 3000 x 3000 pixels.
MAX_FIG_INCHES = 30
DPI = 100
#: Largest class count whose cells get their value written in them.
MAX_ANNOTATED = 30


def parse_args(argv=None):
    from mmengine.config import DictAction

    parser = argparse.ArgumentParser(
        description='Pixel confusion matrix (rows: ground truth, columns: prediction) of the PNG '
        'label maps written by tools/test.py --out, against the config\'s test set.')
    parser.add_argument('config', help='the mmseg config whose test_dataloader.dataset holds the ground truth')
    parser.add_argument('pred_dir', help='folder of <image basename>.png predictions (tools/test.py --out)')
    parser.add_argument('--out', required=True, help='the confusion-matrix figure to write (a .png file)')
    parser.add_argument('--csv', help='also write the int64 counts to this .csv file')
    parser.add_argument('--normalize', action='store_true',
                        help='write row-normalised percentages instead of counts in the figure cells')
    parser.add_argument('--title', default=None, help='figure title (default: "Confusion matrix" + dataset)')
    parser.add_argument('--cmap', default='Blues', help='matplotlib colour map of the cells (default: Blues)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override config settings, KEY=VALUE pairs merged into the config, e.g. '
        'test_dataloader.dataset.data_root=data/ade/ADEChallengeData2016')
    args = parser.parse_args(argv)

    if not osp.isfile(args.config):
        parser.error(f'CONFIG: {args.config!r} is not a file; pass an mmseg config (.py)')
    if not osp.isdir(args.pred_dir):
        parser.error(f'PRED_DIR: {args.pred_dir!r} is not a folder; pass the folder that '
                     f'tools/test.py CONFIG CKPT --out PRED_DIR wrote')
    if osp.splitext(args.out)[1].lower() != '.png':
        parser.error(f'--out: {args.out!r} must end in .png')
    if args.csv is not None and osp.splitext(args.csv)[1].lower() != '.csv':
        parser.error(f'--csv: {args.csv!r} must end in .csv')
    import matplotlib
    if args.cmap not in matplotlib.colormaps:
        parser.error(f'--cmap: {args.cmap!r} is not a matplotlib colour map, e.g. Blues, viridis, winter')
    return args


def build_dataset(cfg):
    """Build ``cfg.test_dataloader.dataset`` in the config's default scope."""
    from mmengine.registry import init_default_scope

    import mmsparse.datasets  # noqa: F401  (registers mmsparse dataset types and transforms)
    import mmsparse.models  # noqa: F401
    from mmseg.registry import DATASETS

    loader = cfg.get('test_dataloader')
    if loader is None or loader.get('dataset') is None:
        raise ValueError('CONFIG: the config has no test_dataloader.dataset to take the ground truth from')
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    return DATASETS.build(loader['dataset'])


def load_prediction(path):
    """Read a saved label map as a 2-D array."""
    from PIL import Image

    with Image.open(path) as img:
        pred = np.array(img)
    if pred.ndim != 2:
        raise ValueError(f'prediction {path} has shape {pred.shape}; expected a single-channel label map '
                         f'(the PNGs tools/test.py --out writes)')
    return pred


def to_class_space(pred, reduce_zero_label, num_classes, ignore_index, path):
    """Map a saved prediction to class indices; ignored pixels become -1.

    With ``reduce_zero_label`` the file holds ``class + 1`` and, like ``LoadAnnotations``
    does for the ground truth, raw 0 and raw ``ignore_index`` are ignored. Any value
    outside the classes (other than ignore) is an error naming the file.
    """
    cls = pred.astype(np.int64)
    if reduce_zero_label:
        ignored = (cls == 0) | (cls == ignore_index)
        cls = cls - 1
    else:
        ignored = cls == ignore_index
    cls[ignored] = -1
    bad = (cls >= num_classes) | (cls < -1)
    if bad.any():
        raw = np.unique(pred[bad])
        space = 'class + 1, i.e. 0..{}'.format(num_classes) if reduce_zero_label else f'0..{num_classes - 1}'
        raise ValueError(f'prediction {path} holds values {raw.tolist()[:10]} outside the {num_classes} classes '
                         f'(allowed: {space}, or {ignore_index} for ignore)')
    return cls


def accumulate(matrix, gt, pred_cls, ignore_index, num_classes, path):
    """Add the pixels of one image to ``matrix`` (in place); returns the valid-GT pixels
    that had no prediction."""
    gt = gt.astype(np.int64).ravel()
    pred_cls = pred_cls.ravel()
    valid = gt != ignore_index
    bad = valid & ((gt < 0) | (gt >= num_classes))
    if bad.any():
        raise ValueError(f'ground truth of {path} holds values {np.unique(gt[bad]).tolist()[:10]} outside the '
                         f'{num_classes} classes (and ignore_index={ignore_index}); check the '
                         f'config\'s reduce_zero_label and the dataset classes')
    unpredicted = int((valid & (pred_cls < 0)).sum())
    keep = valid & (pred_cls >= 0)
    matrix += np.bincount(gt[keep] * num_classes + pred_cls[keep],
                          minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    return unpredicted


def compute_confusion_matrix(dataset, pred_dir, num_classes, progress=True):
    """Accumulate the (n, n) int64 matrix over ``dataset``; rows GT, columns prediction.

    Returns:
        tuple[np.ndarray, int]: the matrix and the number of labelled ground-truth
        pixels whose prediction was ignored (left out of the matrix).
    """
    from mmengine.utils import ProgressBar

    ignore_index = getattr(dataset, 'ignore_index', 255)
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    unpredicted = 0
    bar = ProgressBar(len(dataset), file=sys.stderr) if progress else None
    for idx in range(len(dataset)):
        sample = dataset[idx]['data_samples']
        img_path = sample.metainfo['img_path']
        name = osp.splitext(osp.basename(img_path))[0] + '.png'
        path = osp.join(pred_dir, name)
        if not osp.isfile(path):
            raise FileNotFoundError(f'no prediction {name} for test image {img_path} in PRED_DIR {pred_dir} '
                                    f'(expected {path}); write the predictions with '
                                    f'tools/test.py CONFIG CKPT --out {pred_dir}')
        gt = sample.gt_sem_seg.data.squeeze(0).cpu().numpy()
        pred = load_prediction(path)
        if pred.shape != gt.shape:
            raise ValueError(f'prediction {path} has shape {tuple(pred.shape)} but the ground truth of '
                             f'{img_path} has shape {tuple(gt.shape)}; nothing is resized, the '
                             f'predictions must be at the original image size')
        reduce_zero_label = bool(sample.metainfo.get('reduce_zero_label', False))
        pred_cls = to_class_space(pred, reduce_zero_label, num_classes, ignore_index, path)
        unpredicted += accumulate(matrix, gt, pred_cls, ignore_index, num_classes, path)
        if bar is not None:
            bar.update()
    if bar is not None:
        sys.stderr.write('\n')
    return matrix, unpredicted


def row_normalize(matrix):
    """Row fractions (each GT class sums to 1; rows without pixels stay 0)."""
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros(matrix.shape, dtype=np.float64), where=sums > 0)


def write_csv(matrix, classes, path):
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['gt\\pred'] + list(classes))
        for name, row in zip(classes, matrix):
            writer.writerow([name] + [int(v) for v in row])


def plot_confusion_matrix(matrix, classes, path, normalize=False, title='Confusion matrix', cmap='Blues'):
    """Draw the matrix into ``path`` with a bounded figure size."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    n = len(classes)
    side = min(0.5 * n + 2, MAX_FIG_INCHES)
    fractions = row_normalize(matrix)
    # points per cell along an axis, to size the tick labels and cell texts
    cell_pt = 72 * (side * 0.7) / max(n, 1)
    label_size = max(3., min(10., 0.8 * cell_pt))

    fig, ax = plt.subplots(figsize=(side, side), dpi=DPI)
    try:
        im = ax.imshow(fractions, cmap=cmap, vmin=0., vmax=1., interpolation='nearest')
        cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        cbar.set_label('fraction of the ground-truth row')
        ax.set_xticks(np.arange(n))
        ax.set_yticks(np.arange(n))
        ax.set_xticklabels(classes, rotation=90, fontsize=label_size)
        ax.set_yticklabels(classes, fontsize=label_size)
        ax.set_xlabel('prediction')
        ax.set_ylabel('ground truth')
        ax.set_title(title)
        if n <= MAX_ANNOTATED:
            text_size = max(3., min(9., 0.3 * cell_pt))
            for i in range(n):
                for j in range(n):
                    value = f'{100 * fractions[i, j]:.1f}' if normalize else str(int(matrix[i, j]))
                    ax.text(j, i, value, ha='center', va='center', fontsize=text_size,
                            color='white' if fractions[i, j] > 0.5 else 'black')
        fig.tight_layout()
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=DPI)  # no bbox_inches='tight': the size stays side x side inches
    finally:
        plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    dataset = build_dataset(cfg)
    classes = tuple(dataset.metainfo['classes'])
    matrix, unpredicted = compute_confusion_matrix(dataset, args.pred_dir, len(classes))

    title = args.title or f'Confusion matrix ({type(dataset).__name__}, {len(dataset)} images)'
    plot_confusion_matrix(matrix, classes, args.out, normalize=args.normalize, title=title, cmap=args.cmap)
    print(f'confusion matrix ({len(classes)} classes, {int(matrix.sum())} pixels) written to {args.out}')
    if args.csv:
        write_csv(matrix, classes, args.csv)
        print(f'counts written to {args.csv}')
    if unpredicted:
        print(f'note: {unpredicted} labelled pixels had an ignored prediction and are not in the matrix')
    return matrix


if __name__ == '__main__':
    main()
