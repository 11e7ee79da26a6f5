"""Bundled example models, generated deterministically (no files to download)."""

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


EXAMPLES = {
    # name: (constructor, rows of the example input)
    "mlp": (lambda: ExampleMLP(), 4),
    # ~1 KB of weights: fits the iCE40 UP5K's 15 KB of block RAM next to the engine's buffers
    "mlp-tiny": (lambda: ExampleMLP(d_in=12, d_hidden=20, d_out=6), 4),
}


def build_example(name: str, seed: int = 0):
    """Return ``(module, example_input)`` for a bundled example, with seeded weights and input."""
    if name not in EXAMPLES:
        raise KeyError(name)
    make, rows = EXAMPLES[name]
    torch.manual_seed(seed)
    module = make().eval()
    d_in = next(m for m in module.modules() if isinstance(m, nn.Linear)).in_features
    x = torch.randn(rows, d_in, generator=torch.Generator().manual_seed(seed + 1))
    return module, x


def export_example(name: str, path, seed: int = 0) -> None:
    """Write a bundled example as a ``torch.export.save`` archive to ``path``."""
    module, x = build_example(name, seed)
    torch.export.save(torch.export.export(module, (x,)), str(path))
