"""Test (and evaluate) an mmdet or mmseg model, with mmsparse's modules registered.

Usage::

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out {PRED_DIR | RESULTS.pkl}]
        [--show-dir DIR] [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

The config's ``default_scope`` (``mmdet`` or ``mmseg``) selects the codebase, and
``--out`` follows its convention: a directory of predicted label maps for mmseg, a
``.pkl`` of raw results for mmdet.
Distributed: ``tools/dist_test.sh`` (torchrun).
"""
from mmsparse.utils.launch import add_result_dump, build_runner, parse_test_args, prepare_test_cfg


def main():
    args = parse_test_args()
    cfg = prepare_test_cfg(args)
    runner = build_runner(cfg)
    if args.out is not None and cfg.get('default_scope') != 'mmseg':
        add_result_dump(runner, cfg, args.out)
    runner.test()


if __name__ == '__main__':
    main()
