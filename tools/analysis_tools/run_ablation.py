"""Train, test and measure a grid of attention-ablation configs, one child after another.

Usage::

    python tools/analysis_tools/run_ablation.py CHILD_CONFIG [CHILD_CONFIG ...] --work-dir DIR
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch}] [--gpus N]
        [--input-shape H W] [--warmup N] [--iters N]

    # e.g. every UperNet child of configs/ablations on 8 GPUs
    python tools/analysis_tools/run_ablation.py configs/ablations/upernet_sparse-t-*.py \\
        --work-dir work_dirs/ablation_upernet --launcher pytorch --gpus 8

For each child, in the order given, in ``DIR/<config name>/``:

1. train with ``tools/train.py`` (``--launcher pytorch``: ``tools/dist_train.sh`` on
   ``--gpus`` processes); the output goes to ``train.log``. A child whose training was
   interrupted (a ``last_checkpoint`` but no ``train.done``) resumes with ``--resume``;
2. test the last checkpoint with ``tools/test.py`` (``tools/dist_test.sh``) into ``test/``
   (``test.log``) and read the metric from the test's JSON log: ``mIoU`` for mmseg
   configs, ``coco/bbox_mAP`` for mmdet ones (reported in percent, like ``mIoU``);
3. measure the backbone (``model.backbone`` of the config) in a fresh interpreter on
   this machine's device (CUDA if available, else CPU): ``params``, ``flops``
   (``mmsparse.utils.complexity.model_complexity``), ``latency_ms`` (median of
   ``--iters`` forwards of one image after ``--warmup``, under ``torch.no_grad``) and
   ``peak_memory_mb``: the memory the forward needs above what the built model and
   its input hold, over all the forwards: ``torch.cuda.max_memory_allocated`` minus
   the allocation before the first forward on CUDA; on CPU the peak resident set size
   (``VmHWM``, reset through ``/proc/self/clear_refs`` before the forwards) minus the
   resident set size before them;
4. write the row to ``result.json``: the marker of a finished child.

A child with a ``result.json`` is skipped, so an interrupted grid restarts where it
stopped; the markers remember the ``--cfg-options`` they were made with and a rerun with
other options is refused (use another ``--work-dir``). ``--cfg-options`` reach the
training, the test and the measurement alike. The measured input is one image of the
test size: ``model.data_preprocessor.size`` (the crop) for mmseg, the ``Resize`` scale of
the test pipeline rounded up to ``pad_size_divisor`` for mmdet, unless ``--input-shape``
is given.

Then ``DIR/results.csv`` gets one row per child (columns :data:`COLUMNS`; ``attention`` is
the ``<attention>`` of a ``*_sparse-<arch>-<attention>_*`` config name) and
``DIR/results.png`` the metric against the backbone's GFLOPs, one labelled point per
child and one colour per task (the part of the config name before ``_sparse``).
"""
import argparse
import csv
import glob
import json
import math
import os
import os.path as osp
import re
import resource
import statistics
import subprocess
import sys
import time

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
COLUMNS = ('attention', 'config', 'params', 'flops', 'latency_ms', 'peak_memory_mb', 'metric_name',
           'metric')
LAUNCHERS = ('none', 'pytorch')
# default scope -> (metric_name column, key in the test's JSON log, factor to percent)
METRICS = {'mmseg': ('mIoU', 'mIoU', 1.), 'mmdet': ('bbox_mAP', 'coco/bbox_mAP', 100.)}
NAME_PATTERN = re.compile(r'_sparse-[a-z0-9]+-(?P<attention>[a-z0-9]+)_')
TASK_PATTERN = re.compile(r'^(?P<task>.+?)_sparse-')
RESULT_FILE, TRAIN_DONE, MEASURE_TAG = 'result.json', 'train.done', 'ABLATION_MEASUREMENT '


def config_name(config):
    """The file name of ``config`` without ``.py``: the child's folder under the work dir."""
    return osp.splitext(osp.basename(config))[0]


def attention_name(config):
    """The ``<attention>`` of a ``*_sparse-<arch>-<attention>_*`` config name.

    Args:
        config (str): Path of a child config, e.g.
            ``configs/ablations/upernet_sparse-t-bra_8xb2-160k_ade20k-512x512.py``.

    Returns:
        str: e.g. ``'bra'``.
    """
    match = NAME_PATTERN.search(osp.basename(config))
    if match is None:
        raise ValueError(f'config={config!r} is not named *_sparse-<arch>-<attention>_*.py, so it '
                         f'names no attention (e.g. upernet_sparse-t-bra_8xb2-160k_ade20k-512x512.py)')
    return match.group('attention')


def task_name(config):
    """The part of the config name before ``_sparse`` (e.g. ``'upernet'``), else the name."""
    match = TASK_PATTERN.search(osp.basename(config))
    return match.group('task') if match else config_name(config)


def parse_cfg_options(options):
    """``KEY=VALUE`` strings as the dict that ``--cfg-options`` of tools/train.py merges."""
    from mmengine.config import DictAction
    namespace = argparse.Namespace(cfg_options=None)
    if options:
        DictAction(option_strings=['--cfg-options'], dest='cfg_options')(None, namespace, options)
    return namespace.cfg_options or {}


def load_config(config, options):
    """``config`` with the ``--cfg-options`` strings ``options`` merged in."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(parse_cfg_options(options))
    return cfg


def default_input_shape(cfg):
    """The (H, W) of one test image of ``cfg``: the crop (mmseg) or the padded test scale (mmdet)."""
    if cfg.get('default_scope') == 'mmseg':
        size = cfg.model.data_preprocessor.get('size')
        if size is None:
            raise ValueError('the mmseg config has no model.data_preprocessor.size (the crop); '
                             'pass --input-shape H W')
        return tuple(size)
    pipeline = cfg.test_dataloader.dataset.pipeline
    scales = [t['scale'] for t in pipeline if t.get('type', '').endswith('Resize') and 'scale' in t]
    if not scales:
        raise ValueError('the test pipeline has no Resize with a scale; pass --input-shape H W')
    width, height = scales[0]  # mmcv scales are (w, h); keep_ratio fits the image inside
    divisor = cfg.model.data_preprocessor.get('pad_size_divisor', 1)
    return tuple(divisor * math.ceil(side / divisor) for side in (height, width))


def measure_backbone(config, options, input_shape=None, warmup=2, iters=5):
    """Build ``model.backbone`` of ``config`` and measure it on one image.

    Run it in a fresh interpreter (as :func:`run_child` does): on CPU the peak memory is
    read from the process's resident set size, which earlier work in the process distorts.

    Args:
        config (str): Path of the config.
        options (list[str]): ``--cfg-options`` strings merged into it.
        input_shape (tuple[int, int], optional): (H, W) of the image. Defaults to
            :func:`default_input_shape`.
        warmup (int): Untimed forwards first. Defaults to 2.
        iters (int): Timed forwards; the latency is their median. Defaults to 5.

    Returns:
        dict: ``params``, ``flops``, ``latency_ms``, ``peak_memory_mb``.
    """
    import torch
    from mmengine.registry import MODELS, init_default_scope

    from mmsparse.utils.complexity import model_complexity

    cfg = load_config(config, options)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    height, width = input_shape or default_input_shape(cfg)
    device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    backbone = MODELS.build(cfg.model.backbone).to(device).eval()
    image = torch.randn(1, 3, height, width, device=device)

    def forward():
        with torch.no_grad():
            backbone(image)
        if device.type == 'cuda':
            torch.cuda.synchronize()

    # The forwards run before the FLOP count's trace, whose freed memory would stay resident
    # and hide the forwards' own from the resident set size.
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _reset_peak_rss()
    times = []
    for i in range(warmup + iters):
        start = time.perf_counter()
        forward()
        if i >= warmup:
            times.append(1000 * (time.perf_counter() - start))
    peak = (torch.cuda.max_memory_allocated() if device.type == 'cuda' else _peak_rss()) - before
    complexity = model_complexity(backbone, (3, height, width))
    return dict(params=int(complexity.params), flops=int(complexity.flops),
                latency_ms=round(statistics.median(times), 3),
                peak_memory_mb=round(max(peak, 0) / 2**20, 1))


def _proc_status_bytes(key):
    """The ``key`` line (``VmRSS``, ``VmHWM``, in kB) of /proc/self/status, in bytes."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return 1024 * int(line.split()[1])
    raise KeyError(f'{key} not in /proc/self/status')


def _reset_peak_rss():
    """Reset the peak resident set size to the current one; return the current one (bytes).

    Linux resets the peak (``VmHWM``) when ``5`` is written to ``/proc/self/clear_refs``.
    Elsewhere the peak cannot be reset: the growth of ``ru_maxrss`` is used, which is 0
    when earlier work (imports, the build) peaked higher than the forwards.
    """
    if osp.exists('/proc/self/clear_refs'):
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return _proc_status_bytes('VmRSS')
    return _peak_rss()


def _peak_rss():
    """The peak resident set size of this process in bytes."""
    if osp.exists('/proc/self/status'):
        return _proc_status_bytes('VmHWM')
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _run_logged(cmd, log_path):
    """Run ``cmd`` from the repository root with its output in ``log_path``; raise if it fails."""
    with open(log_path, 'a') as log:
        log.write(f'$ {" ".join(map(str, cmd))}\n')
        log.flush()
        result = subprocess.run([str(c) for c in cmd], cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        with open(log_path) as log:
            tail = log.read()[-3000:]
        raise RuntimeError(f'{cmd[0]} {cmd[1]} exited with {result.returncode}; end of {log_path}:\n{tail}')


def _read_text(path):
    with open(path) as f:
        return f.read().strip()


def _tool_cmd(args, tool, *positional):
    """The command line of ``tools/<tool>.py`` (or its ``dist_<tool>.sh`` under ``--launcher pytorch``)."""
    if args.launcher == 'pytorch':
        return ['bash', osp.join(REPO_ROOT, 'tools', f'dist_{tool}.sh'), *positional, args.gpus]
    return [sys.executable, osp.join(REPO_ROOT, 'tools', f'{tool}.py'), *positional]


def _with_options(cmd, options):
    return cmd + ['--cfg-options', *options] if options else cmd


def read_test_metric(test_dir, scope):
    """The metric (in percent) of the newest test run's JSON log under ``test_dir``."""
    name, key, factor = METRICS[scope]
    logs = sorted(glob.glob(osp.join(test_dir, '*', '*.json')), key=osp.getmtime)
    if not logs:
        raise FileNotFoundError(f'no test log (<timestamp>/<timestamp>.json) under {test_dir}')
    with open(logs[-1]) as f:
        metrics = json.load(f)
    if key not in metrics:
        raise KeyError(f'{key} not among the metrics {sorted(metrics)} of {logs[-1]}')
    return name, round(factor * metrics[key], 2)


def run_child(config, args):
    """Train, test and measure one child in ``<work_dir>/<config name>``; return its row.

    Returns:
        tuple[dict, str]: The row and what was done: ``'skipped'`` (``result.json``
        existed), ``'resumed'`` or ``'trained'``.
    """
    child_dir = osp.join(args.work_dir, config_name(config))
    result_path = osp.join(child_dir, RESULT_FILE)
    if osp.isfile(result_path):
        with open(result_path) as f:
            result = json.load(f)
        if result['cfg_options'] != args.cfg_options:
            raise ValueError(f'{result_path} was written with --cfg-options {result["cfg_options"]}, '
                             f'not {args.cfg_options}; use another --work-dir or delete {child_dir}')
        return result['row'], 'skipped'
    os.makedirs(child_dir, exist_ok=True)
    cfg = load_config(config, args.cfg_options)
    scope = cfg.get('default_scope')
    if scope not in METRICS:
        raise ValueError(f'{config} has default_scope={scope!r}; the runner scores {tuple(METRICS)} configs')

    done_path = osp.join(child_dir, TRAIN_DONE)
    status = 'trained'
    if not osp.isfile(done_path):
        cmd = _tool_cmd(args, 'train', config) + ['--work-dir', child_dir]
        if osp.isfile(osp.join(child_dir, 'last_checkpoint')):
            cmd.append('--resume')  # an earlier run stopped after a checkpoint
            status = 'resumed'
        _run_logged(_with_options(cmd, args.cfg_options), osp.join(child_dir, 'train.log'))
        with open(done_path, 'w') as f:
            f.write(_read_text(osp.join(child_dir, 'last_checkpoint')))
    checkpoint = _read_text(done_path)

    test_dir = osp.join(child_dir, 'test')
    cmd = _tool_cmd(args, 'test', config, checkpoint) + ['--work-dir', test_dir]
    _run_logged(_with_options(cmd, args.cfg_options), osp.join(child_dir, 'test.log'))
    metric_name, metric = read_test_metric(test_dir, scope)

    measure_cmd = [sys.executable, osp.abspath(__file__), config, '--work-dir', args.work_dir, '--measure',
                   '--warmup', args.warmup, '--iters', args.iters]
    if args.input_shape:
        measure_cmd += ['--input-shape', *args.input_shape]
    log_path = osp.join(child_dir, 'measure.log')
    _run_logged(_with_options(measure_cmd, args.cfg_options), log_path)
    measured = json.loads(_read_text(log_path).rsplit(MEASURE_TAG, 1)[1].splitlines()[0])

    row = dict(attention=attention_name(config), config=config,
               **measured, metric_name=metric_name, metric=metric)
    with open(result_path, 'w') as f:
        json.dump(dict(row=row, cfg_options=args.cfg_options, checkpoint=checkpoint), f, indent=2)
    return row, status


def write_csv(rows, path):
    """Write ``rows`` (dicts with the keys :data:`COLUMNS`) to the CSV ``path``."""
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows, path):
    """Scatter the metric against the backbone's GFLOPs: one labelled point per row, a colour per task.

    The figure is 6.4 x 4.8 inches at 100 dpi: a 640 x 480 PNG.
    """
    import matplotlib
    matplotlib.use('Agg')  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.8), dpi=100)
    tasks = sorted({task_name(row['config']) for row in rows})
    for task in tasks:
        points = [row for row in rows if task_name(row['config']) == task]
        ax.scatter([row['flops'] / 1e9 for row in points], [row['metric'] for row in points], label=task)
        for row in points:
            ax.annotate(row['attention'], (row['flops'] / 1e9, row['metric']), textcoords='offset points',
                        xytext=(4, 4), fontsize=8)
    ax.set_xlabel('backbone GFLOPs')
    ax.set_ylabel(' / '.join(sorted({row['metric_name'] for row in rows})))
    ax.set_title('attention ablation')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args):
    """Run the grid of ``args.configs``; write ``results.csv`` and ``results.png``; return the rows."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    os.makedirs(args.work_dir, exist_ok=True)
    rows = []
    columns = (TextColumn('{task.description}'), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn('ETA'), TimeRemainingColumn())
    with Progress(*columns) as progress:
        grid = progress.add_task('ablation', total=len(args.configs))
        for config in args.configs:
            progress.update(grid, description=config_name(config))
            row, status = run_child(config, args)
            progress.console.print(f'{status}: {config_name(config)} {row["metric_name"]}={row["metric"]}')
            rows.append(row)
            progress.advance(grid)
    write_csv(rows, osp.join(args.work_dir, 'results.csv'))
    plot(rows, osp.join(args.work_dir, 'results.png'))
    return rows


def _int_at_least(minimum):
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f'invalid value {text!r}: must be an integer >= {minimum}')
        return value
    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train, test and measure attention-ablation configs.')
    parser.add_argument('configs', nargs='+', metavar='CHILD_CONFIG',
                        help='configs to run in this order, named *_sparse-<arch>-<attention>_*.py')
    parser.add_argument('--work-dir', required=True,
                        help='DIR: one folder per config, results.csv, results.png')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='passed to tools/train.py, tools/test.py and the measurement alike')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none',
                        help='none: tools/{train,test}.py; pytorch: tools/dist_{train,test}.sh')
    parser.add_argument('--gpus', type=_int_at_least(1), default=1,
                        help='processes of the pytorch launcher (default 1)')
    parser.add_argument('--input-shape', type=_int_at_least(1), nargs=2, metavar=('H', 'W'),
                        help='image size of the measurement (default: the test size of the config)')
    parser.add_argument('--warmup', type=_int_at_least(0), default=2, help='untimed forwards (default 2)')
    parser.add_argument('--iters', type=_int_at_least(1), default=5, help='timed forwards (default 5)')
    # The measurement of one config in a fresh interpreter (run_child starts it).
    parser.add_argument('--measure', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.launcher == 'none' and args.gpus != 1:
        parser.error(f'--gpus={args.gpus} needs --launcher pytorch')
    for config in args.configs:
        if not osp.isfile(config):
            parser.error(f'CHILD_CONFIG {config!r} is not a file')
        try:
            attention_name(config)
        except ValueError as error:
            parser.error(str(error))
    if len({config_name(c) for c in args.configs}) != len(args.configs):
        parser.error(f'CHILD_CONFIG names must be unique (one folder each), got {args.configs}')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.measure:
        measured = measure_backbone(args.configs[0], args.cfg_options, args.input_shape, args.warmup,
                                    args.iters)
        print(MEASURE_TAG + json.dumps(measured))
        return
    try:
        run(args)
    except (ValueError, RuntimeError, KeyError, OSError) as error:  # a failed child, refused markers
        sys.exit(f'run_ablation.py: {error}')


if __name__ == '__main__':
    main()
