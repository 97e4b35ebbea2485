"""Build the model of a config for the tools (ONNX export, benchmark).

mmdet / mmseg are imported only by :func:`build_model`, for the config's
``default_scope``: importing this module needs torch and mmengine alone.
"""
import importlib

import torch
from mmengine.model import revert_sync_batchnorm
from mmengine.registry import init_default_scope

from .checkpoint import load_state_dict_from_checkpoint
from .launch import import_mmsparse_models

MODEL_PARTS = ('backbone', 'whole')
SCOPES = ('mmseg', 'mmdet')


class TensorForward(torch.nn.Module):
    """A segmentor's tensor forward ``model._forward(inputs)`` as a module ONNX can trace."""

    def __init__(self, segmentor):
        super().__init__()
        self.segmentor = segmentor

    def forward(self, inputs):
        return self.segmentor._forward(inputs)


def build_model(cfg, part, checkpoint=None):
    """Build ``cfg.model.backbone`` (``part='backbone'``) or ``cfg.model`` (``'whole'``), in eval mode.

    SyncBN is reverted to BN and no ``Pretrained`` init runs: the model holds the
    given checkpoint or its random init.

    Args:
        cfg (Config): an mmseg or mmdet config.
        part (str): ``'backbone'`` or ``'whole'`` (mmseg only: the segmentor's tensor
            forward, :class:`TensorForward`).
        checkpoint (str, optional): weights; a full-model checkpoint's ``backbone.*``
            entries are used for the backbone. Defaults to None (random init).

    Returns:
        nn.Module: the model, on CPU.
    """
    if part not in MODEL_PARTS:
        raise ValueError(f'part={part!r} must be one of {MODEL_PARTS}')
    scope = cfg.get('default_scope')
    if scope not in SCOPES:
        raise ValueError(f"the config's default_scope={scope!r} must be one of {SCOPES}")
    backbone_cfg = cfg.get('model', {}).get('backbone')
    if backbone_cfg is None:
        raise ValueError(f'the config has no model.backbone to export (model={cfg.get("model")})')
    if part == 'whole' and scope != 'mmseg':
        raise ValueError(f"part='whole' (--model whole) exports mmseg segmentors; this config's "
                         f"default_scope is {scope!r} (use part='backbone')")
    init_default_scope(scope)
    import_mmsparse_models()
    registry = importlib.import_module(f'{scope}.registry')
    importlib.import_module(f'{scope}.models')  # registers the codebase's models
    backbone_cfg.init_cfg = None
    model = registry.MODELS.build(backbone_cfg if part == 'backbone' else cfg.model)
    model = revert_sync_batchnorm(model)
    if checkpoint is not None:
        state = load_state_dict_from_checkpoint(checkpoint)
        if part == 'backbone' and any(k.startswith('backbone.') for k in state):
            state = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
        model.load_state_dict(state, strict=True)
    model = model.eval()
    return TensorForward(model) if part == 'whole' else model
