"""Utilities shared by mmsparse's models and tools.

Importing this package never imports mmdet or mmseg (only torch and mmengine).
"""
from .checkpoint import (install_safe_checkpoint_loading, load_state_dict_from_checkpoint,
                         safe_load)
from .complexity import ModelComplexity, model_complexity  # noqa: F401 (public API)

__all__ = ['safe_load', 'install_safe_checkpoint_loading', 'load_state_dict_from_checkpoint']
