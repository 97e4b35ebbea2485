"""Data transforms that the papers' recipes need and OpenMMLab 2.x no longer ships."""
from .transforms import AlignResize

__all__ = ['AlignResize']
