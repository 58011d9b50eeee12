"""Inference cost of a network: multiply-adds of its weight layers, dense and over the kept (nonzero) weights.

A ticket's network g holds its pruned weights as dense tensors (zeros where pruned). ``dense`` counts what running
those tensors as they are costs; ``kept`` what a sparse kernel would, one multiply-add per nonzero weight per
output position. Both count the weight layers only (ReLU, pooling and the adds of biases are left out), per input.

>>> import torch
>>> from torch import nn

from ticketsolver.construction import PrunedPair
>>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
>>> with torch.no_grad():
...     _ = net[3].weight.zero_()
>>> count = multiply_adds(net, (1, 6, 6))
>>> count.dense, count.kept  # conv: 2 channels x 16 positions x 9 taps; linear: 32 x 3 (all zero: none kept)
(384, 288)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ticketsolver.construction import OffsetPair, PrunedPair

__all__ = ["MultiplyAdds", "multiply_adds"]


@dataclass(frozen=True)
class MultiplyAdds:
    """Multiply-adds per input: ``dense`` over every weight entry, ``kept`` over the nonzero ones; ``layers`` counts
    the weight layers (Linear/Conv2d) that ran."""

    dense: int
    kept: int
    layers: int


def multiply_adds(module: nn.Module, input_shape: tuple[int, ...]) -> MultiplyAdds:
    """Run ``module`` once on zeros of ``input_shape`` (batch 1) and count its weight layers' multiply-adds."""
    dense = kept = layers = 0

    def add(weight: torch.Tensor, positions: int) -> None:
        nonlocal dense, kept, layers
        dense += positions * weight.numel()
        kept += positions * int(torch.count_nonzero(weight))
        layers += 1

    def count(layer: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        # output positions per channel: a conv's map (a pair's two convs share it: the second is 1x1), else 1
        positions = output[0, 0].numel() if output.dim() > 2 else 1
        if isinstance(layer, PrunedPair | OffsetPair):  # it may run its kept units directly, not its layers' forward
            for part in (layer.first, layer.second):
                assert isinstance(part.weight, torch.Tensor)
                add(part.weight, positions)
            if isinstance(layer, OffsetPair):  # its bias block's V_b relu(beta_b), once per input
                add(layer.bias_weight, 1)
            return
        assert isinstance(layer.weight, torch.Tensor)
        add(layer.weight, positions)

    pair_types = (PrunedPair, OffsetPair)
    inside_pairs = {id(m) for pair in module.modules() if isinstance(pair, pair_types) for m in pair.children()}
    hooks = [
        m.register_forward_hook(count)
        for m in module.modules()
        if isinstance(m, pair_types) or (isinstance(m, nn.Linear | nn.Conv2d) and id(m) not in inside_pairs)
    ]
    try:
        parameter = next(module.parameters(), None)
        dtype = parameter.dtype if parameter is not None else torch.float32
        with torch.no_grad():
            module(torch.zeros(1, *input_shape, dtype=dtype))
    finally:
        for hook in hooks:
            hook.remove()
    return MultiplyAdds(dense, kept, layers)
