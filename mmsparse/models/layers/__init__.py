"""Blocks shared by every mmsparse backbone."""
from .drop_path import DropPath, drop_path, drop_path_rates
from .feature_pyramid import FeatureRescale
from .mlp import Mlp
from .norm import LayerNorm2d
from .padding import pad_nhwc_to_multiple
from .patch_embed import PatchEmbed
from .pos_embed import resize_pos_embed

__all__ = ['DropPath', 'drop_path', 'drop_path_rates', 'Mlp', 'LayerNorm2d', 'pad_nhwc_to_multiple',
           'FeatureRescale', 'PatchEmbed', 'resize_pos_embed']
