"""Models: importing this registers every mmsparse backbone in ``mmsparse.registry.MODELS``."""
from .backbones import *  # noqa: F401,F403
