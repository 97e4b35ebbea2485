"""Test (and evaluate) an mmdet or mmseg model, with mmsparse's modules registered.

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out RESULTS.pkl]
        [--show-dir DIR] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

The config's ``default_scope`` (``mmdet`` or ``mmseg``) selects the codebase.
Distributed: ``tools/dist_test.sh`` (torchrun).
"""
from mmengine.evaluator import DumpResults

from mmsparse.utils.launch import build_runner, parse_test_args, prepare_test_cfg


def main():
    args = parse_test_args()
    cfg = prepare_test_cfg(args)
    runner = build_runner(cfg)
    if args.out is not None:
        # The evaluator exists only once the runner has built its test loop.
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))
    runner.test()


if __name__ == '__main__':
    main()
