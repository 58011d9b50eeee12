"""Shared fixtures: small seeded target networks (an MLP and a CNN) and their tickets, built once per session.

The nets are "trained-ish": a few optimiser steps from a seeded init move the weights away from PyTorch's
default distribution, so the tickets approximate weights of uneven sizes, as a trained net has.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from ticketsolver import BuildConfig, Ticket, build_ticket


@dataclass(frozen=True)
class Net:
    """A target network (eval mode, read-only in tests) and its per-sample input shape."""

    module: nn.Sequential
    input_shape: tuple[int, ...]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: the tensors are tiny, and on two busy cores torch's thread barriers stall."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _train_briefly(module: nn.Sequential, input_shape: tuple[int, ...], outputs: int, seed: int) -> nn.Sequential:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, *input_shape, generator=generator)
    y = torch.randint(0, outputs, (64,), generator=generator)
    module.eval()  # BatchNorm keeps its running statistics; its affine parameters still learn
    optimiser = torch.optim.Adam(module.parameters(), lr=0.02)
    for _ in range(25):
        optimiser.zero_grad()
        nn.functional.cross_entropy(module(x), y).backward()
        optimiser.step()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module.eval()


@pytest.fixture(scope="session")
def mlp() -> Net:
    """5 -> 8 -> 6 -> 3 ReLU MLP with signed inputs."""
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    return Net(_train_briefly(module, (5,), 3, seed=0), (5,))


@pytest.fixture(scope="session")
def cnn() -> Net:
    """Conv(stride 2, padding 1) -> BatchNorm -> ReLU -> Conv(dilation 2) -> ReLU -> AvgPool -> Linear on 1x8x8."""
    torch.manual_seed(1)
    bn = nn.BatchNorm2d(4)
    module = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1),
        bn,
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    )
    with torch.no_grad():  # running statistics as after training, so the fold is not the identity
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return Net(_train_briefly(module, (1, 8, 8), 3, seed=1), (1, 8, 8))


@pytest.fixture(scope="session")
def mlp_ticket(mlp: Net) -> Ticket:
    """The MLP's ticket at n = 24 with up to 8 resampling rounds (so some units carry a later draw)."""
    return build_ticket(mlp.module, BuildConfig(n=24, solver="mitm", resample=8), input_shape=mlp.input_shape)


@pytest.fixture(scope="session")
def cnn_ticket(cnn: Net) -> Ticket:
    """The CNN's ticket at n = 24 with up to 8 resampling rounds; signed inputs, so its first pair is I."""
    return build_ticket(cnn.module, BuildConfig(n=24, solver="mitm", resample=8), input_shape=cnn.input_shape)
