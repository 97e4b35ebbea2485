"""Parameters and FLOPs of an mmseg or mmdet model, with the attention ops counted.

Usage::

    python tools/analysis_tools/get_flops.py CONFIG [--shape H W] [--cfg-options KEY=VALUE ...]
        [--max-rows N]

Builds ``cfg.model`` in the config's ``default_scope`` (``mmseg`` or ``mmdet``), traces
its tensor forward on one random ``3 x H x W`` image and prints the parameters and
FLOPs per module type, then the totals in the stock tools' format. Unlike the stock
``get_flops.py`` of mmseg 1.2.2 / mmdet 3.3 (MMEngine's analysis alone), the count
includes ``F.scaled_dot_product_attention`` and every ``mmsparse::`` op, from their
kept entries (:mod:`mmsparse.utils.complexity`); one multiply-add is one FLOP.

``--shape`` is ``H W`` or one side for a square image; by default the config's
``crop_size`` if it has one (mmseg configs), else 800 x 1333 (the COCO test scale).
A detector's data preprocessor pads the image to its size divisor first, as in
testing; the printed input shape is the padded one. SyncBN layers are converted to
BN, so any config runs on one CPU or GPU.
"""
import argparse
import importlib
import sys

import torch
from mmengine.analysis.print_helper import _format_size
from mmengine.config import Config, DictAction
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope

from mmsparse.utils.complexity import format_complexity_table, model_complexity
from mmsparse.utils.launch import import_mmsparse_models

DEFAULT_DETECTION_SHAPE = (800, 1333)
SPLIT_LINE = '=' * 30


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Parameters and FLOPs of an mmseg or mmdet model')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+',
                        help='input image size: H W, or one side for a square image (default: the '
                        "config's crop_size, else 800 1333)")
    parser.add_argument('--max-rows', type=int, default=None,
                        help='module types shown in the table (the ones with the most FLOPs); the '
                        'rest are folded into one row (default: all)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value pairs as in tools/train.py')
    args = parser.parse_args(argv)
    if args.shape is not None and (len(args.shape) not in (1, 2) or min(args.shape) < 1):
        parser.error(f'--shape {args.shape} must be H W or one side, positive')
    if args.max_rows is not None and args.max_rows < 1:
        parser.error(f'--max-rows {args.max_rows} must be positive')
    return args


def image_shape(cfg, shape=None):
    """``(H, W)`` to trace: ``shape`` (one or two ints), else the config's ``crop_size``, else 800 x 1333."""
    if shape:
        return (shape[0], shape[0]) if len(shape) == 1 else tuple(shape)
    crop = cfg.get('crop_size')
    return tuple(crop) if crop is not None else DEFAULT_DETECTION_SHAPE


def build_model(cfg):
    """The config's model in its codebase's scope, SyncBN converted to BN, on GPU if there is one."""
    scope = cfg.get('default_scope')
    if scope not in ('mmseg', 'mmdet'):
        raise ValueError(f"the config's default_scope={scope!r} must be 'mmseg' or 'mmdet'")
    init_default_scope(scope)
    import_mmsparse_models()
    registry = importlib.import_module(f'{scope}.registry')
    importlib.import_module(f'{scope}.models')  # registers the codebase's models
    model = revert_sync_batchnorm(registry.MODELS.build(cfg.model))
    return model.cuda() if torch.cuda.is_available() else model


def run(args):
    """Build and count; returns the :class:`~mmsparse.utils.complexity.ModelComplexity`."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    height, width = image_shape(cfg, args.shape)
    return model_complexity(build_model(cfg), (3, height, width))


def report(result, max_rows=None):
    """The table and the totals, in the stock tools' format, as one string."""
    requested, traced = result.input_shape[1:], tuple(result.traced_shape[2:])
    lines = [format_complexity_table(result, max_rows)]
    if traced != requested:
        lines.append(f'{SPLIT_LINE}\nUse size divisor set input shape from {requested} to {traced}')
    lines += [
        SPLIT_LINE,
        'Compute type: direct: randomly generate a picture',
        f'Input shape: {traced}',
        f'Flops: {_format_size(result.flops)} ({result.flops} FLOPs, one multiply-add = 1 FLOP)',
        f'Params: {_format_size(result.params)} ({result.params})',
        SPLIT_LINE,
    ]
    if result.unsupported_ops:
        lines.append('Ops counted as 0 (elementwise or without a handle): ' +
                     ', '.join(sorted(result.unsupported_ops)))
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    print(report(run(args), args.max_rows))
    return 0


if __name__ == '__main__':
    sys.exit(main())
