"""Plot training curves and time the iterations of mmdet and mmseg runs.

Reads MMEngine's ``WORK_DIR/<timestamp>/vis_data/scalars.json``: one JSON object a line,
each with a ``step``. Training lines also carry ``iter`` (and ``epoch`` in epoch-based
mmdet runs), the losses, ``lr`` and the iteration ``time``; validation lines carry the
metrics (mmseg: ``aAcc``, ``mIoU``, ``mAcc``; mmdet: ``coco/bbox_mAP`` ...) at the
iteration (iteration-based runs) or epoch (epoch-based runs) they were computed at.

Usage (from the repository root)::

    python tools/analysis_tools/analyze_logs.py plot_curve \\
        work_dirs/a/20250101_120000/vis_data/scalars.json [more.json ...] \\
        --keys loss mIoU [--legend run-a run-b] [--title T] --out curve.png
    python tools/analysis_tools/analyze_logs.py cal_train_time scalars.json [more.json ...] \\
        [--include-outliers]

``plot_curve`` draws one panel per key, one line per log; ``cal_train_time`` prints the
average, slowest and fastest iteration time and their spread, leaving out the first
logged iteration (its time includes start-up) unless ``--include-outliers`` is given, as
mmdet's and mmseg's own ``analyze_logs.py`` do.
"""
import argparse
import json
import os
import os.path as osp

import numpy as np


def load_scalars(json_log):
    """Read the records of a ``scalars.json``.

    Args:
        json_log (str): Path of the file.

    Returns:
        list[dict]: One dict a line, in file order.

    Raises:
        FileNotFoundError: ``json_log`` does not exist.
        ValueError: A line is not a JSON object with a ``step``.
    """
    if not osp.isfile(json_log):
        raise FileNotFoundError(f'json_log={json_log!r} does not exist; expected the '
                                'vis_data/scalars.json of an MMEngine run')
    records = []
    with open(json_log) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{json_log}:{number} is not JSON ({e}); expected an '
                                 'MMEngine vis_data/scalars.json') from None
            if not isinstance(record, dict) or 'step' not in record:
                raise ValueError(f'{json_log}:{number} has no "step"; expected an MMEngine '
                                 'vis_data/scalars.json')
            records.append(record)
    return records


def available_keys(records):
    """The scalar keys of ``records`` (``step``, ``iter`` and ``epoch`` excluded), sorted."""
    return sorted({key for record in records for key in record} - {'step', 'iter', 'epoch'})


def is_train_record(record):
    """Training lines carry ``iter``; validation lines only ``step``."""
    return 'iter' in record


def key_series(records, key, json_log):
    """The ``(steps, values, x_label)`` of ``key`` in ``records``.

    The x axis is the iteration for training keys and for validation keys of
    iteration-based runs, and the epoch for validation keys of epoch-based runs. A key
    that training lines carry is taken from them only.

    Raises:
        KeyError: ``key`` is in no record; the message lists the keys the log has.
    """
    points = [(record['step'], record[key], is_train_record(record)) for record in records
              if key in record]
    if not points:
        raise KeyError(f'key {key!r} is not in {json_log}; it has: '
                       f'{", ".join(available_keys(records))}')
    from_train = any(train for _, _, train in points)
    if from_train:
        # ``time`` and ``data_time`` are in validation lines too, timing validation
        points = [point for point in points if point[2]]
    by_epoch = any('epoch' in record for record in records if is_train_record(record))
    x_label = 'epoch' if by_epoch and not from_train else 'iter'
    steps = np.array([p[0] for p in points], dtype=np.float64)
    values = np.array([p[1] for p in points], dtype=np.float64)
    return steps, values, x_label


def plot_curve(json_logs, keys, out, legend=None, title=None):
    """Plot ``keys`` of every log in ``json_logs`` and save the figure to ``out``.

    Args:
        json_logs (Sequence[str]): ``scalars.json`` files.
        keys (Sequence[str]): Scalars to plot, one panel each.
        out (str): Image path (the format follows its extension, e.g. ``.png``).
        legend (Sequence[str], optional): One label per log. Defaults to the logs' run
            folders (``<timestamp>`` of ``<timestamp>/vis_data/scalars.json``).
        title (str, optional): Figure title. Defaults to None (none).

    Returns:
        str: ``out``.
    """
    import matplotlib
    matplotlib.use('Agg')  # files only: no display needed
    import matplotlib.pyplot as plt

    if not keys:
        raise ValueError('keys must name at least one scalar, got none')
    if legend is None:
        legend = [run_name(path) for path in json_logs]
    elif len(legend) != len(json_logs):
        raise ValueError(f'legend has {len(legend)} entries ({list(legend)}) but there are '
                         f'{len(json_logs)} logs; give one label per log')
    series = {path: load_scalars(path) for path in json_logs}
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        for path, label in zip(json_logs, legend):
            steps, values, x_label = key_series(series[path], key, path)
            ax.plot(steps, values, marker='o' if len(steps) < 20 else None, markersize=3,
                    label=label)
        ax.set_xlabel(x_label)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize='small')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if osp.dirname(out):
        os.makedirs(osp.dirname(out), exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    print(f'saved the curves of {", ".join(keys)} to {out}')
    return out


def run_name(json_log):
    """``<timestamp>`` of ``.../<timestamp>/vis_data/scalars.json``, else the file name."""
    parts = osp.normpath(osp.abspath(json_log)).split(os.sep)
    return parts[-3] if len(parts) >= 3 and parts[-2] == 'vis_data' else osp.basename(json_log)


def train_time_stats(records, include_outliers=False):
    """Iteration-time statistics of the training lines of a log.

    Args:
        records (list[dict]): Records of a ``scalars.json``.
        include_outliers (bool): Keep the first logged iteration, whose time includes
            start-up work. Defaults to False.

    Returns:
        dict: ``average``, ``std`` (s/iter), ``slowest`` and ``fastest`` as
        ``(iter, seconds)``, and ``num_iters``, the logged iterations used.

    Raises:
        ValueError: No training line has a ``time``, or none is left without the first.
    """
    timed = [(record['iter'], record['time']) for record in records
             if is_train_record(record) and 'time' in record]
    if not include_outliers:
        timed = timed[1:]
    if not timed:
        raise ValueError('the log has no timed training iteration'
                         + ('' if include_outliers else ' after the first (pass '
                            '--include-outliers to use it)'))
    iters = [it for it, _ in timed]
    times = np.array([t for _, t in timed], dtype=np.float64)
    return dict(average=float(times.mean()), std=float(times.std()),
                slowest=(iters[int(times.argmax())], float(times.max())),
                fastest=(iters[int(times.argmin())], float(times.min())),
                num_iters=len(times))


def cal_train_time(json_logs, include_outliers=False):
    """Print :func:`train_time_stats` of every log; return them, one dict per log."""
    all_stats = []
    for path in json_logs:
        stats = train_time_stats(load_scalars(path), include_outliers)
        print(f'-----Analyze train time of {path}-----')
        print(f'slowest iter {stats["slowest"][0]}, time {stats["slowest"][1]:.4f} s')
        print(f'fastest iter {stats["fastest"][0]}, time {stats["fastest"][1]:.4f} s')
        print(f'time std over {stats["num_iters"]} logged iters is {stats["std"]:.4f} s')
        print(f'average iter time: {stats["average"]:.4f} s/iter')
        all_stats.append(stats)
    return all_stats


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Analyze the scalars.json of MMEngine runs')
    sub = parser.add_subparsers(dest='task', required=True)
    plot = sub.add_parser('plot_curve', help='plot scalars against iterations or epochs')
    plot.add_argument('json_logs', nargs='+', help='vis_data/scalars.json files')
    plot.add_argument('--keys', nargs='+', default=['loss'],
                      help='scalars to plot, one panel each (default: loss)')
    plot.add_argument('--legend', nargs='+', help='one label per log (default: run folders)')
    plot.add_argument('--title', help='figure title')
    plot.add_argument('--out', required=True, help='output image, e.g. curve.png')
    timing = sub.add_parser('cal_train_time', help='average, slowest and fastest iteration')
    timing.add_argument('json_logs', nargs='+', help='vis_data/scalars.json files')
    timing.add_argument('--include-outliers', action='store_true',
                        help='also count the first logged iteration')
    return parser, parser.parse_args(argv)


def main(argv=None):
    parser, args = parse_args(argv)
    try:
        if args.task == 'plot_curve':
            plot_curve(args.json_logs, args.keys, args.out, args.legend, args.title)
        else:
            cal_train_time(args.json_logs, args.include_outliers)
    except (FileNotFoundError, KeyError, ValueError) as e:
        # KeyError's str() is the repr of its message; print the message itself
        parser.error(e.args[0] if isinstance(e, KeyError) else str(e))


if __name__ == '__main__':
    main()
