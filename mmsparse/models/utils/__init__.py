from .ckpt_convert import (biformer_official_to_mmsparse, convert_checkpoint_file, hatnet_official_to_mmsparse,
                           is_official_biformer, is_official_hatnet, is_official_nat, nat_official_to_mmsparse,
                           vit_official_to_mmsparse)
from .pretrained import load_pretrained_weights

__all__ = ['biformer_official_to_mmsparse', 'is_official_biformer', 'hatnet_official_to_mmsparse',
           'is_official_hatnet', 'is_official_nat', 'nat_official_to_mmsparse', 'vit_official_to_mmsparse',
           'convert_checkpoint_file', 'load_pretrained_weights']
