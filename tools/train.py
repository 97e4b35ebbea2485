"""Train an mmdet or mmseg model, with mmsparse's modules registered.

Usage::

    python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [CKPT]]
        [--cfg-options KEY=VALUE ...] [--launcher {none,pytorch,slurm,mpi}]

The config's ``default_scope`` (``mmdet`` or ``mmseg``) selects the codebase.
Distributed: ``tools/dist_train.sh`` (torchrun) or ``tools/slurm_train.sh``.
"""
from mmsparse.utils.launch import build_runner, parse_train_args, prepare_train_cfg


def main():
    args = parse_train_args()
    cfg = prepare_train_cfg(args)
    runner = build_runner(cfg)
    runner.train()


if __name__ == '__main__':
    main()
