"""Sign analysis of a graph: which units provably read non-negative inputs over the input box.

A sound abstract interpretation on the lattice {>= 0, unknown}: the input is >= 0 when the box's lower end is;
ReLU, ReLU6, sigmoid, softmax, exp are >= 0 whatever they read; hardtanh is when its lower clamp is; moving,
selecting, pooling, averaging, adding and multiplying non-negative values keeps the sign; everything else (GELU,
LayerNorm, a unit's output, subtraction) is unknown. An embedding reads a one-hot input and a tensor unit a
constant 1: both >= 0. Construction O needs inputs >= 0; I takes any sign (docs/design.md section 2.5).

>>> from ticketsolver.graph.ir import GraphSpec, GraphUnit
>>> unit = GraphUnit("linear", "fc", "fc", (2, 3))
>>> nodes = ({"name": "x", "op": "input"}, {"name": "r", "op": "aten.gelu.default", "args": [{"ref": "x"}]},
...          {"name": "fc", "op": "unit", "unit": 0, "args": [{"ref": "r"}]})
>>> unit_input_signs(GraphSpec(nodes, (unit,), (3,), "float32", {"ref": "fc"}), (0.0, 1.0))
[False]
"""

from __future__ import annotations

from typing import Any

from ticketsolver.graph.ir import INDEX_OPS, MONOTONE_NONNEGATIVE_OPS, NONNEGATIVE_OPS, GraphSpec, refs

__all__ = ["unit_input_signs"]


def _scalar_positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def unit_input_signs(spec: GraphSpec, box: tuple[float, float] | None) -> list[bool]:
    """Per unit: True when its input is provably >= 0 for every input in ``box`` (None: of unknown sign)."""
    nonneg: dict[str, bool] = {}
    signs = [False] * len(spec.units)
    for node in spec.nodes:
        name, op = node["name"], node["op"]
        args = node.get("args", [])
        inputs = refs(args) + refs(list(node.get("kwargs", {}).values()))
        every = bool(inputs) and all(nonneg.get(r, False) for r in inputs)
        if op == "input":
            nonneg[name] = spec.tokens or (box is not None and box[0] >= 0)
        elif op == "unit":
            unit = spec.units[node["unit"]]
            signs[node["unit"]] = True if unit.kind in ("embedding", "tensor") else every
            nonneg[name] = False
        elif op in NONNEGATIVE_OPS:
            nonneg[name] = True
        elif op in ("aten.hardtanh.default", "aten.hardtanh_.default"):
            low = args[1] if len(args) > 1 else node.get("kwargs", {}).get("min_val", -1.0)
            nonneg[name] = isinstance(low, int | float) and low >= 0 or every
        elif op in INDEX_OPS or op in MONOTONE_NONNEGATIVE_OPS:
            nonneg[name] = every
        elif op in ("aten.mul.Scalar", "aten.div.Scalar"):
            nonneg[name] = every and _scalar_positive(args[1] if len(args) > 1 else None)
        else:
            nonneg[name] = False
    return signs
