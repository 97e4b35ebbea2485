"""Sparse attention ops. Importable with torch (and optionally triton) alone."""
from .bra import bi_level_routing_attention
from .na2d import neighborhood_attention_2d
from .hmhsa import cell_average_pool, global_attention, grid_attention
from .fibottention import fibottention_attention, fibottention_pattern

__all__ = ['bi_level_routing_attention', 'neighborhood_attention_2d', 'grid_attention', 'global_attention',
           'cell_average_pool', 'fibottention_attention', 'fibottention_pattern']
