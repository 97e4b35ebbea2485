from .ckpt_convert import biformer_official_to_mmsparse, is_official_biformer
from .pretrained import load_pretrained_weights

__all__ = ['biformer_official_to_mmsparse', 'is_official_biformer', 'load_pretrained_weights']
