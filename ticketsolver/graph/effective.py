"""The effective-weights network of a graph ticket: g with every unit replaced by the trained-op form of the weights
its pairs compute.

Each pruned pair is exactly linear (construction O on inputs >= 0, L inside its box), so it equals an
:class:`~ticketsolver.construction.pair.EffectiveLayer` computed from its own masked tensors. Gathered per unit —
a grouped convolution's groups concatenated along the output channels, an embedding's transposed, a tensor unit's
evaluated on its constant 1 — they give a :class:`~ticketsolver.graph.network.TargetUnit` of the unit's own kind,
and the graph run with those units is what g must equal (float64) wherever its pairs are linear. Construction I
splits every weight into the parts read by x+ and x-, which no single trained op of the unit's kind computes: its
tickets have no effective network here (their pairs are still checked one by one in verification).
"""

from __future__ import annotations

import torch

from ticketsolver.errors import VerificationError
from ticketsolver.graph.ir import GraphUnit
from ticketsolver.graph.network import GraphNetwork, PairUnit, TargetUnit

__all__ = ["effective_network", "effective_unit"]


def effective_unit(unit: GraphUnit, pairs: PairUnit, dtype: torch.dtype = torch.float64) -> TargetUnit:
    """The trained-op form of the weights ``pairs`` compute (see the module docstring)."""
    layers = [pairs.pair(g).effective(dtype) for g in range(len(pairs.pairs))]
    if any(layer.weight_neg is not None for layer in layers):
        raise VerificationError(f"unit '{unit.path}': construction I has no single effective op of its kind")
    weights = [layer.weight_pos for layer in layers]
    biases = [layer.bias for layer in layers]
    bias = torch.cat([b for b in biases if b is not None]) if all(b is not None for b in biases) else None
    if unit.kind == "tensor":
        value = weights[0][:, 0] + (bias if bias is not None else 0.0)
        return TargetUnit(unit, value.reshape(unit.weight_shape), None)
    if unit.kind == "embedding":
        # the one-hot input's column j holds E[j]; the offsets' constant adds to every row
        table = weights[0].t() + (bias if bias is not None else 0.0)
        return TargetUnit(unit, table, None)
    if unit.kind == "linear":
        return TargetUnit(unit, weights[0], bias)
    weight = torch.cat(weights)  # (out, in/groups, kh, kw): the groups' slices in order
    if unit.dims == 1:
        weight = weight.squeeze(-2)
    return TargetUnit(unit, weight, bias)


def effective_network(g: GraphNetwork, dtype: torch.dtype = torch.float64) -> GraphNetwork:
    """g's graph with every pair unit replaced by its effective trained-op unit, in ``dtype``."""
    units = []
    for unit, module in zip(g.spec.units, g.units, strict=True):
        assert isinstance(module, PairUnit)
        units.append(effective_unit(unit, module, dtype))
    return GraphNetwork(g.spec, units).eval()
