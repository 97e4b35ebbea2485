from torch import nn


class Mlp(nn.Module):
    """Token-wise feed-forward network: Linear -> GELU -> Linear on the last dim.

    Args:
        in_features (int): input channels C.
        hidden_features (int): hidden channels, typically ``mlp_ratio * C``.
        out_features (int, optional): output channels; default ``in_features``.

    Shape:
        (..., C) -> (..., out_features)
    """

    def __init__(self, in_features, hidden_features, out_features=None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))
