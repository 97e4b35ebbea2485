import torch
from torch import nn


def layer_scale_pair(embed_dims, init_value):
    """The per-channel residual scales ``(gamma1, gamma2)`` of a two-branch block (CaiT, arXiv 2103.17239).

    Args:
        embed_dims (int): channels C.
        init_value (float, optional): initial value of every scale; None for none.

    Returns:
        tuple: two (C, ) parameters filled with ``init_value``, or ``(None, None)``.
    """
    if init_value is None:
        return None, None
    return tuple(nn.Parameter(torch.full((embed_dims, ), float(init_value))) for _ in range(2))


def apply_layer_scale(gamma, y):
    """``gamma * y``, or ``y`` when the block has no layer scale (``gamma`` is None)."""
    return y if gamma is None else gamma * y
