"""Hooks that MMEngine's training loops need for exact, resumable runs."""
import logging
import random

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import IterBasedTrainLoop

from mmsparse.registry import HOOKS

CHECKPOINT_KEY = 'rng_state'


def get_rng_state():
    """The random states of this process: python, numpy, torch (and CUDA when present)."""
    state = dict(python=random.getstate(), numpy=np.random.get_state(legacy=False),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore a state returned by :func:`get_rng_state`."""
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


class _RestoreAfter:
    """Iterator wrapper that restores RNG states once ``skip`` batches have been drawn.

    A resumed ``IterBasedTrainLoop`` first replays the batches the interrupted run
    had trained on (the sampler's position), which runs the data pipeline and so
    consumes random numbers; the saved states belong after that replay.
    """

    def __init__(self, iterator, skip, state):
        self.iterator, self.skip, self.state = iterator, skip, state

    def __iter__(self):
        return self

    def __next__(self):
        if self.skip == 0 and self.state is not None:
            set_rng_state(self.state)
            self.state = None
        self.skip -= 1
        return next(self.iterator)


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save every rank's random states in checkpoints and restore them on resume.

    With it, a run interrupted at a checkpoint and resumed with ``--resume`` draws
    the same dropout and drop-path masks and the same augmentations as the run that
    was never interrupted, so it reaches the same losses and weights (given the
    run's ``randomness.seed``; MMEngine itself restores the seed and replays the
    sampler). Checkpoints hold ``checkpoint['rng_state'] = dict(ranks=[...],
    batches=N)``: one :func:`get_rng_state` per rank and the batches drawn since the
    loop started (the sampler's position). A checkpoint from another number of
    processes, or without the key, resumes with fresh states and a warning.
    ``tools/train.py`` adds this hook to every run.
    """

    # Before CheckpointHook (VERY_LOW) in the same after_train_iter / after_train_epoch
    # call: MMEngine saves on rank 0 only, so every rank's states are gathered here,
    # where all ranks take part, and nothing draws a random number between the two.
    priority = 'LOW'

    def __init__(self):
        self._pending = None
        self._latest = None

    def _capture(self):
        state = get_rng_state()
        self._latest = all_gather_object(state) if get_world_size() > 1 else [state]

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self._capture()

    def after_train_epoch(self, runner):
        self._capture()

    def before_save_checkpoint(self, runner, checkpoint):
        ranks = self._latest if self._latest is not None else [get_rng_state()]
        # meta['iter'] is what a resumed IterBasedTrainLoop replays (runner.iter lags by
        # one inside after_train_iter); epoch-based loops start a fresh epoch instead.
        iter_based = isinstance(runner.train_loop, IterBasedTrainLoop)
        batches = checkpoint['meta']['iter'] if iter_based else 0
        checkpoint[CHECKPOINT_KEY] = dict(ranks=ranks, batches=batches)

    def after_load_checkpoint(self, runner, checkpoint):
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            print_log('the checkpoint holds no random states: the resumed run draws fresh ones',
                      logger='current', level=logging.WARNING)
        elif len(saved['ranks']) != get_world_size():
            print_log(f'the checkpoint holds random states of {len(saved["ranks"])} processes, '
                      f'this run has {get_world_size()}: the resumed run draws fresh ones',
                      logger='current', level=logging.WARNING)
        else:
            self._pending = dict(state=saved['ranks'][get_rank()], batches=saved['batches'])

    def before_train(self, runner):
        # Loading weights with load_from (fine-tuning) also calls after_load_checkpoint;
        # only a resumed run restores states. MMEngine keeps that flag private.
        if self._pending is None or not runner._resume:
            return
        loop = runner.train_loop
        if self._pending['batches'] and isinstance(loop, IterBasedTrainLoop):
            loop.dataloader_iterator = _RestoreAfter(loop.dataloader_iterator,
                                                     self._pending['batches'],
                                                     self._pending['state'])
        else:
            set_rng_state(self._pending['state'])
        self._pending = None
