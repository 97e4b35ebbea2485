"""Token mixers: modules that own the parameters and call the ops in mmsparse.ops."""
from .bra import BiLevelRoutingAttention
from .global_attention import GlobalAttentionLePE

__all__ = ['BiLevelRoutingAttention', 'GlobalAttentionLePE']
