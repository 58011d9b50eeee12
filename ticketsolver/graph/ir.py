"""The graph form of a target: its ATen graph with every trained tensor taken out, as plain JSON.

A :class:`GraphSpec` is what a ticket stores of a network that is not a chain (docs/design.md section 7). It lists the
program's nodes in order; each is one of

* ``{"op": "input"}`` — the network's one input (float features or int64 token ids);
* ``{"op": "unit", "unit": k, "args": [x]}`` — the k-th *unit*: an op that carried trained values (a Linear, a
  convolution, an embedding, or a trained tensor used as such), built from random pairs (``args`` is empty for a
  tensor unit, which is fed by a constant 1);
* ``{"op": "aten.<name>.<overload>" | "operator.<name>", "args": [...], "kwargs": {...}}`` — a parameter-free op of
  :data:`REPLAYED_OPS`, replayed as is (add, cat, reshape, softmax, attention, GELU, the normalisation itself, ...).

Arguments are JSON: ``{"ref": name}`` is the value of an earlier node, lists stay lists, ``{"dtype": "float32"}``,
``{"device": "cpu"}``, ``{"float": "inf"}`` and ``{"memory_format": ...}`` encode what JSON cannot, and every other
value is a literal. Nothing in a spec is code: :func:`replay_op` resolves an op name only if it is listed in
:data:`REPLAYED_OPS`, so a forged ticket can name no other function.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ticketsolver.errors import TicketFormatError

__all__ = [
    "INDEX_OPS",
    "NONNEGATIVE_OPS",
    "REPLAYED_OPS",
    "GraphSpec",
    "GraphUnit",
    "UnitKind",
    "decode",
    "encode",
    "replay_op",
]

UnitKind = Literal["linear", "conv", "embedding", "tensor"]

#: ops that only move, select or repeat values: an interval or a sign passes through them unchanged
INDEX_OPS: frozenset[str] = frozenset(
    {
        "aten.view.default",
        "aten.reshape.default",
        "aten._unsafe_view.default",
        "aten.flatten.using_ints",
        "aten.unflatten.int",
        "aten.transpose.int",
        "aten.permute.default",
        "aten.t.default",
        "aten.unsqueeze.default",
        "aten.squeeze.dim",
        "aten.squeeze.dims",
        "aten.squeeze.default",
        "aten.select.int",
        "aten.slice.Tensor",
        "aten.expand.default",
        "aten.contiguous.default",
        "aten.clone.default",
        "aten.detach.default",
        "aten.alias.default",
        "aten.dropout.default",
        "aten.split.Tensor",
        "aten.split_with_sizes.default",
        "aten.chunk.default",
        "aten.unbind.int",
        "aten.repeat.default",
        "aten.cat.default",
        "aten.stack.default",
        "operator.getitem",
    }
)
#: ops whose output is >= 0 whatever their input (or >= 0 when every tensor input is: pools, means)
NONNEGATIVE_OPS: frozenset[str] = frozenset(
    {
        "aten.relu.default",
        "aten.relu_.default",
        "aten.relu6.default",
        "aten.sigmoid.default",
        "aten.softmax.int",
        "aten._softmax.default",
        "aten.exp.default",
        "aten.sqrt.default",
        "aten.rsqrt.default",
        "aten.abs.default",
    }
)
#: ops that keep "every input >= 0": averages and maxima of non-negative values, their sums and products
MONOTONE_NONNEGATIVE_OPS: frozenset[str] = frozenset(
    {
        "aten.max_pool2d.default",
        "aten.max_pool2d_with_indices.default",
        "aten.avg_pool2d.default",
        "aten.adaptive_avg_pool2d.default",
        "aten.adaptive_avg_pool1d.default",
        "aten.avg_pool1d.default",
        "aten.max_pool1d.default",
        "aten.mean.dim",
        "aten.mean.default",
        "aten.sum.dim_IntList",
        "aten.add.Tensor",
        "aten.mul.Tensor",
        "aten.matmul.default",
        "aten.bmm.default",
        "aten.scaled_dot_product_attention.default",
    }
)
_OTHER_OPS: frozenset[str] = frozenset(
    {
        "aten.sub.Tensor",
        "aten.div.Tensor",
        "aten.neg.default",
        "aten.add.Scalar",
        "aten.mul.Scalar",
        "aten.sub.Scalar",
        "aten.div.Scalar",
        "aten.pow.Tensor_Scalar",
        "aten.hardtanh.default",
        "aten.hardtanh_.default",
        "aten.gelu.default",
        "aten.silu.default",
        "aten.tanh.default",
        "aten.erf.default",
        "aten.log_softmax.int",
        "aten._log_softmax.default",
        "aten.layer_norm.default",
        "aten.group_norm.default",
        "aten.sym_size.int",
        "aten.where.self",
        "aten.masked_fill.Scalar",
        "aten.tril.default",
        "aten.triu.default",
        "aten.zeros.default",
        "aten.ones.default",
        "aten.full.default",
        "aten.arange.default",
        "aten.arange.start",
        "aten._to_copy.default",
        "aten.to.dtype",
        "aten.type_as.default",
        "operator.add",
        "operator.sub",
        "operator.mul",
        "operator.floordiv",
        "operator.truediv",
        "operator.neg",
    }
)
#: every parameter-free op a graph may replay
REPLAYED_OPS: frozenset[str] = INDEX_OPS | NONNEGATIVE_OPS | MONOTONE_NONNEGATIVE_OPS | _OTHER_OPS
#: ops that check shapes or dtypes and compute nothing: dropped from the graph
SKIPPED_OPS: frozenset[str] = frozenset(
    {
        "aten._assert_tensor_metadata.default",
        "aten._assert_scalar.default",
        "aten.sym_constrain_range_for_size.default",
        "aten.sym_constrain_range.default",
    }
)

_OPERATORS: dict[str, Callable[..., Any]] = {
    "operator.add": operator.add,
    "operator.sub": operator.sub,
    "operator.mul": operator.mul,
    "operator.floordiv": operator.floordiv,
    "operator.truediv": operator.truediv,
    "operator.neg": operator.neg,
    "operator.getitem": operator.getitem,
}
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}
_FLOATS = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def op_name(target: Any) -> str:
    """``aten.<name>.<overload>`` of an ATen overload, ``operator.<name>`` of a Python operator."""
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target._schema.name.split('::')[-1]}.{target._overloadname}"
    module = getattr(target, "__module__", None)
    name = getattr(target, "__name__", str(target))
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    return name


def replay_op(name: str) -> Callable[..., Any]:
    """The callable of a replayed op; refuses any name outside :data:`REPLAYED_OPS`."""
    if name not in REPLAYED_OPS:
        raise TicketFormatError(f"op {name!r} is not one a graph may replay")
    if name.startswith("operator."):
        return _OPERATORS[name]
    _, op, overload = name.split(".")
    return getattr(getattr(torch.ops.aten, op), overload)  # type: ignore[no-any-return]


def encode(value: Any) -> Any:
    """JSON form of an fx argument (nodes become ``{"ref": name}``)."""
    if isinstance(value, torch.fx.Node):
        return {"ref": value.name}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, torch.dtype):
        name = str(value).removeprefix("torch.")
        if name not in _DTYPES:
            raise ValueError(f"dtype {value} is not supported in a graph")
        return {"dtype": name}
    if isinstance(value, torch.device):
        return {"device": value.type}
    if isinstance(value, torch.memory_format | torch.layout):
        return {"memory_format": str(value)}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"argument {value!r} of type {type(value).__name__} cannot be stored in a graph")


def decode(value: Any, env: dict[str, Any], device: torch.device, float_dtype: torch.dtype) -> Any:
    """The runtime value of an encoded argument: references looked up in ``env``; floating dtypes become
    ``float_dtype`` and devices ``device`` (the graph runs in the precision and on the device it is given)."""
    if isinstance(value, list):
        return [decode(v, env, device, float_dtype) for v in value]
    if isinstance(value, dict):
        if "ref" in value:
            return env[value["ref"]]
        if "dtype" in value:
            dtype = _DTYPES[value["dtype"]]
            return float_dtype if dtype.is_floating_point else dtype
        if "device" in value:
            return device
        if "float" in value:
            return _FLOATS[value["float"]]
        if "memory_format" in value:
            return None
        raise TicketFormatError(f"malformed graph argument {value!r}")
    return value


def refs(value: Any) -> list[str]:
    """The node names an encoded argument refers to."""
    if isinstance(value, list):
        return [r for v in value for r in refs(v)]
    if isinstance(value, dict) and "ref" in value:
        return [str(value["ref"])]
    return []


@dataclass(frozen=True)
class GraphUnit:
    """One op of the target that carried trained values, and the pairs that build it from random values.

    ``kind``: ``linear`` (weight (out, in), on the last dimension of a tensor of any rank), ``conv`` (weight
    (out, in/groups, *kernel), 1-D or 2-D, any groups: one pair per group), ``embedding`` (weight (vocab, dim): a
    pair on the one-hot input, run as a gather) or ``tensor`` (a trained tensor used as such: a pair fed by a
    constant 1, ``shape`` its shape). ``path`` is the module that held it; ``folded`` the norms folded into it.
    """

    kind: UnitKind
    node: str
    path: str
    weight_shape: tuple[int, ...]
    has_bias: bool = False
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    folded: tuple[str, ...] = ()
    pairs: tuple[int, ...] = ()
    construction: str = ""  # filled by the builder: the pairs' construction letter(s)

    @property
    def dims(self) -> int:
        """1 or 2 for a conv, 0 otherwise."""
        return len(self.weight_shape) - 2 if self.kind == "conv" else 0

    @property
    def weights(self) -> int:
        """Trained values this unit replaces (weight and bias)."""
        count = math.prod(self.weight_shape)
        if self.has_bias:
            count += self.weight_shape[1 if self.kind == "embedding" else 0]
        return count

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "node": self.node,
            "path": self.path,
            "weight_shape": list(self.weight_shape),
            "has_bias": self.has_bias,
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "groups": self.groups,
            "folded": list(self.folded),
            "pairs": list(self.pairs),
            "construction": self.construction,
        }

    @classmethod
    def from_dict(cls, data: Any) -> GraphUnit:
        kind = data["kind"]
        if kind not in ("linear", "conv", "embedding", "tensor"):
            raise TicketFormatError(f"unknown graph unit kind {kind!r}")
        unit = cls(
            kind=kind,
            node=str(data["node"]),
            path=str(data["path"]),
            weight_shape=tuple(int(v) for v in data["weight_shape"]),
            has_bias=bool(data["has_bias"]),
            stride=tuple(int(v) for v in data["stride"]),
            padding=tuple(int(v) for v in data["padding"]),
            dilation=tuple(int(v) for v in data["dilation"]),
            groups=int(data["groups"]),
            folded=tuple(str(v) for v in data["folded"]),
            pairs=tuple(int(v) for v in data["pairs"]),
            construction=str(data.get("construction", "")),
        )
        if any(v <= 0 for v in unit.weight_shape) or unit.groups < 1:
            raise TicketFormatError(f"graph unit {unit.path!r}: bad shape {unit.weight_shape} or groups")
        if kind == "conv" and (unit.dims not in (1, 2) or len(unit.stride) != unit.dims):
            raise TicketFormatError(f"graph unit {unit.path!r}: a conv needs 1-D or 2-D geometry")
        return unit


@dataclass(frozen=True)
class GraphSpec:
    """The target's graph without trained values: nodes in order, the units, the input and the output."""

    nodes: tuple[dict[str, Any], ...]
    units: tuple[GraphUnit, ...]
    input_shape: tuple[int, ...]  # per sample
    input_dtype: str  # "float32" or "int64" (token ids)
    output: Any  # encoded: {"ref": name}
    vocab: int | None = None  # token models: ids are in [0, vocab)
    notes: tuple[str, ...] = field(default=())  # what capture did (folds), for reports

    @property
    def tokens(self) -> bool:
        return self.input_dtype == "int64"

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": list(self.nodes),
            "units": [u.to_dict() for u in self.units],
            "input_shape": list(self.input_shape),
            "input_dtype": self.input_dtype,
            "output": self.output,
            "vocab": self.vocab,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, data: Any) -> GraphSpec:
        """Parse and check a stored graph: known ops only, references to earlier nodes only, units in range.

        Raises:
            TicketFormatError: anything malformed.
        """
        try:
            units = tuple(GraphUnit.from_dict(u) for u in data["units"])
            nodes = tuple(dict(n) for n in data["nodes"])
            spec = cls(
                nodes=nodes,
                units=units,
                input_shape=tuple(int(v) for v in data["input_shape"]),
                input_dtype=str(data["input_dtype"]),
                output=data["output"],
                vocab=None if data.get("vocab") is None else int(data["vocab"]),
                notes=tuple(str(v) for v in data.get("notes", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TicketFormatError(f"malformed graph in the ticket ({exc})") from exc
        spec.check()
        return spec

    def check(self) -> None:
        """Every node's op is known and refers only to earlier nodes; every unit is used once."""
        if self.input_dtype not in ("float32", "int64"):
            raise TicketFormatError(f"graph input dtype {self.input_dtype!r} is not float32 or int64")
        seen: set[str] = set()
        used_units: list[int] = []
        inputs = 0
        for node in self.nodes:
            name, op = node.get("name"), node.get("op")
            if not isinstance(name, str) or name in seen:
                raise TicketFormatError(f"graph node name {name!r} is missing or repeated")
            if op == "input":
                inputs += 1
            elif op == "unit":
                k = node.get("unit")
                if not isinstance(k, int) or not 0 <= k < len(self.units):
                    raise TicketFormatError(f"graph node {name!r} names unit {k!r}, not one of the graph's")
                used_units.append(k)
            elif op not in REPLAYED_OPS:
                raise TicketFormatError(f"graph node {name!r}: op {op!r} is not one a graph may replay")
            missing = [r for r in refs(node.get("args", [])) + refs(node.get("kwargs", {}).values()) if r not in seen]
            if missing:
                raise TicketFormatError(f"graph node {name!r} refers to {missing} before they are computed")
            seen.add(name)
        if inputs != 1:
            raise TicketFormatError(f"a graph has one input node, this one has {inputs}")
        if sorted(used_units) != list(range(len(self.units))):
            raise TicketFormatError("every graph unit must be used by exactly one node")
        if not refs(self.output) or any(r not in seen for r in refs(self.output)):
            raise TicketFormatError("the graph's output refers to no computed node")
