"""A plain multi-layer perceptron: the simplest sparse-GEMM workload.

``x[batch, in] -> layers.0 -> ReLU -> ... -> layers.{depth-2} -> ReLU -> head -> [batch, classes]``

With the defaults (1024 in, 1024 wide, 4 Linear layers, 1000 classes) it holds 4.2 M
weights; every Linear, ``head`` included, is prunable.
"""

from __future__ import annotations

import torch
from torch import nn

from sparsec.models.zoo import config, seeded_build

DEFAULT = {"in_features": 1024, "hidden": 1024, "depth": 4, "classes": 1000}
TINY = {"in_features": 64, "hidden": 128, "depth": 3, "classes": 10}
PRUNABLE = ("layers.*", "head")


class MLP(nn.Module):
    """``depth`` Linear layers: ``depth - 1`` hidden ones (``layers.i``, ReLU after each)
    and a ``head`` without activation."""

    def __init__(self, in_features: int, hidden: int, depth: int, classes: int) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"MLP depth must be at least 2, got {depth}")
        self.in_features = in_features
        widths = [in_features] + [hidden] * (depth - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.act(layer(x))
        return self.head(x)


def build(seed: int = 0, **size) -> MLP:
    """An eval-mode ``MLP`` with seeded weights; ``size`` overrides ``DEFAULT``."""
    return seeded_build(MLP, seed, **config(DEFAULT, size))


def example_inputs(batch: int = 1, seed: int = 0, **size) -> tuple[torch.Tensor, ...]:
    """``(x,)``, ``x`` standard normal ``[batch, in_features]``."""
    cfg = config(DEFAULT, size)
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, cfg["in_features"], generator=g),)
