"""mmsparse's registries, children of MMEngine's root registries.

``type='mmsparse.BiFormer'`` resolves from any default scope (``mmdet``, ``mmseg``):
the ``mmsparse.`` prefix sends the lookup here, and ``locations`` imports
``mmsparse.models`` on first use, so ``custom_imports`` is optional.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmsparse', locations=['mmsparse.models'])

__all__ = ['MODELS']
