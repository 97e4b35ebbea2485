"""Token mixers: registered modules that own the parameters and call the ops in mmsparse.ops.

Each maps an (N, H, W, C) map to the same shape and is built by
:func:`build_token_mixer` or ``MODELS.build(cfg, default_args=dict(embed_dims=C,
num_heads=h))``.
"""
from .base import TokenMixer, build_token_mixer, token_mixer_types
from .bra import BiLevelRoutingAttention
from .dense import DenseAttention
from .fibottention import Fibottention2d
from .global_attention import GlobalAttentionLePE
from .hmhsa import HierarchicalMHSA
from .neighborhood_attention import NeighborhoodAttention2d
from .window_attention import WindowAttention

__all__ = ['TokenMixer', 'build_token_mixer', 'token_mixer_types', 'BiLevelRoutingAttention',
           'DenseAttention', 'Fibottention2d', 'GlobalAttentionLePE', 'HierarchicalMHSA',
           'NeighborhoodAttention2d', 'WindowAttention']
