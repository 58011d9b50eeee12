"""Capture a ``torch.export`` program as a graph target: its ATen graph with every trained value taken into units.

Target side of the pipeline for networks that are not chains (docs/design.md section 7). One pass over the program's
nodes (the program itself is never run before every node was classified):

* **weighted ops** become units: ``linear`` (any rank), ``conv1d``/``conv2d``/``convolution`` (any ``groups``),
  ``addmm``/``mm``/``matmul`` with a trained right operand (a Linear whose weight is its transpose), ``embedding``;
* **BatchNorm** (eval) right after a convolution or Linear unit that feeds nothing else is folded into it, exactly
  (float64); any other BatchNorm becomes ``x * s + t`` with ``s`` and ``t`` tensor units;
* **LayerNorm/GroupNorm** keep their normalisation (replayed without affine terms), followed by ``* weight`` and
  ``+ bias`` as tensor units;
* **every other trained tensor** used by an op (class tokens, learned positions, a bias added outside a Linear) is a
  tensor unit, fed by a constant 1 in g;
* **parameter-free ops** (:data:`~ticketsolver.graph.ir.REPLAYED_OPS`) are replayed as they are.

Anything else is refused with the module path that holds it (``nn_module_stack``). The captured graph, run with the
trained values (:class:`~ticketsolver.graph.network.TargetUnit`), is checked against the program on a random input.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ticketsolver.construction.layout import ConvGeometry
from ticketsolver.errors import ConstructionError, UnsupportedModuleError
from ticketsolver.graph.ir import REPLAYED_OPS, SKIPPED_OPS, GraphSpec, GraphUnit, encode, op_name
from ticketsolver.graph.network import GraphNetwork, TargetUnit
from ticketsolver.models.signature import read_signature

__all__ = ["GRAPH_OPS", "GraphTarget", "PairTarget", "capture_program"]

#: relative tolerance of the check that the captured graph computes what the program computes (float32 both)
_CHECK_RTOL = 1e-4

_WEIGHTED = {
    "aten.linear.default",
    "aten.conv2d.default",
    "aten.conv1d.default",
    "aten.convolution.default",
    "aten.addmm.default",
    "aten.mm.default",
    "aten.matmul.default",
    "aten.embedding.default",
}
_BATCH_NORMS = {"aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default"}
_NORMS = {"aten.layer_norm.default", "aten.group_norm.default"}
#: ops evaluated on trained tensors alone (a weight's transpose, a reshaped parameter)
_WEIGHT_ONLY = {
    "aten.t.default",
    "aten.permute.default",
    "aten.transpose.int",
    "aten.detach.default",
    "aten.clone.default",
    "aten.alias.default",
    "aten.view.default",
    "aten.reshape.default",
    "aten.unsqueeze.default",
    "aten.squeeze.dim",
    "aten.contiguous.default",
}


#: every op a captured graph may hold (serialized names): weighted, normalisations, weight-only, replayed, skipped
GRAPH_OPS: frozenset[str] = frozenset(_WEIGHTED | _BATCH_NORMS | _NORMS | _WEIGHT_ONLY | REPLAYED_OPS | SKIPPED_OPS)


@dataclass(frozen=True)
class PairTarget:
    """What one pair must compute: a dense-view weight (d_out, d_in), its bias, and a conv's geometry."""

    weight: np.ndarray  # float64
    bias: np.ndarray | None
    conv: ConvGeometry | None


@dataclass(frozen=True)
class GraphTarget:
    """A trained network as a graph: the spec (no trained values) and each unit's trained tensors.

    ``module`` runs it (float32, eval); ``arch`` is ``"graph"``. ``input_shape`` is per sample; ``input_dtype``
    ``"int64"`` for token ids in [0, ``spec.vocab``).
    """

    spec: GraphSpec
    tensors: tuple[dict[str, torch.Tensor], ...]  # per unit: "weight" and optionally "bias" (float64)
    module: GraphNetwork
    input_shape: tuple[int, ...]
    source: str
    arch: str = "graph"
    notes: tuple[str, ...] = field(default=())

    @property
    def input_dtype(self) -> str:
        return self.spec.input_dtype

    def layers(self) -> list[tuple[str, int]]:
        """(label, trained values) of every unit, in order: what the build reports progress on."""
        out = []
        for unit in self.spec.units:
            shape = "x".join(str(v) for v in unit.weight_shape)
            groups = f" groups={unit.groups}" if unit.groups > 1 else ""
            out.append((f"{unit.path or unit.node} {unit.kind} {shape}{groups}", unit.weights))
        return out

    def network(self, dtype: torch.dtype = torch.float32) -> GraphNetwork:
        """A fresh copy of f in ``dtype``."""
        return target_network(self.spec, self.tensors, dtype)

    def pair_targets(self, k: int) -> list[PairTarget]:
        """The pairs of unit ``k``: one, or one per group of a grouped convolution."""
        unit = self.spec.units[k]
        weight = self.tensors[k]["weight"].double().numpy()
        bias_t = self.tensors[k].get("bias")
        bias = None if bias_t is None else bias_t.double().numpy()
        if unit.kind == "linear":
            return [PairTarget(weight, bias, None)]
        if unit.kind == "embedding":
            return [PairTarget(weight.T.copy(), bias, None)]
        if unit.kind == "tensor":
            return [PairTarget(weight.reshape(-1, 1), None, None)]
        groups, out = unit.groups, weight.shape[0]
        per_group = out // groups
        kernel = weight.shape[2:] if unit.dims == 2 else (1, weight.shape[2])
        two = (lambda v: tuple(v)) if unit.dims == 2 else (lambda v: (1, *v))
        pad = (lambda v: tuple(v)) if unit.dims == 2 else (lambda v: (0, *v))
        geometry = ConvGeometry(
            in_channels=int(weight.shape[1]),
            kernel_size=(int(kernel[0]), int(kernel[1])),
            stride=two(unit.stride),
            padding=pad(unit.padding),
            dilation=two(unit.dilation),
        )
        flat = weight.reshape(out, -1)
        return [
            PairTarget(
                flat[g * per_group : (g + 1) * per_group],
                None if bias is None else bias[g * per_group : (g + 1) * per_group],
                geometry,
            )
            for g in range(groups)
        ]


def target_network(spec: GraphSpec, tensors: tuple[dict[str, torch.Tensor], ...], dtype: torch.dtype) -> GraphNetwork:
    units = [
        TargetUnit(unit, t["weight"].to(dtype), None if t.get("bias") is None else t["bias"].to(dtype))
        for unit, t in zip(spec.units, tensors, strict=True)
    ]
    return GraphNetwork(spec, units).eval()


def _where(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        kind_name = getattr(kind, "__name__", str(kind)).rsplit(".", 1)[-1]
        return f"from module '{path}' ({kind_name})" if path else f"in the model's own forward ({kind_name})"
    return "in the model's own forward"


def _path_of(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def _a(node: torch.fx.Node) -> Any:
    """A node's positional arguments, untyped (fx types them as any argument whatsoever)."""
    return node.args


def _arg(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return _a(node)[index]
    return node.kwargs.get(name, default)


def _ints(value: Any, dims: int, default: int) -> tuple[int, ...]:
    if value is None or (isinstance(value, list | tuple) and not value):
        return (default,) * dims
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value) if len(value) == dims else (int(value[0]),) * dims
    return (int(value),) * dims


class _Capture:
    def __init__(self, program: torch.export.ExportedProgram, name: str) -> None:
        self.program = program
        self.name = name
        self.values: dict[torch.fx.Node, torch.Tensor] = {}  # trained (or derived) tensors
        self.param_names: dict[torch.fx.Node, str] = {}
        self.nodes: list[dict[str, Any]] = []
        self.units: list[GraphUnit] = []
        self.tensors: list[dict[str, torch.Tensor]] = []
        self.alias: dict[torch.fx.Node, torch.fx.Node | str] = {}  # node -> the node (or spec name) standing for it
        self.tensor_units: dict[torch.fx.Node, str] = {}
        self.unit_of_node: dict[str, int] = {}
        self.notes: list[str] = []
        self.inputs: list[torch.Tensor | None] = []
        self.user_input = self._signature()

    # -- signature --------------------------------------------------------------------------------------
    def _signature(self) -> torch.fx.Node:
        read = read_signature(self.program, f"{self.name}: ")
        self.values.update(read.values)
        self.param_names.update(read.names)
        self.inputs.extend(read.inputs)
        return read.user

    def describe(self, node: torch.fx.Node) -> str:
        return f"{self.name}: node {node.name!r} [{op_name(node.target)} {_where(node)}]"

    # -- helpers --------------------------------------------------------------------------------------
    def is_value(self, arg: Any) -> bool:
        return isinstance(arg, torch.fx.Node) and arg in self.values

    def ref(self, arg: Any) -> Any:
        """Encode an argument of a replayed op: trained tensors become tensor units."""
        if isinstance(arg, list | tuple):
            return [self.ref(a) for a in arg]
        if isinstance(arg, torch.fx.Node):
            if arg in self.values:
                return {"ref": self.tensor_unit(arg)}
            target = self.alias.get(arg, arg)
            return {"ref": target if isinstance(target, str) else target.name}
        return encode(arg)

    def add_unit(self, unit: GraphUnit, weight: torch.Tensor, bias: torch.Tensor | None, node_name: str, x: Any) -> int:
        for what, t in (("weight", weight), ("bias", bias)):
            if t is not None and not bool(torch.isfinite(t).all()):
                raise ConstructionError(f"{self.name}: {unit.kind} unit '{unit.path}' has NaN or inf in its {what}")
        k = len(self.units)
        self.units.append(unit)
        tensors = {"weight": weight.detach().double().clone()}
        if bias is not None:
            tensors["bias"] = bias.detach().double().clone()
        self.tensors.append(tensors)
        self.nodes.append({"name": node_name, "op": "unit", "unit": k, "args": [] if x is None else [self.ref(x)]})
        self.unit_of_node[node_name] = k
        return k

    def tensor_unit(self, node: torch.fx.Node, value: torch.Tensor | None = None, path: str | None = None) -> str:
        """The spec name of the tensor unit holding trained tensor ``node`` (created on first use)."""
        if node in self.tensor_units and value is None:
            return self.tensor_units[node]
        tensor = self.values[node] if value is None else value
        name = node.name if value is None else f"{node.name}_{len(self.units)}"
        if not tensor.is_floating_point():
            raise UnsupportedModuleError(
                f"{self.describe(node)}: a non-floating trained tensor ({tensor.dtype}) is used as a value"
            )
        param = self.param_names.get(node, path or node.name)
        self.add_unit(GraphUnit("tensor", name, param, tuple(tensor.shape)), tensor, None, name, None)
        if value is None:
            self.tensor_units[node] = name
        return name

    def emit(self, name: str, op: str, args: list[Any], kwargs: dict[str, Any] | None = None) -> None:
        self.nodes.append({"name": name, "op": op, "args": args, "kwargs": kwargs or {}})

    # -- the pass -------------------------------------------------------------------------------------
    def run(self) -> GraphSpec:
        output: Any = None
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                if node is self.user_input:
                    self.nodes.append({"name": node.name, "op": "input", "args": []})
                continue
            if node.op == "output":
                result = _a(node)[0]
                result = result[0] if isinstance(result, list | tuple) and len(result) == 1 else result
                output = self.ref(result)
                continue
            if node.op != "call_function":
                raise UnsupportedModuleError(
                    f"{self.name}: node {node.name!r} ({node.op} {node.target}) is not supported"
                )
            self.visit(node)
        return self.spec(output)

    def visit(self, node: torch.fx.Node) -> None:
        name = op_name(node.target)
        if name in SKIPPED_OPS:
            return
        tensor_inputs = [a for a in node.all_input_nodes if a not in self.values]
        if not tensor_inputs and name in _WEIGHT_ONLY:  # a weight's transpose or reshape: computed now
            args = [self.values[a] if isinstance(a, torch.fx.Node) else a for a in _a(node)]
            self.values[node] = node.target(*args, **node.kwargs).detach()  # type: ignore[operator]
            parent = node.all_input_nodes[0]
            self.param_names[node] = self.param_names.get(parent, parent.name)
            return
        if name in _WEIGHTED and self._weighted(node, name):
            return
        if name in _BATCH_NORMS:
            self._batch_norm(node, name)
            return
        if name in _NORMS:
            self._norm(node, name)
            return
        if name == "operator.getitem" and _a(node)[0] in self.alias and isinstance(self.alias[_a(node)[0]], str):
            if _a(node)[1] == 0:
                self.alias[node] = self.alias[_a(node)[0]]
                return
        if name not in REPLAYED_OPS:
            raise UnsupportedModuleError(
                f"{self.describe(node)} is not supported (ticketsolver replays parameter-free ops and builds "
                "linear, convolution and embedding ops from random pairs; see docs/design.md section 7)"
            )
        self.emit(node.name, name, [self.ref(a) for a in node.args], {k: self.ref(v) for k, v in node.kwargs.items()})

    # -- weighted ops ---------------------------------------------------------------------------------
    def _weighted(self, node: torch.fx.Node, name: str) -> bool:
        """Make a unit of a weighted op whose weight is trained; False when it multiplies two activations."""
        if name == "aten.embedding.default":
            weight, ids = _a(node)[0], _a(node)[1]
            if not self.is_value(weight) or self.is_value(ids):
                return False
            w = self.values[weight]
            path = self.param_names[weight].rsplit(".", 1)[0]
            self.add_unit(GraphUnit("embedding", node.name, path, tuple(w.shape)), w, None, node.name, ids)
            return True
        if name in ("aten.addmm.default", "aten.mm.default", "aten.matmul.default"):
            bias_node = _a(node)[0] if name == "aten.addmm.default" else None
            x, m = _a(node)[1:3] if name == "aten.addmm.default" else _a(node)[:2]
            if not self.is_value(m) or self.is_value(x) or (bias_node is not None and not self.is_value(bias_node)):
                return False
            if name == "aten.addmm.default" and (_arg(node, 3, "beta", 1) != 1 or _arg(node, 4, "alpha", 1) != 1):
                return False
            weight = self.values[m].t()
            if weight.dim() != 2:
                return False
            bias = None if bias_node is None else self.values[bias_node]
            path = self.param_names[m].rsplit(".", 1)[0]
            unit = GraphUnit("linear", node.name, path, tuple(weight.shape), bias is not None)
            self.add_unit(unit, weight, bias, node.name, x)
            return True
        x, w = _a(node)[0], _a(node)[1]
        b = _arg(node, 2, "bias")
        if not self.is_value(w) or self.is_value(x) or (b is not None and not self.is_value(b)):
            return False
        weight = self.values[w]
        bias = None if b is None else self.values[b]
        path = self.param_names[w].rsplit(".", 1)[0]
        if name == "aten.linear.default":
            unit = GraphUnit("linear", node.name, path, tuple(weight.shape), bias is not None)
            self.add_unit(unit, weight, bias, node.name, x)
            return True
        dims = weight.dim() - 2
        if dims not in (1, 2):
            raise UnsupportedModuleError(f"{self.describe(node)}: only 1-D and 2-D convolutions are supported")
        if name == "aten.convolution.default":
            stride, padding, dilation = _a(node)[3:6]
            if _a(node)[6]:
                raise UnsupportedModuleError(f"{self.describe(node)}: transposed convolutions are not supported")
            groups = _a(node)[8]
        else:
            stride, padding = _arg(node, 3, "stride", 1), _arg(node, 4, "padding", 0)
            dilation, groups = _arg(node, 5, "dilation", 1), _arg(node, 6, "groups", 1)
        if isinstance(padding, str):
            raise UnsupportedModuleError(f"{self.describe(node)}: padding={padding!r} (use explicit integers)")
        unit = GraphUnit(
            "conv",
            node.name,
            path,
            tuple(weight.shape),
            bias is not None,
            _ints(stride, dims, 1),
            _ints(padding, dims, 0),
            _ints(dilation, dims, 1),
            int(groups),
        )
        self.add_unit(unit, weight, bias, node.name, x)
        return True

    # -- normalisation --------------------------------------------------------------------------------
    def _batch_norm(self, node: torch.fx.Node, name: str) -> None:
        x, weight, bias, mean, var = _a(node)[:5]
        if name == "aten.batch_norm.default":
            training, eps = _a(node)[5], float(_a(node)[7])
        else:
            training, eps = False, float(_a(node)[6])
        if training:
            raise UnsupportedModuleError(f"{self.describe(node)}: BatchNorm in training mode (export in eval mode)")
        for t in (weight, bias, mean, var):
            if t is not None and not self.is_value(t):
                raise UnsupportedModuleError(f"{self.describe(node)}: BatchNorm statistics must be stored tensors")
        channels = self.values[mean].numel() if mean is not None else self.values[weight].numel()
        mu = self.values[mean].double() if mean is not None else torch.zeros(channels, dtype=torch.float64)
        sigma2 = self.values[var].double() if var is not None else torch.ones(channels, dtype=torch.float64)
        gamma = self.values[weight].double() if weight is not None else torch.ones(channels, dtype=torch.float64)
        beta = self.values[bias].double() if bias is not None else torch.zeros(channels, dtype=torch.float64)
        if not all(bool(torch.isfinite(t).all()) for t in (mu, sigma2, gamma, beta)):
            raise ConstructionError(f"{self.describe(node)}: BatchNorm has NaN or inf parameters")
        scale = gamma / torch.sqrt(sigma2 + eps)
        shift = beta - mu * scale
        path = _path_of(node) or self.param_names.get(mean, "batch_norm").rsplit(".", 1)[0]
        producer = x if isinstance(x, torch.fx.Node) else None
        k = self.unit_of_node.get(producer.name) if producer is not None and producer not in self.alias else None
        users = [u for u in producer.users if op_name(u.target) != "aten.sym_size.int"] if producer else []
        if producer is not None and k is not None and users == [node] and self.units[k].kind in ("conv", "linear"):
            unit, tensors = self.units[k], self.tensors[k]
            w = tensors["weight"]
            tensors["weight"] = w * scale.reshape(-1, *([1] * (w.dim() - 1)))
            tensors["bias"] = tensors.get("bias", torch.zeros(w.shape[0], dtype=torch.float64)) * scale + shift
            self.units[k] = replace(unit, has_bias=True, folded=(*unit.folded, path))
            self.notes.append(f"BatchNorm '{path}' folded into {unit.kind} '{unit.path}'")
            self.alias[node] = producer.name
            return
        # x * s + t, s and t per channel (dim 1), as tensor units
        rank = len(x.meta["val"].shape) if isinstance(x, torch.fx.Node) and "val" in x.meta else 4
        shape = (channels,) + (1,) * (rank - 2)
        s_name = self.tensor_unit(node, scale.reshape(shape).float(), f"{path}.scale")
        t_name = self.tensor_unit(node, shift.reshape(shape).float(), f"{path}.shift")
        self.emit(f"{node.name}_scaled", "aten.mul.Tensor", [self.ref(x), {"ref": s_name}])
        self.emit(node.name, "aten.add.Tensor", [{"ref": f"{node.name}_scaled"}, {"ref": t_name}])
        self.notes.append(f"BatchNorm '{path}' kept as x * scale + shift (tensor units): no weighted op before it")
        if name != "aten.batch_norm.default":
            self.alias[node] = node.name

    def _norm(self, node: torch.fx.Node, name: str) -> None:
        if name == "aten.layer_norm.default":
            x, shape = _a(node)[0], _a(node)[1]
            weight, bias = _arg(node, 2, "weight"), _arg(node, 3, "bias")
            eps = _arg(node, 4, "eps", 1e-5)
            args = [self.ref(x), encode(shape), None, None, encode(float(eps))]
            affine_shape: tuple[int, ...] | None = None
        else:
            x, groups = _a(node)[0], _a(node)[1]
            weight, bias = _arg(node, 2, "weight"), _arg(node, 3, "bias")
            eps = _arg(node, 4, "eps", 1e-5)
            args = [self.ref(x), int(groups), None, None, encode(float(eps))]
            rank = len(x.meta["val"].shape) if "val" in x.meta else 4
            affine_shape = (-1,) + (1,) * (rank - 2)
        for t in (weight, bias):
            if t is not None and not self.is_value(t):
                raise UnsupportedModuleError(f"{self.describe(node)}: normalisation weights must be stored tensors")
        base = f"{node.name}_normalized"
        self.emit(base, name, args)
        current = base
        for t, op, suffix in ((weight, "aten.mul.Tensor", "scaled"), (bias, "aten.add.Tensor", "shifted")):
            if t is None:
                continue
            value = self.values[t] if affine_shape is None else self.values[t].reshape(affine_shape)
            unit_name = self.tensor_unit(t) if affine_shape is None else self.tensor_unit(t, value)
            self.emit(f"{node.name}_{suffix}", op, [{"ref": current}, {"ref": unit_name}])
            current = f"{node.name}_{suffix}"
        self.alias[node] = current

    # -- result ---------------------------------------------------------------------------------------
    def spec(self, output: Any) -> GraphSpec:
        value = self.user_input.meta.get("val")
        if value is None or value.dim() < 2:
            raise UnsupportedModuleError(f"{self.name}: the program's input must be a tensor (batch, ...)")
        dims = list(value.shape)
        if not all(isinstance(d, int) for d in dims[1:]):
            raise UnsupportedModuleError(f"{self.name}: only the batch dimension may be dynamic; input is {dims}")
        if value.is_floating_point():
            dtype, vocab = "float32", None
        elif value.dtype in (torch.int64, torch.int32):
            dtype = "int64"
            readers = [
                u
                for u in self.units
                if u.kind == "embedding"
                and any(
                    n.get("unit") == self.units.index(u) and n["args"] == [{"ref": self.user_input.name}]
                    for n in self.nodes
                )
            ]
            if not readers:
                raise UnsupportedModuleError(f"{self.name}: integer inputs must feed an embedding")
            vocab = min(u.weight_shape[0] for u in readers)
        else:
            raise UnsupportedModuleError(f"{self.name}: input dtype {value.dtype} is not supported")
        if not self.units:
            raise ConstructionError(f"{self.name}: the program has no trained op to approximate")
        return GraphSpec(
            nodes=tuple(self.nodes),
            units=tuple(self.units),
            input_shape=tuple(int(d) for d in dims[1:]),
            input_dtype=dtype,
            output=output,
            vocab=vocab,
            notes=tuple(self.notes),
        )

    def run_program(self, x: torch.Tensor) -> torch.Tensor:
        inputs = [x if t is None else t for t in self.inputs]
        out = torch.fx.Interpreter(self.program.graph_module).run(*inputs)
        return out[0] if isinstance(out, tuple | list) else out


def sample_inputs(spec: GraphSpec, batch: int, generator: torch.Generator, box: tuple[float, float]) -> torch.Tensor:
    """Random inputs the network takes: uniform on the box, or token ids uniform over the vocabulary."""
    if spec.tokens:
        assert spec.vocab is not None
        return torch.randint(0, spec.vocab, (batch, *spec.input_shape), generator=generator)
    lo, hi = box
    return torch.rand((batch, *spec.input_shape), generator=generator, dtype=torch.float64) * (hi - lo) + lo


def capture_program(program: torch.export.ExportedProgram, name: str) -> GraphTarget:
    """The graph target of an exported program (see the module docstring).

    Raises:
        UnsupportedModuleError: an op that is neither weighted nor replayable, named with its module path.
        ConstructionError: NaN/inf trained values, no trained op, or the captured graph does not compute what the
            program does.
    """
    capture = _Capture(program, name)
    spec = capture.run()
    tensors = tuple(capture.tensors)
    network = target_network(spec, tensors, torch.float32)
    value = capture.user_input.meta["val"]
    batch = value.shape[0] if isinstance(value.shape[0], int) else 3
    x = sample_inputs(spec, batch, torch.Generator().manual_seed(0), (-1.0, 1.0))
    if not spec.tokens:
        x = x.float()
    _check(capture.run_program, network, x, name)
    return GraphTarget(spec, tensors, network, spec.input_shape, name, notes=spec.notes)


def _check(
    reference: Callable[[torch.Tensor], torch.Tensor], network: GraphNetwork, x: torch.Tensor, name: str
) -> None:
    with torch.no_grad():
        try:
            got = network(x)
        except Exception as error:  # noqa: BLE001 - any failure of the replay is a capture defect to report
            raise ConstructionError(f"{name}: the captured graph does not run: {error}") from error
        expected = reference(x)
    if got.shape != expected.shape:
        raise ConstructionError(
            f"{name}: the captured graph returns {tuple(got.shape)}, the program {tuple(expected.shape)}"
        )
    scale = max(float(expected.abs().max()), 1e-12)
    deviation = float((got.double() - expected.double()).abs().max()) / scale
    if not math.isfinite(deviation) or deviation > _CHECK_RTOL:
        raise ConstructionError(f"{name}: the captured graph differs from the program (relative error {deviation:.2e})")
