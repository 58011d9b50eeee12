"""Hand-made pruned pairs for the verification tests, built from the constructions of docs/design.md section 2.

The real builder lives in ticketsolver.construction; these pairs are exact by construction (O: hidden
units [relu(W); relu(-W)] and V = [I, -I]; I: one hidden unit per (input, sign) with U = +-1 and V = +-W,
plus a bias unit with beta = 1 and V = b; L: see :func:`offset_blocks_pair`), so a test can perturb V by a
known amount and know the error.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from ticketsolver.construction.pair import PrunedPair


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """One intra-op thread per test module (imported by each test module, so autouse applies there).

    The tests' tensors are tiny: a second thread only adds synchronisation, and when the two cores are busy
    with other work, torch's thread barriers stall (measured: 147 s instead of 6 s for this suite).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def output_blocks_pair(layer: nn.Linear | nn.Conv2d) -> PrunedPair:
    """An exact O pair for ``layer`` (valid for inputs >= 0): every kept U and beta entry is >= 0."""
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    d_out = w.shape[0]
    u = torch.cat([w.clamp(min=0), (-w).clamp(min=0)])
    beta = torch.cat([b.clamp(min=0), (-b).clamp(min=0)])
    eye = torch.eye(d_out, dtype=w.dtype)
    v = torch.cat([eye, -eye], dim=1)
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, 2 * d_out)
        second = nn.Linear(2 * d_out, d_out, bias=False)
    else:
        first = nn.Conv2d(
            layer.in_channels,
            2 * d_out,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
        )
        second = nn.Conv2d(2 * d_out, d_out, 1, bias=False)
        v = v.reshape(d_out, 2 * d_out, 1, 1)
    with torch.no_grad():
        first.weight.copy_(u)
        first.bias.copy_(beta)
        second.weight.copy_(v)
    return PrunedPair(first, second, "output_blocks").eval()


def input_blocks_pair(layer: nn.Linear | nn.Conv2d) -> PrunedPair:
    """An exact I pair for ``layer`` (any input sign): a hidden unit per (input entry, sign) + a bias unit."""
    w = layer.weight.detach()
    b = layer.bias.detach() if layer.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
    d_out = w.shape[0]
    w_flat = w.reshape(d_out, -1)  # conv: one column per kernel entry (c, a, b) as in im2col
    n_in = w_flat.shape[1]
    hidden = 2 * n_in + 1
    u = torch.zeros(hidden, n_in, dtype=w.dtype)
    u[torch.arange(n_in), torch.arange(n_in)] = 1.0
    u[n_in + torch.arange(n_in), torch.arange(n_in)] = -1.0
    beta = torch.zeros(hidden, dtype=w.dtype)
    beta[-1] = 1.0
    v = torch.cat([w_flat, -w_flat, b[:, None]], dim=1)
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, hidden)
        second = nn.Linear(hidden, d_out, bias=False)
    else:
        first = nn.Conv2d(
            layer.in_channels,
            hidden,
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
        )
        second = nn.Conv2d(hidden, d_out, 1, bias=False)
        u = u.reshape(hidden, *w.shape[1:])
        v = v.reshape(d_out, hidden, 1, 1)
    with torch.no_grad():
        first.weight.copy_(u)
        first.bias.copy_(beta)
        second.weight.copy_(v)
    return PrunedPair(first, second, "input_blocks").eval()


def offset_blocks_pair(layer: nn.Linear, h: float, seed: int = 0) -> PrunedPair:
    """An exact L pair for ``layer`` on inputs in [-h, h]: per input j, two units relu(u x_j + beta), one with
    u > 0 and one with u < 0, each with offset beta = |u| h >= 0, so both are linear on the box; V[i, (j, t)] =
    w_ij / (2 u) splits each weight over the two, and a bias unit (no input, beta = 1) with V = b - V beta
    cancels the offsets' constants. Outside the box some units are cut by the ReLU and the pair is not linear.
    """
    w = layer.weight.detach().double()
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    d_out, d_in = w.shape
    generator = torch.Generator().manual_seed(seed)
    size = 0.5 + torch.rand(d_in, 2, generator=generator, dtype=torch.float64)
    u_values = torch.stack([size[:, 0], -size[:, 1]], dim=1)  # (input, t): one positive, one negative
    hidden = 2 * d_in + 1
    u = torch.zeros(hidden, d_in, dtype=torch.float64)
    beta = torch.zeros(hidden, dtype=torch.float64)
    v = torch.zeros(d_out, hidden, dtype=torch.float64)
    for j in range(d_in):
        for t in range(2):
            unit = 2 * j + t
            u[unit, j] = u_values[j, t]
            beta[unit] = u_values[j, t].abs() * h
            v[:, unit] = w[:, j] / (2 * u_values[j, t])
    beta[-1] = 1.0
    v[:, -1] = b - v[:, :-1] @ beta[:-1]
    first, second = nn.Linear(d_in, hidden), nn.Linear(hidden, d_out, bias=False)
    with torch.no_grad():
        first.weight.copy_(u)
        first.bias.copy_(beta)
        second.weight.copy_(v)
    return PrunedPair(first, second, "offset_blocks").eval()


def perturb_second(pair: PrunedPair, scale: float, seed: int) -> PrunedPair:
    """Adds ``scale * N(0, 1)`` to every kept (nonzero) entry of the pair's V, in place; returns the pair."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        v = pair.second.weight
        noise = torch.randn(v.shape, generator=generator, dtype=v.dtype) * scale
        v.add_(noise * (v != 0))
    return pair


def build_pruned(
    target: nn.Sequential,
    *,
    input_nonneg: bool,
    construction: str = "auto",
    perturb: float = 0.0,
    seed: int = 0,
) -> nn.Sequential:
    """The target with every Linear/Conv2d replaced by a hand-made pair (O where the input is >= 0).

    Args:
        target: the network f.
        input_nonneg: whether the network input is >= 0 (O may be used for the first layer).
        construction: "auto" (O where allowed, else I), "output_blocks" or "input_blocks" for every layer.
        perturb: standard deviation of the noise added to each pair's kept V entries.
        seed: seed of that noise (layer i uses seed + i).
    """
    modules: list[nn.Module] = []
    nonneg = input_nonneg
    for i, layer in enumerate(target):
        if isinstance(layer, nn.Linear | nn.Conv2d):
            use = construction if construction != "auto" else ("output_blocks" if nonneg else "input_blocks")
            pair = output_blocks_pair(layer) if use == "output_blocks" else input_blocks_pair(layer)
            if perturb:
                perturb_second(pair, perturb, seed + i)
            modules.append(pair)
            nonneg = False
        else:
            modules.append(layer)
            nonneg = nonneg or isinstance(layer, nn.ReLU)
    return nn.Sequential(*modules).eval()


def lenet5(seed: int = 0) -> nn.Sequential:
    """LeNet5 for 1x28x28 inputs with random (default-initialised) weights."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    ).eval()


def mlp(seed: int = 0, d_in: int = 13, width: int = 32, d_out: int = 3) -> nn.Sequential:
    """A small MLP with random weights."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, d_out)
    ).eval()


def odd_conv_net(seed: int = 0) -> nn.Sequential:
    """A tiny CNN for 2x12x12 inputs with stride, padding, dilation, average and max pooling."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, stride=2, padding=1, dilation=2),  # 12 -> 5
        nn.ReLU(),
        nn.AvgPool2d(2, stride=1),  # 5 -> 4
        nn.Conv2d(3, 4, (2, 3), stride=(1, 2), padding=(1, 0)),  # 4x4 -> 5x1
        nn.ReLU(),
        nn.MaxPool2d((2, 1)),  # -> 2x1
        nn.Flatten(),
        nn.Linear(8, 5),
    ).eval()
