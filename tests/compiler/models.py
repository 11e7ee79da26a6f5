"""Small torch models shared by the compiler tests (module-level so torch.save can pickle them)."""

from __future__ import annotations

import torch
from torch import nn


class ResidualMLP(nn.Module):
    """37 -> 53 -> 37 with ReLU, a residual add and a final ReLU; odd widths on purpose."""

    def __init__(self, k: int = 37, hidden: int = 53, out: int = 11):
        super().__init__()
        self.up = nn.Linear(k, hidden)
        self.down = nn.Linear(hidden, k)
        self.head = nn.Linear(k, out, bias=False)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        h = torch.relu(self.drop(self.up(x)))
        y = torch.relu(self.down(h) + x)
        return self.head(y)


class ConvNet(nn.Module):
    """Uses conv2d, which the compiler does not support."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))  # conv2d: unsupported


def make(seed: int = 0, **kw) -> ResidualMLP:
    torch.manual_seed(seed)
    return ResidualMLP(**kw).eval()


@torch.no_grad()
def prune_2_4(layer: nn.Linear) -> nn.Linear:
    """Magnitude 2:4 pruning in torch, in place: keep the 2 largest |w| of every 4 along K."""
    w = layer.weight
    groups = w.reshape(w.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.abs().topk(2, dim=-1).indices, True)
    w.copy_((groups * keep).reshape_as(w))
    return layer
