from __future__ import annotations

import numpy as np
import pytest
import torch

from hwflow.compiler import TileTarget, from_module

from .models import make

# Deliberately small and awkward: P=4, L=8, 32-byte super-beats (4 words per allocation unit).
TARGET = TileTarget(chains=4, chain_len=8, beat_bytes=32, act_depth=1024, weight_depth=64)


@pytest.fixture
def mlp():
    return make(0)


@pytest.fixture
def x3():
    torch.manual_seed(1)
    return torch.randn(3, 37)


@pytest.fixture
def float_graph(mlp, x3):
    return from_module(mlp, "mlp", example=x3)


@pytest.fixture
def target():
    return TARGET


def as_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy()
