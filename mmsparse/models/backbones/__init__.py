from .biformer import BiFormer
from .fibottention_vit import FibottentionViT
from .nat import NAT
from .hat_net import HATNet

__all__ = ['BiFormer', 'NAT', 'HATNet', 'FibottentionViT']
