"""Run a :class:`~ticketsolver.graph.ir.GraphSpec`: the target f (its units hold the trained values) or the pruned
random network g (its units are pruned pairs), through one interpreter.

The interpreter replays the spec's nodes in order; a unit node calls its unit module. f and g therefore differ in
their units only, which is what verification compares op by op. Unit modules:

* target side — :class:`TargetUnit` (the trained op itself: ``F.linear``, ``F.conv1d/2d`` with its groups,
  ``F.embedding``, or the tensor);
* random side — :class:`PairUnit`: a Linear on a tensor of any rank (flattened to rows), a convolution as one
  pair per group (channels split, outputs concatenated: a block-diagonal conv keeps its groups; an L conv pair held
  as an :class:`~ticketsolver.construction.offset_pair.OffsetPair`), an embedding as a
  pair on the one-hot input run as a gather (``hidden = relu(U[:, id] + beta)``, never a one-hot matmul), a
  trained tensor as a pair fed by a constant 1. No trained value is held: only the pairs' random layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.construction.offset_pair import OffsetPair
from ticketsolver.construction.pair import PrunedPair
from ticketsolver.graph.ir import GraphSpec, GraphUnit, decode, replay_op

__all__ = ["GraphNetwork", "PairUnit", "TargetUnit", "unit_input_hook"]

#: called with (unit index, its input) before every unit runs (verification records activations this way)
UnitHook = Callable[[int, torch.Tensor | None], None]


class TargetUnit(nn.Module):
    """The trained op of a unit (float64 or float32, as the network is cast)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, unit: GraphUnit, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.unit = unit
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        u = self.unit
        if u.kind == "tensor":
            return self.weight
        assert x is not None
        if u.kind == "linear":
            return F.linear(x, self.weight, self.bias)
        if u.kind == "embedding":
            out = F.embedding(x, self.weight)
            return out if self.bias is None else out + self.bias
        conv = F.conv1d if u.dims == 1 else F.conv2d
        return conv(x, self.weight, self.bias, u.stride, u.padding, u.dilation, u.groups)  # type: ignore[operator]


def _ones(pair: PrunedPair | OffsetPair) -> torch.Tensor:
    weight = pair.first.weight
    assert isinstance(weight, torch.Tensor)
    return torch.ones(1, 1, dtype=weight.dtype, device=weight.device)


class PairUnit(nn.Module):
    """A unit of g: its pruned pairs (one, or one per group of a grouped convolution).

    Each pair is a :class:`PrunedPair`, or an :class:`OffsetPair` for an L conv pair (its first layer a grouped
    conv of U's block diagonal, the same network without the dense U).
    """

    def __init__(self, unit: GraphUnit, pairs: Sequence[nn.Module]) -> None:
        super().__init__()
        self.unit = unit
        self.pairs = nn.ModuleList(pairs)

    def pair(self, g: int = 0) -> PrunedPair | OffsetPair:
        pair = self.pairs[g]
        assert isinstance(pair, PrunedPair | OffsetPair)
        return pair

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        u = self.unit
        if u.kind == "tensor":
            return self.pairs[0](_ones(self.pair())).reshape(u.weight_shape)
        assert x is not None
        if u.kind == "linear":
            rows = x.reshape(-1, x.shape[-1])
            return self.pairs[0](rows).reshape(*x.shape[:-1], -1)
        if u.kind == "embedding":
            return self._gather(x)
        squeeze = u.dims == 1
        if squeeze:
            x = x.unsqueeze(-2)
        chunks = torch.chunk(x, u.groups, dim=1) if u.groups > 1 else (x,)
        out = torch.cat([pair(chunk) for pair, chunk in zip(self.pairs, chunks, strict=True)], dim=1)
        return out.squeeze(-2) if squeeze else out

    def _gather(self, ids: torch.Tensor) -> torch.Tensor:
        """The pair on one-hot(ids) without forming it: the first layer's column of each id, plus its offsets."""
        pair = self.pair()
        first, second = pair.first, pair.second
        assert isinstance(first, nn.Linear) and isinstance(second, nn.Linear)
        hidden = F.embedding(ids, first.weight.t())
        if first.bias is not None:
            hidden = hidden + first.bias
        return second(torch.relu(hidden))  # type: ignore[no-any-return]


class GraphNetwork(nn.Module):
    """The network a spec describes, with one module per unit (target units or pair units)."""

    def __init__(self, spec: GraphSpec, units: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(units) != len(spec.units):
            raise ValueError(f"the graph has {len(spec.units)} units, {len(units)} modules were given")
        self.spec = spec
        self.units = nn.ModuleList(units)
        self._ops = {node["name"]: replay_op(node["op"]) for node in spec.nodes if node["op"] not in ("input", "unit")}
        self.hook: UnitHook | None = None

    def _float_dtype(self) -> torch.dtype:
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        float_dtype = self._float_dtype()
        if x.is_floating_point():
            x = x.to(float_dtype)
        env: dict[str, Any] = {}
        device = x.device
        for node in self.spec.nodes:
            name, op = node["name"], node["op"]
            if op == "input":
                env[name] = x
                continue
            args = decode(node.get("args", []), env, device, float_dtype)
            if op == "unit":
                k = node["unit"]
                value = args[0] if args else None
                if self.hook is not None:
                    self.hook(k, value)
                env[name] = self.units[k](value) if value is not None else self.units[k]()
                continue
            kwargs = {key: decode(v, env, device, float_dtype) for key, v in node.get("kwargs", {}).items()}
            if "device" in kwargs:
                kwargs["device"] = device
            env[name] = self._ops[name](*args, **kwargs)
        out = decode(self.spec.output, env, device, float_dtype)
        return out[0] if isinstance(out, list) else out


def unit_input_hook(network: GraphNetwork, hook: UnitHook | None) -> GraphNetwork:
    """Set (or clear, with None) the hook called with every unit's input; returns the network."""
    network.hook = hook
    return network
