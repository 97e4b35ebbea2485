from .ckpt_convert import (biformer_official_to_mmsparse, hatnet_official_to_mmsparse,
                           is_official_biformer, is_official_hatnet)
from .ckpt_convert import is_official_nat, nat_official_to_mmsparse
from .ckpt_convert import vit_official_to_mmsparse
from .pretrained import load_pretrained_weights

__all__ = ['biformer_official_to_mmsparse', 'is_official_biformer', 'hatnet_official_to_mmsparse',
           'is_official_hatnet', 'is_official_nat', 'nat_official_to_mmsparse', 'load_pretrained_weights',
           'vit_official_to_mmsparse']
