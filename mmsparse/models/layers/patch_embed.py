import torch.nn.functional as F
from torch import nn


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding of a ViT (Dosovitskiy et al., ICLR 2021).

    Inputs whose sides are not multiples of ``patch_size`` are zero-padded at the
    bottom and right first, so any H x W works. The conv is named ``proj`` as in
    timm, so ViT checkpoints load without renaming.

    Args:
        in_channels (int): image channels.
        embed_dims (int): token channels C.
        patch_size (int): patch side p (conv kernel and stride).

    Shape:
        (B, in_channels, H, W) -> ((B, gh*gw, C), (gh, gw)) with
        gh = ceil(H / p), gw = ceil(W / p); tokens row-major.
    """

    def __init__(self, in_channels, embed_dims, patch_size):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size)

    def forward(self, x):
        p = self.patch_size
        height, width = x.shape[-2:]
        x = F.pad(x, (0, (p - width % p) % p, 0, (p - height % p) % p))
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), tuple(x.shape[-2:])
