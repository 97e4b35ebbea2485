"""A hook for the distributed tests: the images each rank trained on and its final weights.

Imported by the distributed runs through ``custom_imports``; registered in MMEngine's
root ``HOOKS``, which the mmseg and mmdet scopes fall back to.
"""
import os.path as osp

import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RankProbeHook(Hook):
    """Save ``{'seen': [[img_path, ...] per iteration], 'params': {name: tensor}}`` per rank.

    Args:
        out_dir (str): Folder of the ``rank{N}.pt`` files.
    """

    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.seen = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.seen.append([sample.img_path for sample in data_batch['data_samples']])

    def after_train(self, runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        params = {name: param.detach().clone() for name, param in model.named_parameters()}
        torch.save(dict(seen=self.seen, params=params),
                   osp.join(self.out_dir, f'rank{get_rank()}.pt'))
