import torch.nn.functional as F


def pad_nhwc_to_multiple(x, multiple):
    """Zero-pad an NHWC map at the bottom and right so both sides divide ``multiple``.

    Args:
        x (Tensor): (N, H, W, C).
        multiple (int): the required divisor of H and W.

    Returns:
        Tensor: (N, H', W', C) with H' = ceil(H/multiple)*multiple (likewise W').
    """
    height, width = x.shape[1:3]
    pad_bottom = (multiple - height % multiple) % multiple
    pad_right = (multiple - width % multiple) % multiple
    if pad_bottom or pad_right:
        x = F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
    return x
