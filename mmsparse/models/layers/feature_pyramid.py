from torch import nn

from .norm import LayerNorm2d


class FeatureRescale(nn.Sequential):
    """Resample one stride-s map of a plain ViT into a pyramid level.

    The simple feature pyramid of BEiT/MAE segmentation and ViTDet (Li et al.,
    ECCV 2022): ``4`` = two stride-2 transposed convs with LayerNorm2d + GELU
    between them, ``2`` = one transposed conv, ``1`` = identity, ``0.5`` =
    2x2 max pooling (rounding up, so an H x W map gives ceil(H/2) x ceil(W/2)).

    Args:
        channels (int): channels C (kept).
        scale (float): one of ``4, 2, 1, 0.5``.

    Shape:
        (B, C, H, W) -> (B, C, H * scale, W * scale) (ceil for 0.5).
    """

    SCALES = (4, 2, 1, 0.5)

    def __init__(self, channels, scale):
        if scale not in self.SCALES:
            raise ValueError(f'scale={scale!r} is not supported; expected one of {self.SCALES}')
        if scale == 4:
            layers = [nn.ConvTranspose2d(channels, channels, 2, stride=2), LayerNorm2d(channels),
                      nn.GELU(), nn.ConvTranspose2d(channels, channels, 2, stride=2)]
        elif scale == 2:
            layers = [nn.ConvTranspose2d(channels, channels, 2, stride=2)]
        elif scale == 0.5:
            layers = [nn.MaxPool2d(2, stride=2, ceil_mode=True)]
        else:
            layers = []
        super().__init__(*layers)
        self.scale = scale
