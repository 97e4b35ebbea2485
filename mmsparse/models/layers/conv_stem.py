from mmcv.cnn import build_norm_layer
from torch import nn


def conv_stem(in_channels, embed_dims, norm_cfg):
    """Two 3x3 stride-2 convs with norms and a GELU between: the stride-4 stem of BiFormer.

    Args:
        in_channels (int): image channels.
        embed_dims (int): output channels; the first conv has ``embed_dims // 2``.
        norm_cfg (dict): mmcv norm config of both norms (``dict(type='BN')``).

    Shape:
        (N, in_channels, H, W) -> (N, embed_dims, ceil(ceil(H / 2) / 2), likewise W)
    """
    return nn.Sequential(
        nn.Conv2d(in_channels, embed_dims // 2, 3, stride=2, padding=1),
        build_norm_layer(norm_cfg, embed_dims // 2)[1],
        nn.GELU(),
        nn.Conv2d(embed_dims // 2, embed_dims, 3, stride=2, padding=1),
        build_norm_layer(norm_cfg, embed_dims)[1])


def conv_downsample(in_channels, out_channels, norm_cfg):
    """3x3 stride-2 conv and a norm: BiFormer's downsampling between stages.

    Shape:
        (N, in_channels, H, W) -> (N, out_channels, ceil(H / 2), ceil(W / 2))
    """
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1),
                         build_norm_layer(norm_cfg, out_channels)[1])
