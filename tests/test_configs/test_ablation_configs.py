"""The attention ablations of configs/ablations: children differ from their base in the mixer only.

Every ``*_sparse-<arch>-<attention>_*`` file there is a child (found by name, so a new
one is tested without being listed here); every other file is a base. A child must
change nothing but ``model.backbone.attn_cfg`` of its base, build mixers of the class
its name says, stay within :data:`PARAMS_TOLERANCE` of its base's parameters, and train
(2 iterations on the synthetic data at a tiny scale) with gradients reaching every mixer.
"""
import copy
import glob
import math
import os.path as osp
import re
from functools import lru_cache

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.registry import MODELS, init_default_scope
from mmengine.runner import Runner

from mmsparse.models.attentions import TokenMixer

from ..conftest import REPO_ROOT, load_tool
from .test_configs_run import shrink_for_cpu

ABLATION_DIR = osp.join(REPO_ROOT, 'configs', 'ablations')
run_ablation = load_tool('analysis_tools/run_ablation.py')
CONFIGS = sorted(glob.glob(osp.join(ABLATION_DIR, '*.py')))
CHILDREN = [p for p in CONFIGS if run_ablation.NAME_PATTERN.search(osp.basename(p))]
BASES = [p for p in CONFIGS if p not in CHILDREN]
# The mixer class each attention name of a child config stands for; an unknown name fails
# test_child_builds_its_attention, so a new child needs its entry here.
MIXER_CLASSES = {'bra': 'BiLevelRoutingAttention', 'na': 'NeighborhoodAttention2d',
                 'dina': 'NeighborhoodAttention2d', 'hmhsa': 'HierarchicalMHSA',
                 'fibottention': 'Fibottention2d', 'dense': 'DenseAttention', 'window': 'WindowAttention'}
# The children of one base are matched for parameters: backbone parameters within 2% of
# the base's (docs/ablations.md lists them).
PARAMS_TOLERANCE = 0.02
ATTN_KEY = 'model.backbone.attn_cfg'


def config_id(path):
    return osp.basename(path)


def flatten(node, prefix=''):
    """``{dotted key: leaf}`` of nested dicts and lists (list items keyed by index)."""
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, (list, tuple)):
        items = list(enumerate(node))
    else:
        items = None
    if not items:  # a leaf, or an empty container, which is a value of its own
        return {prefix: node}
    flat = {}
    for key, value in items:
        flat.update(flatten(value, f'{prefix}.{key}' if prefix else str(key)))
    return flat


def base_of(child):
    """The ``_base_`` file of ``child``, which must be one sibling in configs/ablations."""
    with open(child) as f:
        match = re.search(r"^_base_ = \['\./([^'/]+\.py)'\]$", f.read(), re.MULTILINE)
    assert match, f"{child} must start from one sibling base: _base_ = ['./<base>.py']"
    return osp.join(ABLATION_DIR, match.group(1))


@lru_cache(maxsize=None)
def merged(path):
    return Config.fromfile(path)


def build_backbone(path):
    cfg = merged(path)
    init_default_scope(cfg.default_scope)
    return MODELS.build(cfg.model.backbone)


@lru_cache(maxsize=None)
def backbone_params(path):
    return sum(p.numel() for p in build_backbone(path).parameters())


def mixers(backbone):
    return [m for m in backbone.modules() if isinstance(m, TokenMixer)]


def test_every_base_has_every_attention():
    assert BASES and CHILDREN
    attentions = {run_ablation.attention_name(c) for c in CHILDREN}
    for base in BASES:
        assert 'mmsparse.SparseTransformer' == merged(base).model.backbone.type
        own = sorted(run_ablation.attention_name(c) for c in CHILDREN if base_of(c) == base)
        assert own == sorted(attentions), f'{osp.basename(base)} lacks {sorted(attentions - set(own))}'
    assert all(base_of(c) in BASES for c in CHILDREN)


@pytest.mark.parametrize('child', CHILDREN, ids=config_id)
def test_child_changes_only_the_attention(child):
    base, ours = flatten(merged(base_of(child)).to_dict()), flatten(merged(child).to_dict())
    changed = sorted(k for k in base.keys() | ours.keys() if base.get(k, object) != ours.get(k, object))
    outside = [k for k in changed if not (k == ATTN_KEY or k.startswith(ATTN_KEY + '.'))]
    assert not outside, f'{osp.basename(child)} changes more than {ATTN_KEY}: {outside}'


@pytest.mark.parametrize('child', CHILDREN, ids=config_id)
def test_child_builds_its_attention(child):
    attention = run_ablation.attention_name(child)
    assert attention in MIXER_CLASSES, f'add the mixer class of {attention!r} to MIXER_CLASSES'
    backbone = build_backbone(child)
    found = mixers(backbone)
    assert len(found) == sum(backbone.depths), (len(found), backbone.depths)
    assert {type(m).__name__ for m in found} == {MIXER_CLASSES[attention]}
    if attention == 'dina':
        assert max(m.dilation for m in found) > 1
    base_params = backbone_params(base_of(child))
    assert abs(backbone_params(child) - base_params) <= PARAMS_TOLERANCE * base_params, \
        (backbone_params(child), base_params)


class MixerUpdateHook(Hook):
    """Record the training losses and whether every mixer's parameters moved."""

    def __init__(self):
        self.losses, self.before = [], None

    def before_train(self, runner):  # after init_weights, before the first step
        self.before = [[p.detach().clone() for p in m.parameters()] for m in mixers(runner.model.backbone)]

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        self.losses.append(float(outputs['loss']))

    def moved(self, runner):
        after = [list(m.parameters()) for m in mixers(runner.model.backbone)]
        return [any(not torch.equal(a, b) for a, b in zip(old, new)) for old, new in zip(self.before, after)]


@pytest.mark.slow
@pytest.mark.parametrize('child', CHILDREN, ids=config_id)
def test_child_trains(child, synthetic_data, tmp_path):
    cfg = shrink_for_cpu(copy.deepcopy(merged(child)), str(synthetic_data), str(tmp_path))
    # Without weight decay Adam moves a parameter only if it got a gradient, so a moved
    # mixer is one the loss reached.
    cfg.optim_wrapper.optimizer.weight_decay = 0.
    # Drop path can skip a block's whole residual branch for every sample of both steps
    # (p = 0.2^4 for the last block at batch 2), which once left a mixer without a gradient.
    cfg.model.backbone.drop_path_rate = 0.
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    hook = MixerUpdateHook()
    runner.register_hook(hook)
    runner.train()
    assert runner.iter == 2
    assert len(hook.losses) == 2 and all(math.isfinite(x) for x in hook.losses), hook.losses
    moved = hook.moved(runner)
    assert moved and all(moved), f'mixers without a gradient: {[i for i, m in enumerate(moved) if not m]}'
    expected = MIXER_CLASSES[run_ablation.attention_name(child)]
    assert {type(m).__name__ for m in mixers(runner.model.backbone)} == {expected}
