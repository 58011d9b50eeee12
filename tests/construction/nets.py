"""Small seeded target networks shared by the construction tests (untrained: their weights are PyTorch's init)."""

from __future__ import annotations

import torch
from torch import nn


def small_mlp(seed: int, d_in: int = 5) -> nn.Sequential:
    """d_in -> 7 -> 6 -> 3 ReLU MLP."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def small_cnn(seed: int) -> nn.Sequential:
    """Same-padded and strided convs, max and average pooling and a Flatten into a Linear, for 2x6x6 or 2x8x8 inputs
    (the second conv maps 3x3 or 4x4 to 2x2)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),
    ).eval()
