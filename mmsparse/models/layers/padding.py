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
    # Symbolic sizes (torch.export / dynamic torch.compile) always pad: a branch on them
    # would bake the traced size's choice into the graph, and a zero pad is a mere copy.
    # Concrete sizes skip that copy when nothing is padded.
    symbolic = not (isinstance(height, int) and isinstance(width, int))
    if symbolic or pad_bottom or pad_right:
        x = F.pad(x, (0, 0, 0, pad_right, 0, pad_bottom))
    return x
