"""Models: importing this registers every mmsparse module in ``mmsparse.registry.MODELS``.

It also routes MMEngine's loading of local checkpoints through mmsparse's
allow-listing loader (:func:`mmsparse.utils.install_safe_checkpoint_loading`).
``custom_imports=dict(imports=['mmsparse.models'])`` and the registry's
``locations`` both import this package, so the stock mmdet/mmseg ``train.py
--resume`` and ``test.py``, ``mim test``, ``init_model``/``init_detector`` and the
inferencers read the checkpoints that MMEngine writes under torch >= 2.6
(``HistoryBuffer`` and numpy objects in ``message_hub``) without turning the
``weights_only`` protection off.
"""
from ..utils.checkpoint import install_safe_checkpoint_loading
from .backbones import *  # noqa: F401,F403

install_safe_checkpoint_loading()
