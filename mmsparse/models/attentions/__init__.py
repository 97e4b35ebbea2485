"""Token mixers: modules that own the parameters and call the ops in mmsparse.ops."""
from .bra import BiLevelRoutingAttention
from .fibottention import FibottentionAttention
from .global_attention import GlobalAttentionLePE
from .hmhsa import HierarchicalMHSA
from .neighborhood_attention import NeighborhoodAttention2d

__all__ = ['BiLevelRoutingAttention', 'GlobalAttentionLePE', 'HierarchicalMHSA', 'NeighborhoodAttention2d',
           'FibottentionAttention']
