"""Training-loop extensions: importing this registers them in ``mmsparse.registry.HOOKS``."""
from .hooks import RNGStateHook, get_rng_state, set_rng_state

__all__ = ['RNGStateHook', 'get_rng_state', 'set_rng_state']
