"""CPU distributed runs through the documented launchers: 2 real processes over gloo.

``tools/dist_train.sh`` trains, in 2 torchrun processes, the shrunk entry config
(UperNet with BiFormer-T, whose heads use SyncBN) for 2 iterations and a shrunk
RetinaNet BiFormer-T for one epoch; ``tools/dist_test.sh`` then tests each checkpoint
in 2 processes and must give the metrics of a single-process test.
"""
import os
import socket
import sys

import pytest
import torch

from mmsparse.utils import safe_load

from ..utils import logged_metric, run_command, write_shrunk_config

ENTRY_CONFIG = 'configs/biformer/upernet_ade20k.py'
pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def launcher_env():
    """No CUDA device and a port of our own for torchrun's rendezvous."""
    return dict(os.environ, CUDA_VISIBLE_DEVICES='', PORT=str(free_port()), OMP_NUM_THREADS='1')


# One mmseg and one mmdet config: what each trains to, and the metrics its test logs.
CASES = {
    'mmseg': dict(config=ENTRY_CONFIG, checkpoint='iter_2.pth', iters=2,
                  metrics=('aAcc', 'mIoU', 'mAcc')),
    'mmdet': dict(config='configs/biformer/retinanet_biformer-t_fpn_1x_coco.py',
                  checkpoint='epoch_1.pth', iters=1,
                  metrics=('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75')),
}


@pytest.fixture(scope='module', params=list(CASES))
def dist_run(request, synthetic_data, tmp_path_factory):
    case = CASES[request.param]
    root = tmp_path_factory.mktemp(f'dist_{request.param}')
    work_dir = root / 'work'
    config = write_shrunk_config(
        case['config'], str(synthetic_data), str(work_dir), root / 'dist.py',
        # mmseg: a checkpoint at iteration 2; mmdet: at the end of its one-iteration epoch
        checkpoint_interval=case['iters'],
        model=dict(backbone=dict(arch='tiny')),
        custom_imports=dict(imports=['mmsparse.models', 'tests.test_tools.dist_probe'],
                            allow_failed_imports=False),
        custom_hooks=[dict(type='RankProbeHook', out_dir=str(root))])
    output = run_command('bash', 'tools/dist_train.sh', config, 2, env=launcher_env())
    return dict(case, codebase=request.param, root=root, config=config, output=output,
                checkpoint=str(work_dir / case['checkpoint']),
                ranks=[torch.load(root / f'rank{r}.pt', weights_only=True) for r in (0, 1)])


def test_sync_bn_trains_as_bn_logged_once(dist_run):
    # UperNet's heads use SyncBN; the RetinaNet config has none to convert.
    expected = 1 if dist_run['codebase'] == 'mmseg' else 0
    assert dist_run['output'].count('SyncBN norm config(s) of the model train as BN') == expected


def test_ranks_end_identical_after_different_data(dist_run):
    rank0, rank1 = dist_run['ranks']
    assert len(rank0['seen']) == len(rank1['seen']) == dist_run['iters']
    for batch0, batch1 in zip(rank0['seen'], rank1['seen']):
        assert len(batch0) == len(batch1) == 2
        assert not set(batch0) & set(batch1), (batch0, batch1)
    assert rank0['params'].keys() == rank1['params'].keys()
    for name, value in rank0['params'].items():
        assert torch.equal(value, rank1['params'][name]), name
    # and they are what rank 0 saved
    saved = safe_load(dist_run['checkpoint'])['state_dict']
    assert all(torch.equal(saved[name], value) for name, value in rank0['params'].items())


def test_dist_test_matches_single_process(dist_run):
    args = [dist_run['config'], dist_run['checkpoint']]
    single = run_command(sys.executable, 'tools/test.py', *args, '--work-dir',
                         dist_run['root'] / 'single')
    dist = run_command('bash', 'tools/dist_test.sh', *args, 2, '--work-dir',
                       dist_run['root'] / 'dist', env=launcher_env())
    for key in dist_run['metrics']:
        assert logged_metric(dist, key) == logged_metric(single, key), key
