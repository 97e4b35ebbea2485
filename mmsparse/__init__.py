"""mmsparse: sparse vision attentions for OpenMMLab detection and segmentation.

Importing the package is cheap: it never imports mmdet or mmseg. Backbones are
registered when ``mmsparse.models`` is imported (the registry's ``locations``
does that on first use of a ``type='mmsparse.X'`` config).
"""
from .version import __version__

__all__ = ['__version__']
