"""The bundled MLP examples (``hwflow.examples`` lists every example), generated
deterministically (no files to download)."""

from __future__ import annotations

import torch
from torch import nn


class ExampleMLP(nn.Module):
    """A small MLP with the ops of the first hwflow release: linear (+bias), ReLU, residual add.

    Widths are deliberately not multiples of the engine sizes (16 chains x 16 slices on u280).
    """

    def __init__(self, d_in: int = 96, d_hidden: int = 200, d_out: int = 40):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_in)
        self.head = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        y = torch.relu(self.fc2(h) + x)
        return self.head(y)


class MixedMLP(nn.Module):
    """Four linear layers for ``--weights mixed``: ``fc2`` is pruned 2:4 (see :func:`prune_2_4`).

    Compiled with ``--weights mixed`` (and the default ``--sparsity auto``) it gives one layer
    of each kind the engine runs: ``fc1`` dense int8 (first layer), ``fc2`` 2:4 int4, ``fc3``
    dense int4, ``head`` dense int8 (last layer).
    """

    def __init__(self, d_in: int = 64, d_hidden: int = 96, d_out: int = 24):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_hidden)
        self.fc3 = nn.Linear(d_hidden, d_hidden)
        self.head = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        h = torch.relu(self.fc2(h) + h)
        h = torch.relu(self.fc3(h))
        return self.head(h)


@torch.no_grad()
def prune_2_4(layer: nn.Linear) -> nn.Linear:
    """Magnitude-prune ``layer.weight`` 2:4 in place, the way torch users do it: in every group
    of 4 consecutive input weights keep the 2 largest ``|w|`` (exact zeros elsewhere, so
    ``hwflow compile``'s ``--sparsity auto`` finds the pattern). ``in_features % 4 == 0``."""
    w = layer.weight
    groups = w.reshape(w.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.abs().topk(2, dim=-1).indices, True)
    w.copy_(torch.where(keep, groups, torch.zeros_like(groups)).reshape_as(w))
    return layer


def _sparse_mlp() -> ExampleMLP:
    m = ExampleMLP()
    prune_2_4(m.fc1)       # the hidden layers; the head stays dense
    prune_2_4(m.fc2)
    return m


def _mixed_mlp() -> MixedMLP:
    m = MixedMLP()
    prune_2_4(m.fc2)
    return m


#: name -> (constructor, rows of the example input); the names are the registry's MLPs.
MLP_BUILDERS = {
    # name: (constructor, rows of the example input)
    "mlp": (lambda: ExampleMLP(), 4),
    # ~1 KB of weights: fits the iCE40 UP5K's 15 KB of block RAM next to the engine's buffers
    "mlp-tiny": (lambda: ExampleMLP(d_in=12, d_hidden=20, d_out=6), 4),
    # the mlp with fc1 and fc2 pruned 2:4 in torch (auto-detected: runs in the engine's 2:4 mode)
    "mlp-sparse": (_sparse_mlp, 4),
    # for --weights mixed: dense int8, 2:4 int4, dense int4 and dense int8 layers in one program
    "mlp-mixed": (_mixed_mlp, 4),
}


def build_example(name: str, seed: int = 0):
    """Return ``(module, example_input)`` for a bundled example, with seeded weights and input."""
    if name not in MLP_BUILDERS:
        raise KeyError(name)
    make, rows = MLP_BUILDERS[name]
    torch.manual_seed(seed)
    module = make().eval()
    d_in = next(m for m in module.modules() if isinstance(m, nn.Linear)).in_features
    x = torch.randn(rows, d_in, generator=torch.Generator().manual_seed(seed + 1))
    return module, x


def export_example(name: str, path, seed: int = 0) -> None:
    """Write a bundled example as a ``torch.export.save`` archive to ``path``."""
    module, x = build_example(name, seed)
    torch.export.save(torch.export.export(module, (x,)), str(path))
