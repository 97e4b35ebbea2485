from .biformer import BiFormer
from .nat import NAT
from .hat_net import HATNet

__all__ = ['BiFormer', 'NAT', 'HATNet']
