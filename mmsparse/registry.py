"""mmsparse's registries, children of MMEngine's root registries.

``type='mmsparse.BiFormer'`` (``'mmsparse.AlignResize'`` in a pipeline,
``'mmsparse.SyntheticADE20KDataset'`` as a dataset) resolves from any default scope
(``mmdet``, ``mmseg``), as does ``'mmsparse.RNGStateHook'`` in ``custom_hooks``: the
``mmsparse.`` prefix sends the lookup here, and ``locations`` imports ``mmsparse.models`` /
``mmsparse.datasets`` / ``mmsparse.engine`` on first use, so ``custom_imports`` is optional.
"""
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmsparse', locations=['mmsparse.models'])
TRANSFORMS = Registry('transform', parent=MMENGINE_TRANSFORMS, scope='mmsparse',
                      locations=['mmsparse.datasets'])
DATASETS = Registry('dataset', parent=MMENGINE_DATASETS, scope='mmsparse',
                    locations=['mmsparse.datasets'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmsparse', locations=['mmsparse.engine'])

__all__ = ['MODELS', 'TRANSFORMS', 'DATASETS', 'HOOKS']
