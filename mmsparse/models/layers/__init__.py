"""Blocks shared by every mmsparse backbone."""
from .conv_stem import conv_downsample, conv_stem
from .drop_path import DropPath, drop_path, drop_path_rates
from .feature_pyramid import FeatureRescale
from .layer_scale import apply_layer_scale, layer_scale_pair
from .mlp import Mlp
from .norm import LayerNorm2d
from .padding import pad_nhwc_to_multiple
from .patch_embed import PatchEmbed
from .pos_embed import resize_pos_embed

__all__ = ['conv_stem', 'conv_downsample', 'DropPath', 'drop_path', 'drop_path_rates', 'Mlp', 'LayerNorm2d',
           'pad_nhwc_to_multiple', 'FeatureRescale', 'apply_layer_scale', 'layer_scale_pair', 'PatchEmbed',
           'resize_pos_embed']
