"""Datasets and data transforms: the synthetic shapes datasets, and the transforms that the
papers' recipes need and OpenMMLab 2.x no longer ships.

Importing this registers them in ``mmsparse.registry.DATASETS`` / ``TRANSFORMS`` (and imports
``mmseg.datasets`` and ``mmdet.datasets``, whose dataset classes the synthetic ones extend).
"""
from .synthetic import (SYNTHETIC_DET_CLASSES, SYNTHETIC_DET_PALETTE, SYNTHETIC_ROOTS,
                        SYNTHETIC_SEG_CLASSES, SYNTHETIC_SEG_PALETTE, SyntheticADE20KDataset,
                        SyntheticCocoDataset, use_synthetic_data)
from .transforms import AlignResize

__all__ = [
    'AlignResize', 'SYNTHETIC_DET_CLASSES', 'SYNTHETIC_DET_PALETTE', 'SYNTHETIC_ROOTS',
    'SYNTHETIC_SEG_CLASSES', 'SYNTHETIC_SEG_PALETTE', 'SyntheticADE20KDataset',
    'SyntheticCocoDataset', 'use_synthetic_data'
]
