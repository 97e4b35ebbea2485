"""Sparse attention ops. Importable with torch (and optionally triton) alone."""
from .bra import bi_level_routing_attention

__all__ = ['bi_level_routing_attention']
