"""What ``tools/train.py`` and ``tools/test.py`` share: argument parsing, config
preparation and runner construction.

One pair of scripts serves mmdet and mmseg configs alike: the codebase is chosen
by the config's ``default_scope``, so nothing here imports mmdet or mmseg.
"""
import argparse
import importlib
import logging
import os
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.registry import RUNNERS, init_default_scope
from mmengine.runner import Runner

from .checkpoint import install_safe_checkpoint_loading

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def _base_parser(description):
    """Return a parser with the arguments common to training and testing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('config', help='config file path (an mmdet or mmseg config)')
    parser.add_argument(
        '--work-dir',
        help='directory for logs and checkpoints; defaults to the config\'s work_dir, '
        'else ./work_dirs/<config name>')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as key=value pairs merged into it; '
        'a list is written key="[a,b]" or key=a,b, nested tuples key="[(a,b),(c,d)]" '
        '(quotes needed, no white space)')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return parser


def _set_local_rank(args):
    """Export ``LOCAL_RANK`` for MMEngine unless the launcher already did."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)


def parse_train_args(argv=None):
    """Parse the command line of ``tools/train.py``.

    Args:
        argv (list[str], optional): Arguments without the program name.
            Defaults to ``sys.argv[1:]``.

    Returns:
        argparse.Namespace: ``config``, ``work_dir``, ``amp``, ``resume``,
        ``cfg_options``, ``launcher``, ``local_rank``.
    """
    parser = _base_parser('Train an mmdet or mmseg model')
    parser.add_argument(
        '--amp', action='store_true', help='automatic mixed precision (needs a CUDA GPU)')
    parser.add_argument(
        '--resume',
        nargs='?',
        const='auto',
        help='resume from this checkpoint, or without a value from the latest '
        'checkpoint in the work directory')
    args = parser.parse_args(argv)
    # AmpOptimWrapper asserts a GPU only once the runner is built; fail before
    # any config loading, with the flag to drop in the message.
    if args.amp and not torch.cuda.is_available():
        parser.error('--amp needs a CUDA GPU (AmpOptimWrapper) and none is available; '
                     'drop --amp to train in fp32')
    _set_local_rank(args)
    return args


def parse_test_args(argv=None):
    """Parse the command line of ``tools/test.py``.

    Args:
        argv (list[str], optional): Arguments without the program name.
            Defaults to ``sys.argv[1:]``.

    Returns:
        argparse.Namespace: ``config``, ``checkpoint``, ``work_dir``, ``out``,
        ``show_dir``, ``cfg_options``, ``launcher``, ``local_rank``.
    """
    parser = _base_parser('Test (and evaluate) an mmdet or mmseg model')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--out',
        help='save the predictions, as the config\'s codebase does: for mmseg configs a '
        'directory of predicted label maps (PNG), for mmdet configs a .pkl/.pickle file of '
        'the raw results')
    parser.add_argument(
        '--show-dir',
        help='save painted predictions here (through the config\'s VisualizationHook)')
    args = parser.parse_args(argv)
    _set_local_rank(args)
    return args


def import_mmsparse_models():
    """Import ``mmsparse.models`` to register its modules, if it exists.

    Only a missing ``mmsparse.models`` itself is tolerated (the scripts then run
    stock mmdet/mmseg configs); a failing import inside it is re-raised.

    Returns:
        bool: Whether ``mmsparse.models`` was imported.
    """
    try:
        importlib.import_module('mmsparse.models')
    except ModuleNotFoundError as error:
        if error.name != 'mmsparse.models':
            raise
        print_log('mmsparse.models is not available; only stock modules are registered',
                  logger='current', level=logging.WARNING)
        return False
    return True


def _load_config(path):
    """``Config.fromfile`` that turns a missing ``pkg_resources`` into one actionable line."""
    try:
        return Config.fromfile(path)
    except ModuleNotFoundError as error:
        if error.name != 'pkg_resources':
            raise
        sys.exit(f'error: loading {path} needs pkg_resources (mmengine resolves mmdet::/mmseg:: '
                 f'base configs with it), which setuptools>=82 no longer ships; run: '
                 f'{sys.executable} -m pip install "setuptools<82"')


def sync_bn_to_bn(cfg_node):
    """Replace every ``type='SyncBN'`` norm in a config subtree by ``'BN'``, in place.

    Args:
        cfg_node (dict | list): A config subtree, e.g. ``cfg.model``.

    Returns:
        int: How many norms were replaced.
    """
    replaced = 0
    children = cfg_node.values() if isinstance(cfg_node, dict) else cfg_node
    if isinstance(cfg_node, dict) and cfg_node.get('type') == 'SyncBN':
        cfg_node['type'] = 'BN'
        replaced += 1
    for child in children:
        if isinstance(child, (dict, list, tuple)):
            replaced += sync_bn_to_bn(child)
    return replaced


def _adapt_cpu_distributed(cfg):
    """Let ``--launcher`` run on CPU processes (gloo) when there is no CUDA.

    MMEngine assumes GPUs for distributed runs: NCCL by default, DDP with
    ``device_ids=[LOCAL_RANK]`` (rejected for CPU modules) and an unconditional
    ``torch.cuda.set_device`` (fails on CPU-only torch builds). ``SyncBatchNorm``
    works only on GPU modules, so the model's SyncBN layers become BN: each process
    then normalises with its own batch statistics, as single-process runs do.
    """
    replaced = sync_bn_to_bn(cfg.get('model', {}))
    # Once per run, not per process: the process group does not exist yet, the
    # launcher's RANK does.
    if replaced and os.environ.get('RANK', '0') == '0':
        print_log(f'no CUDA: {replaced} SyncBN norm config(s) of the model train as BN '
                  '(SyncBatchNorm needs GPU modules)', logger='current', level=logging.WARNING)
    # Config.setdefault stores a copy of the default, so assign explicitly.
    if 'env_cfg' not in cfg:
        cfg.env_cfg = {}
    cfg.env_cfg.dist_cfg = {**cfg.env_cfg.get('dist_cfg', {}), 'backend': 'gloo'}
    # A custom model_wrapper_cfg makes MMEngine ignore cfg.find_unused_parameters,
    # so carry it over.
    cfg.model_wrapper_cfg = dict(
        type='MMDistributedDataParallel',
        device_ids=None,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    torch.cuda.set_device = lambda device: None


def _prepare_cfg(args):
    """Load the config and apply the steps shared by training and testing."""
    cfg = _load_config(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    cfg.launcher = args.launcher
    # work_dir priority: command line > config > config file name
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    import_mmsparse_models()
    install_safe_checkpoint_loading()
    if cfg.launcher != 'none' and not torch.cuda.is_available():
        _adapt_cpu_distributed(cfg)
    return cfg


def prepare_train_cfg(args):
    """Return the training config for the arguments of :func:`parse_train_args`.

    Besides the shared steps (config options, ``work_dir``, default scope,
    ``mmsparse.models``, safe checkpoint loading, CPU-distributed settings): adds
    ``mmsparse.RNGStateHook`` (random states in checkpoints, restored on resume);
    ``--amp`` switches to ``AmpOptimWrapper`` with dynamic loss scaling;
    ``--resume CKPT`` resumes from ``CKPT``, bare ``--resume`` from the latest
    checkpoint in ``work_dir``.

    Args:
        args (argparse.Namespace): Parsed ``tools/train.py`` arguments.

    Returns:
        mmengine.Config: The config to build the runner from.
    """
    cfg = _prepare_cfg(args)
    # Checkpoints carry every rank's random states, so --resume continues exactly.
    hooks = cfg.get('custom_hooks') or []
    if not any(hook.get('type') in ('RNGStateHook', 'mmsparse.RNGStateHook') for hook in hooks):
        cfg.custom_hooks = hooks + [dict(type='mmsparse.RNGStateHook')]
    if args.amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def prepare_test_cfg(args):
    """Return the testing config for the arguments of :func:`parse_test_args`.

    Besides the shared steps: loads ``args.checkpoint``; with ``--out`` on an mmseg
    config, saves the predicted label maps to that directory (mmseg's
    ``IoUMetric(output_dir=..., keep_results=True)``, as mmseg's own ``test.py``);
    with ``--show-dir``, turns on drawing in the config's ``visualization`` hook and
    saves there. (An mmdet ``--out`` file is added to the built runner by
    :func:`add_result_dump`.)

    Args:
        args (argparse.Namespace): Parsed ``tools/test.py`` arguments.

    Returns:
        mmengine.Config: The config to build the runner from.
    """
    cfg = _prepare_cfg(args)
    cfg.load_from = args.checkpoint
    if args.out is not None and cfg.get('default_scope') == 'mmseg':
        cfg.test_evaluator['output_dir'] = args.out
        cfg.test_evaluator['keep_results'] = True
    elif args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        sys.exit(f'error: --out must be a .pkl or .pickle file for a '
                 f'{cfg.get("default_scope", "mmengine")} config (only mmseg configs take a '
                 f'directory), got {args.out}')
    if args.show_dir is not None:
        if 'visualization' not in cfg.get('default_hooks', {}):
            raise RuntimeError('--show-dir needs default_hooks.visualization in the config, '
                               'e.g. visualization=dict(type=\'DetVisualizationHook\')')
        cfg.default_hooks.visualization.draw = True
        cfg.visualizer.save_dir = args.show_dir
    return cfg


def add_result_dump(runner, cfg, out):
    """Dump the raw test results of a non-mmseg config to the pickle file ``out``.

    mmdet configs get mmdet's ``DumpDetResults`` (masks encoded as RLE), as mmdet's
    own ``test.py`` does; others MMEngine's ``DumpResults``. Called on the built
    runner: its test evaluator exists only then.
    """
    if cfg.get('default_scope') == 'mmdet':
        from mmdet.evaluation import DumpDetResults as dump_type
    else:
        from mmengine.evaluator import DumpResults as dump_type
    runner.test_evaluator.metrics.append(dump_type(out_file_path=out))


def build_runner(cfg):
    """Build the runner: ``RUNNERS.build`` when the config names a
    ``runner_type``, else MMEngine's ``Runner``."""
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


__all__ = [
    'parse_train_args', 'parse_test_args', 'prepare_train_cfg', 'prepare_test_cfg',
    'build_runner', 'import_mmsparse_models', 'add_result_dump', 'sync_bn_to_bn'
]
