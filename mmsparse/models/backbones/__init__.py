from .biformer import BiFormer
from .fibottention_vit import FibottentionViT
from .nat import NAT
from .hat_net import HATNet
from .sparse_transformer import SparseTransformer

__all__ = ['BiFormer', 'NAT', 'HATNet', 'FibottentionViT', 'SparseTransformer']
