import torch
from torch import nn


def drop_path(x, drop_prob=0., training=False):
    """Stochastic depth per sample (Huang et al., 2016), scaled by 1/keep_prob."""
    if drop_prob == 0. or not training:
        return x
    keep_prob = 1 - drop_prob
    shape = (x.shape[0], ) + (1, ) * (x.dim() - 1)
    mask = x.new_empty(shape).bernoulli_(keep_prob)
    return x * mask / keep_prob


class DropPath(nn.Module):
    """Drops whole residual branches per sample during training.

    Args:
        drop_prob (float): probability of dropping the branch, in [0, 1).
    """

    def __init__(self, drop_prob=0.):
        super().__init__()
        if not 0. <= drop_prob < 1.:
            raise ValueError(f'drop_prob={drop_prob} must be in [0, 1)')
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self):
        return f'drop_prob={self.drop_prob}'


def drop_path_rates(drop_path_rate, depths):
    """Per-block rates growing linearly from 0 to ``drop_path_rate`` over all blocks.

    Returns:
        list[list[float]]: one list per stage, ``len(rates[i]) == depths[i]``.
    """
    if not 0. <= drop_path_rate < 1.:
        raise ValueError(f'drop_path_rate={drop_path_rate} must be in [0, 1)')
    rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
    per_stage, start = [], 0
    for depth in depths:
        per_stage.append(rates[start:start + depth])
        start += depth
    return per_stage
