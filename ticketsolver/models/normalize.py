"""Normal form of a target network: the flat chain of layers the builder turns into pruned random pairs.

Place in the pipeline: *target side*, between loading (``zoo`` / ``checkpoint``) and construction. The
builder only has to know seven module types; everything else is removed here or refused with the name
of the module that caused it:

    nn.Linear  nn.Conv2d (groups=1, zero padding)  nn.ReLU  nn.MaxPool2d  nn.AvgPool2d  nn.Flatten

* nested ``nn.Sequential`` (and subclasses that keep its ``forward``, like the zoo's models) are
  flattened in order; a module with its own ``forward`` is refused: only a plain chain is known to be
  what its children say (export such models with ``torch.export`` instead);
* BatchNorm right after a Linear/Conv2d is folded into it (in float64, then stored as float32);
* Dropout and Identity are dropped (identity at eval), ``ReLU(inplace=True)`` becomes ``ReLU()``.

Every normal form is checked against its source on a random input (float64) so a wrong fold can never
pass silently. :func:`normalize_exported_program` does the same for a ``torch.export`` program by
translating its ATen graph into these modules first.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from ticketsolver.errors import ConstructionError, UnsupportedModuleError
from ticketsolver.models.signature import read_signature

__all__ = [
    "NORMAL_FORM_TYPES",
    "SUPPORTED_EXPORT_OPS",
    "Target",
    "normalize",
    "normalize_exported_program",
]

#: The only module types a normal form contains.
NORMAL_FORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Flatten,
)

# Relative tolerance of the check that the normal form computes what its source computes (float64).
_CHECK_RTOL = 1e-5

Leaf = tuple[str, nn.Module]  # (qualified name for messages, module)


@dataclass(frozen=True)
class Target:
    """A trained network in normal form, ready for the builder.

    Attributes:
        module: the normal form (flat ``nn.Sequential``, float32, eval mode, no gradients).
        arch: ``"lenet5"``, ``"mlp"``, ``"export"`` (a ``.pt2`` program) or ``"custom"``.
        input_shape: per-sample input shape, e.g. ``(1, 28, 28)`` or ``(64,)``.
        source: the checkpoint's file name, or ``"<module>"``.
    """

    module: nn.Sequential
    arch: str
    input_shape: tuple[int, ...]
    source: str

    def layers(self) -> list[tuple[str, int]]:
        """(label, trained values) of every Linear/Conv2d, in order: what the build reports progress on."""
        out = []
        for index, module in enumerate(self.module):
            if isinstance(module, nn.Linear):
                label = f"[{index}] Linear {module.in_features}->{module.out_features}"
            elif isinstance(module, nn.Conv2d):
                label = f"[{index}] Conv2d {module.in_channels}->{module.out_channels} k{module.kernel_size[0]}"
            else:
                continue
            out.append((label, sum(p.numel() for p in module.parameters())))
        return out

    @classmethod
    def from_module(cls, module: nn.Module, input_shape: Sequence[int], arch: str = "custom") -> Target:
        """Normalise an in-memory module into a Target.

        Args:
            module: a chain of supported layers (see :func:`normalize`).
            input_shape: per-sample input shape.
            arch: label recorded in the Target.

        Raises:
            UnsupportedModuleError: a module cannot be expressed in the normal form.
            ConstructionError: NaN/inf parameters, or the normal form does not match the module.
        """
        shape = _check_input_shape(input_shape)
        return cls(normalize(module, shape), arch, shape, "<module>")


# ---------------------------------------------------------------------------------------------------
# nn.Module -> normal form
# ---------------------------------------------------------------------------------------------------


def normalize(module: nn.Module, input_shape: Sequence[int]) -> nn.Sequential:
    """Return the normal form of ``module``: a new flat chain of the builder's seven layer types.

    The input module is not modified.

    Args:
        module: ``nn.Sequential`` (possibly nested) or a zoo model, of supported layers.
        input_shape: per-sample input shape, e.g. ``(1, 28, 28)``.

    Returns:
        A new ``nn.Sequential`` (float32, eval mode, detached parameters with ``requires_grad=False``).

    Raises:
        UnsupportedModuleError: a module that cannot be expressed (names it, e.g. ``features.4 (GELU)``).
        ConstructionError: NaN/inf in a parameter or BatchNorm buffer, a bad ``input_shape``, or the
            normal form does not compute what ``module`` computes.

    >>> normalize(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU()), (4,))
    Sequential(
      (0): Linear(in_features=4, out_features=3, bias=True)
      (1): ReLU()
    )
    """
    shape = _check_input_shape(input_shape)
    leaves = list(_chain_leaves(module, ""))
    normal = _normal_form(leaves)
    # The reference is a float64 CPU copy: the check must not depend on where or how the module lives.
    reference = copy.deepcopy(module).to("cpu", torch.float64).eval()
    _check_equivalent(reference, normal, shape, "the original module")
    return normal


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError) as error:
        raise ConstructionError(f"input_shape must be a sequence of ints, got {input_shape!r}") from error
    if not shape or min(shape) < 1:
        raise ConstructionError(f"input_shape must be a non-empty per-sample shape of sizes >= 1, got {shape}")
    return shape


def _label(name: str, module: nn.Module) -> str:
    return f"{name or 'model'} ({type(module).__name__})"


def _keeps_forward(module: nn.Module, base: type[nn.Module]) -> bool:
    """True when ``module`` is a ``base`` whose ``forward`` is the library's own, not overridden."""
    return isinstance(module, base) and type(module).forward is base.forward


_CUSTOM_FORWARD_HINT = (
    "only plain chains of layers (nn.Sequential) can be read module by module; for a model with its "
    "own forward(), export it: torch.export.save(torch.export.export(model.eval(), (example,)), "
    "'model.pt2') and load the .pt2 file"
)


def _chain_leaves(module: nn.Module, name: str) -> Iterator[Leaf]:
    """Yield the leaf layers of a plain chain in execution order with their qualified names."""
    if _keeps_forward(module, nn.Sequential):
        for child_name, child in module.named_children():
            yield from _chain_leaves(child, f"{name}.{child_name}" if name else child_name)
        return
    for base in _LEAF_BASES:
        if isinstance(module, base):
            if not _keeps_forward(module, base):
                raise UnsupportedModuleError(
                    f"{_label(name, module)} overrides forward() of {base.__name__}; {_CUSTOM_FORWARD_HINT}"
                )
            yield name, module
            return
    raise UnsupportedModuleError(_unsupported_reason(name, module))


def _unsupported_reason(name: str, module: nn.Module) -> str:
    label = _label(name, module)
    if type(module).__module__ == "torch.nn.modules.activation":
        return f"{label}: only ReLU activations are supported"
    if list(module.children()):
        return f"{label} is not a plain chain of layers; {_CUSTOM_FORWARD_HINT}"
    if type(module).__module__.split(".")[0] != "torch":
        return f"{label} is a custom layer; {_CUSTOM_FORWARD_HINT}"
    supported = ", ".join(t.__name__ for t in NORMAL_FORM_TYPES)
    return f"{label} is not supported; supported: {supported}, BatchNorm1d/2d (folded), Dropout, Identity"


def _normal_form(leaves: Sequence[Leaf]) -> nn.Sequential:
    """Convert leaf layers (already known to be of supported base types) into the normal form."""
    _check_finite(leaves)
    out: list[tuple[str, nn.Module]] = []
    for name, leaf in leaves:
        if isinstance(leaf, _BatchNorm):
            fused = _fold(out[-1] if out else None, name, leaf)
            out[-1] = (out[-1][0], fused)
            continue
        converted = _convert_leaf(name, leaf)
        if converted is not None:
            out.append((name, converted))
    normal = nn.Sequential(*(m for _, m in out)).float().eval()
    for parameter in normal.parameters():
        parameter.requires_grad_(False)
    _check_finite([(name, m) for (name, _), m in zip(out, normal, strict=True)], after_fold=True)
    return normal


def _check_finite(leaves: Sequence[Leaf], after_fold: bool = False) -> None:
    """Refuse NaN/inf (and negative BatchNorm variances) before anything is folded or solved."""
    for name, leaf in leaves:
        tensors = list(leaf.named_parameters(recurse=False)) + list(leaf.named_buffers(recurse=False))
        for tensor_name, tensor in tensors:
            if not tensor.is_floating_point():
                continue
            if not torch.isfinite(tensor).all():
                where = "after folding BatchNorm, " if after_fold else ""
                raise ConstructionError(f"{where}tensor '{name}.{tensor_name}' contains NaN or inf")
            if tensor_name == "running_var" and (tensor < 0).any():
                raise ConstructionError(f"tensor '{name}.{tensor_name}' has negative variances")


def _fold(previous: Leaf | None, name: str, bn: nn.Module) -> nn.Module:
    """Fold a BatchNorm into the Linear/Conv2d emitted just before it (computed in float64)."""
    wanted = nn.Conv2d if isinstance(bn, nn.BatchNorm2d) else nn.Linear
    layer = previous[1] if previous is not None else None
    if not isinstance(layer, wanted):
        after = _label(*previous) if previous is not None else "the input"
        raise UnsupportedModuleError(
            f"{_label(name, bn)} follows {after}; BatchNorm can only be folded directly after a {wanted.__name__}"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedModuleError(
            f"{_label(name, bn)} has track_running_stats=False (uses batch statistics); cannot be folded"
        )
    layer64 = copy.deepcopy(layer).double().eval()
    bn64 = copy.deepcopy(bn).double().eval()
    try:
        if isinstance(layer64, nn.Conv2d):
            fused: nn.Module = fuse_conv_bn_eval(layer64, bn64)  # type: ignore[arg-type]
        else:
            fused = fuse_linear_bn_eval(layer64, bn64)  # type: ignore[arg-type]
    except (AssertionError, RuntimeError) as error:
        raise UnsupportedModuleError(f"{_label(name, bn)} cannot be folded: {error}") from error
    return fused.float()


def _copy_parameters(source: nn.Linear | nn.Conv2d, target: nn.Linear | nn.Conv2d) -> nn.Module:
    return _load(target, source.weight.detach(), source.bias.detach() if source.bias is not None else None)


def _convert_linear(name: str, leaf: nn.Linear) -> nn.Module:
    new = nn.Linear(leaf.in_features, leaf.out_features, bias=leaf.bias is not None)
    return _copy_parameters(leaf, new)


def _conv_padding(name: str, leaf: nn.Conv2d) -> tuple[int, int]:
    """Numeric padding of a conv; 'same' only where PyTorch pads symmetrically."""
    if not isinstance(leaf.padding, str):
        return tuple(int(p) for p in leaf.padding)  # type: ignore[return-value]
    if leaf.padding == "valid":
        return (0, 0)
    totals = [d * (k - 1) for d, k in zip(leaf.dilation, leaf.kernel_size, strict=True)]
    if any(t % 2 for t in totals):
        raise UnsupportedModuleError(
            f"{_label(name, leaf)}: padding='same' with an even receptive field pads asymmetrically"
        )
    return (totals[0] // 2, totals[1] // 2)


def _convert_conv(name: str, leaf: nn.Conv2d) -> nn.Module:
    if leaf.groups != 1:
        raise UnsupportedModuleError(f"{_label(name, leaf)}: grouped convolution (groups={leaf.groups})")
    if leaf.padding_mode != "zeros":
        raise UnsupportedModuleError(f"{_label(name, leaf)}: padding_mode={leaf.padding_mode!r}")
    new = nn.Conv2d(
        leaf.in_channels,
        leaf.out_channels,
        leaf.kernel_size,  # type: ignore[arg-type]
        stride=leaf.stride,  # type: ignore[arg-type]
        padding=_conv_padding(name, leaf),
        dilation=leaf.dilation,  # type: ignore[arg-type]
        bias=leaf.bias is not None,
    )
    return _copy_parameters(leaf, new)


def _ones(value: Any) -> bool:
    return all(v == 1 for v in (value if isinstance(value, tuple | list) else (value,)))


def _convert_max_pool(name: str, leaf: nn.MaxPool2d) -> nn.Module:
    if leaf.ceil_mode or leaf.return_indices or not _ones(leaf.dilation):
        raise UnsupportedModuleError(
            f"{_label(name, leaf)}: ceil_mode, return_indices and dilation != 1 are not supported"
        )
    return nn.MaxPool2d(leaf.kernel_size, leaf.stride, leaf.padding)


def _convert_avg_pool(name: str, leaf: nn.AvgPool2d) -> nn.Module:
    if leaf.divisor_override is not None:
        raise UnsupportedModuleError(f"{_label(name, leaf)}: divisor_override is not supported")
    return nn.AvgPool2d(leaf.kernel_size, leaf.stride, leaf.padding, leaf.ceil_mode, leaf.count_include_pad)


def _convert_flatten(name: str, leaf: nn.Flatten) -> nn.Module:
    if leaf.start_dim != 1 or leaf.end_dim != -1:
        raise UnsupportedModuleError(
            f"{_label(name, leaf)}: only Flatten(start_dim=1, end_dim=-1) (flatten to (N, -1)) is supported"
        )
    return nn.Flatten()


def _drop(name: str, leaf: nn.Module) -> None:
    return None


# Leaf types accepted, each with its converter (BatchNorm is folded by _normal_form, not converted).
_CONVERTERS: dict[type[nn.Module], Callable[[str, Any], nn.Module | None]] = {
    nn.Linear: _convert_linear,
    nn.Conv2d: _convert_conv,
    nn.ReLU: lambda name, leaf: nn.ReLU(),
    nn.MaxPool2d: _convert_max_pool,
    nn.AvgPool2d: _convert_avg_pool,
    nn.Flatten: _convert_flatten,
    nn.Dropout: _drop,
    nn.Dropout1d: _drop,
    nn.Dropout2d: _drop,
    nn.Dropout3d: _drop,
    nn.AlphaDropout: _drop,
    nn.FeatureAlphaDropout: _drop,
    nn.Identity: _drop,
}
_LEAF_BASES: tuple[type[nn.Module], ...] = (*_CONVERTERS, nn.BatchNorm1d, nn.BatchNorm2d)


def _convert_leaf(name: str, leaf: nn.Module) -> nn.Module | None:
    for base, convert in _CONVERTERS.items():
        if isinstance(leaf, base):
            return convert(name, leaf)
    raise UnsupportedModuleError(_unsupported_reason(name, leaf))


@torch.no_grad()
def _check_equivalent(
    reference: Callable[[torch.Tensor], torch.Tensor],
    normal: nn.Sequential,
    input_shape: tuple[int, ...],
    what: str,
    dtype: torch.dtype = torch.float64,
    rtol: float = _CHECK_RTOL,
    batch: int = 2,
) -> None:
    """Prove the normal form runs on ``input_shape`` and computes what ``reference`` computes.

    Raises:
        ConstructionError: either network fails on the shape, or outputs differ beyond ``rtol``.
    """
    try:
        normal(torch.zeros(1, *input_shape))
    except Exception as error:  # noqa: BLE001 - shape errors surface as RuntimeError or ValueError
        raise ConstructionError(
            f"the normal form does not run on inputs of per-sample shape {input_shape}: {error}"
        ) from error
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *input_shape), generator=generator, dtype=torch.float64) * 2 - 1
    try:
        expected = reference(x.to(dtype))
    except Exception as error:  # noqa: BLE001 - the user's module may raise anything on a wrong shape
        raise ConstructionError(f"{what} does not run on per-sample shape {input_shape}: {error}") from error
    got = copy.deepcopy(normal).to(dtype)(x.to(dtype))
    if not isinstance(expected, torch.Tensor) or expected.shape != got.shape:
        shape = getattr(expected, "shape", type(expected).__name__)
        raise ConstructionError(f"normal form output shape {tuple(got.shape)} differs from {what}'s {shape}")
    deviation = (got - expected).abs().max().item()
    scale = max(1.0, expected.abs().max().item())
    if not deviation <= rtol * scale:
        raise ConstructionError(
            f"the normal form differs from {what} by {deviation:.3g} (allowed {rtol * scale:.3g}); "
            f"a fold or translation is wrong"
        )


# ---------------------------------------------------------------------------------------------------
# torch.export program -> normal form
# ---------------------------------------------------------------------------------------------------

_aten = torch.ops.aten


def _op_name(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return f"aten.{target._schema.name.split('::')[-1]}.{target._overloadname}"
    return getattr(target, "__name__", str(target))


def _arg(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _pair(value: Any, default: int) -> tuple[int, int]:
    if value is None or (isinstance(value, list | tuple) and len(value) == 0):
        return (default, default)
    if isinstance(value, list | tuple):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


class _GraphWalk:
    """Translate an ExportedProgram's graph, node by node, into leaf modules of a single chain."""

    def __init__(self, program: torch.export.ExportedProgram) -> None:
        self.program = program
        self.values: dict[torch.fx.Node, torch.Tensor] = {}  # weights: parameters, buffers, constants
        self.layers: list[Leaf] = []
        self.inputs: list[torch.Tensor | None] = []  # placeholder values in order; None = user input
        self.current = self._read_signature()
        self.last_layer_node: torch.fx.Node | None = None

    # -- signature ----------------------------------------------------------------------------------
    def _read_signature(self) -> torch.fx.Node:
        read = read_signature(self.program)
        self.values.update(read.values)
        self.inputs.extend(read.inputs)
        return read.user

    def input_shape(self) -> tuple[tuple[int, ...], int]:
        """Per-sample shape of the user input and a batch size that the program accepts."""
        value = self.current.meta.get("val")
        if value is None or value.dim() < 2 or not value.is_floating_point():
            raise UnsupportedModuleError("the program's input must be a floating tensor (batch, ...)")
        dims = list(value.shape)
        if not all(isinstance(d, int) for d in dims[1:]):
            raise UnsupportedModuleError(f"only the batch dimension may be dynamic; input shape is {dims}")
        batch = dims[0] if isinstance(dims[0], int) else 2
        return tuple(dims[1:]), batch

    # -- walking ------------------------------------------------------------------------------------
    def run(self) -> list[Leaf]:
        for node in self.program.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                self._finish(node)
                return self.layers
            if node.op != "call_function":
                raise UnsupportedModuleError(f"node {node.name!r} ({node.op} {node.target}) is not supported")
            self._visit(node)
        raise UnsupportedModuleError("the program's graph has no output")

    def _visit(self, node: torch.fx.Node) -> None:
        target = node.target
        if target in _SKIPPED_OPS:
            return
        chain_args = [a for a in node.all_input_nodes if a not in self.values and not _is_sym_size(a)]
        if not chain_args:
            self._weight_op(node)
            return
        handler = _CHAIN_OPS.get(target)
        if handler is None:
            raise UnsupportedModuleError(f"{self.describe(node)} is not supported; {_SUPPORTED_TEXT}")
        if chain_args != [self.current]:
            raise UnsupportedModuleError(
                f"{self.describe(node)} does not continue a single chain from input to output "
                f"(branches, skip connections and several inputs are not supported)"
            )
        users = [u for u in self.current.users if not _is_sym_size(u)]
        if users != [node]:
            names = ", ".join(u.name for u in users)
            raise UnsupportedModuleError(
                f"node {self.current.name!r} feeds several nodes ({names}); only single chains are supported"
            )
        module = handler(self, node)
        if module is not None:
            self.layers.append((self.describe(node), module))
            self.last_layer_node = node
        self.current = node

    def _weight_op(self, node: torch.fx.Node) -> None:
        """Evaluate an op on weights only (e.g. transposing a Linear weight for addmm)."""
        if node.target not in _WEIGHT_OPS:
            hint = ""
            if _op_name(node.target).split(".")[1].endswith("_"):  # in-place: BatchNorm's step counter
                hint = "; it updates a buffer in place, so the model was exported in training mode: call "
                hint += "model.eval() before torch.export.export"
            raise UnsupportedModuleError(f"{self.describe(node)} on weights is not supported{hint}")
        args = torch.fx.node.map_arg(node.args, lambda n: self.values[n])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: self.values[n])
        self.values[node] = node.target(*args, **kwargs)

    def _finish(self, node: torch.fx.Node) -> None:
        results = node.args[0]
        results = list(results) if isinstance(results, list | tuple) else [results]
        if results != [self.current]:
            raise UnsupportedModuleError("the program's output is not the end of its single chain of layers")

    # -- helpers for handlers -----------------------------------------------------------------------
    def describe(self, node: torch.fx.Node) -> str:
        origin = ""
        stack = node.meta.get("nn_module_stack")
        if stack:
            path = list(stack.values())[-1][0]
            origin = f" from module {path!r}" if path else ""
        return f"node {node.name!r} [{_op_name(node.target)}{origin}]"

    def tensor(self, value: Any) -> torch.Tensor | None:
        if value is None:
            return None
        if not isinstance(value, torch.fx.Node) or value not in self.values:
            raise UnsupportedModuleError(f"expected a weight tensor, found {value!r}")
        return self.values[value]

    def weight(self, value: Any) -> torch.Tensor:
        tensor = self.tensor(value)
        if tensor is None:
            raise UnsupportedModuleError(f"expected a weight tensor, found {value!r}")
        return tensor

    def rank(self, node: torch.fx.Node) -> int:
        return self.current.meta["val"].dim()


def _is_sym_size(node: torch.fx.Node) -> bool:
    return node.op == "call_function" and node.target is _aten.sym_size.int


def _conv(walk: _GraphWalk, node: torch.fx.Node) -> nn.Module:
    weight = walk.weight(_arg(node, 1, "weight"))
    bias = walk.tensor(_arg(node, 2, "bias"))
    if node.target is _aten.convolution.default and _arg(node, 6, "transposed", False):
        raise UnsupportedModuleError(f"{walk.describe(node)}: transposed convolution is not supported")
    if weight.dim() != 4:
        raise UnsupportedModuleError(f"{walk.describe(node)}: only 2-d convolutions are supported")
    padding = _arg(node, 4, "padding", 0)
    groups = int(_arg(node, 8 if node.target is _aten.convolution.default else 6, "groups", 1))
    conv = nn.Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        (int(weight.shape[2]), int(weight.shape[3])),
        stride=_pair(_arg(node, 3, "stride"), 1),
        padding=padding if isinstance(padding, str) else _pair(padding, 0),
        dilation=_pair(_arg(node, 5, "dilation"), 1),
        groups=groups,
        bias=bias is not None,
    )
    return _load(conv, weight, bias)


def _load(module: nn.Linear | nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """Copy weight (and bias, if the module has one) into a fresh layer, as float32."""
    with torch.no_grad():
        module.weight.copy_(weight.to(torch.float32))
        if bias is not None and module.bias is not None:
            module.bias.copy_(bias.to(torch.float32))
    return module


def _linear_module(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    return _load(linear, weight, bias)


def _linear(walk: _GraphWalk, node: torch.fx.Node) -> nn.Module:
    return _linear_module(walk.weight(_arg(node, 1, "weight")), walk.tensor(_arg(node, 2, "bias")))


def _addmm(walk: _GraphWalk, node: torch.fx.Node) -> nn.Module:
    if node.args[1] is not walk.current or _arg(node, 3, "beta", 1) != 1 or _arg(node, 4, "alpha", 1) != 1:
        raise UnsupportedModuleError(f"{walk.describe(node)}: only addmm(bias, x, W.T) is a Linear layer")
    return _linear_module(walk.weight(node.args[2]).t(), walk.tensor(node.args[0]))


def _mm(walk: _GraphWalk, node: torch.fx.Node) -> nn.Module:
    # matmul(x, W.T) on a batch of vectors is mm; other ranks are not a Linear layer.
    matrix_input = walk.rank(node) == 2 and walk.weight(node.args[1]).dim() == 2
    if node.args[0] is not walk.current or not matrix_input:
        raise UnsupportedModuleError(f"{walk.describe(node)}: only mm(x, W.T) is a Linear layer")
    return _linear_module(walk.weight(node.args[1]).t(), None)


def _add_bias(walk: _GraphWalk, node: torch.fx.Node) -> None:
    """``add(layer_output, b)`` right after a bias-free Linear/Conv2d is that layer's bias."""
    other = walk.weight(_arg(node, 1, "other"))
    layer = walk.layers[-1][1] if walk.layers and walk.last_layer_node is walk.current else None
    if isinstance(layer, nn.Linear):
        wanted: tuple[int, ...] = (layer.out_features,)
    elif isinstance(layer, nn.Conv2d):
        wanted = (layer.out_channels, 1, 1)
    else:
        wanted = ()
    fits = bool(wanted) and getattr(layer, "bias", 0) is None and tuple(other.shape) == wanted
    if node.args[0] is not walk.current or not fits or _arg(node, 2, "alpha", 1) != 1:
        raise UnsupportedModuleError(f"{walk.describe(node)}: only a bias added right after a layer is supported")
    name, _ = walk.layers.pop()
    with_bias = copy.deepcopy(layer)
    with_bias.bias = nn.Parameter(other.reshape(-1).to(torch.float32).clone())  # type: ignore[union-attr]
    walk.layers.append((name, with_bias))  # type: ignore[arg-type]


def _batch_norm(walk: _GraphWalk, node: torch.fx.Node) -> nn.Module:
    legit = node.target is _aten._native_batch_norm_legit_no_training.default
    if not legit and _arg(node, 5, "training", False):
        raise UnsupportedModuleError(
            f"{walk.describe(node)}: batch_norm in training mode; call model.eval() before exporting"
        )
    weight, bias, mean, var = (
        walk.tensor(_arg(node, i, n)) for i, n in enumerate(("weight", "bias", "running_mean", "running_var"), start=1)
    )
    eps = float(_arg(node, 6 if legit else 7, "eps", 1e-5))
    rank = walk.rank(node)
    if mean is None or var is None or rank not in (2, 4):
        raise UnsupportedModuleError(f"{walk.describe(node)}: needs running statistics on 2-d or 4-d inputs")
    kind = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
    bn = kind(mean.shape[0], eps=eps, affine=weight is not None).eval()
    bn.running_mean = mean.detach().to(torch.float32).clone()  # assigning a registered buffer replaces it
    bn.running_var = var.detach().to(torch.float32).clone()
    with torch.no_grad():
        if weight is not None:
            bn.weight.copy_(weight)
            bn.bias.copy_(bias if bias is not None else torch.zeros_like(weight))
    return bn


def _getitem(walk: _GraphWalk, node: torch.fx.Node) -> None:
    if walk.current.target not in _TUPLE_OPS or node.args[1] != 0:
        raise UnsupportedModuleError(f"{walk.describe(node)}: only the first output of a pooling/norm op is used")
    return None


def _max_pool(walk: _GraphWalk, node: torch.fx.Node) -> nn.Module:
    kernel = _pair(_arg(node, 1, "kernel_size"), 1)
    stride = _arg(node, 2, "stride")
    return nn.MaxPool2d(
        kernel,
        _pair(stride, 0) if stride else None,
        _pair(_arg(node, 3, "padding"), 0),
        _pair(_arg(node, 4, "dilation"), 1),
        ceil_mode=bool(_arg(node, 5, "ceil_mode", False)),
    )


def _avg_pool(walk: _GraphWalk, node: torch.fx.Node) -> nn.Module:
    stride = _arg(node, 2, "stride")
    return nn.AvgPool2d(
        _pair(_arg(node, 1, "kernel_size"), 1),
        _pair(stride, 0) if stride else None,
        _pair(_arg(node, 3, "padding"), 0),
        ceil_mode=bool(_arg(node, 4, "ceil_mode", False)),
        count_include_pad=bool(_arg(node, 5, "count_include_pad", True)),
        divisor_override=_arg(node, 6, "divisor_override"),
    )


def _flatten(walk: _GraphWalk, node: torch.fx.Node) -> nn.Module | None:
    rank = walk.rank(node)
    start = int(_arg(node, 1, "start_dim", 0)) % rank
    end = int(_arg(node, 2, "end_dim", -1)) % rank
    if (start, end) != (1, rank - 1):
        raise UnsupportedModuleError(f"{walk.describe(node)}: only flattening to (N, -1) is supported")
    return nn.Flatten() if rank > 2 else None


def _view(walk: _GraphWalk, node: torch.fx.Node) -> nn.Module | None:
    """A view/reshape is accepted only as flattening to (N, -1)."""
    in_shape = list(walk.current.meta["val"].shape)
    size = list(_arg(node, 1, "size", ()))
    features = math.prod(int(d) for d in in_shape[1:])
    batch = size[0] if size else None
    batch_ok = (isinstance(batch, torch.fx.Node) and _is_sym_size(batch)) or batch == in_shape[0]
    batch_ok = batch_ok or (batch == -1 and len(size) == 2 and size[1] == features)
    if len(size) != 2 or not batch_ok or size[1] not in (-1, features):
        raise UnsupportedModuleError(f"{walk.describe(node)}: only reshaping to (N, -1) is supported")
    return nn.Flatten() if len(in_shape) > 2 else None


def _dropout(walk: _GraphWalk, node: torch.fx.Node) -> None:
    if _arg(node, 2, "train", False):
        raise UnsupportedModuleError(f"{walk.describe(node)}: dropout in training mode; export model.eval()")
    return None


def _identity(walk: _GraphWalk, node: torch.fx.Node) -> None:
    return None


_CHAIN_OPS: dict[Any, Callable[[_GraphWalk, torch.fx.Node], nn.Module | None]] = {
    _aten.conv2d.default: _conv,
    _aten.conv2d.padding: _conv,
    _aten.convolution.default: _conv,
    _aten.linear.default: _linear,
    _aten.addmm.default: _addmm,
    _aten.mm.default: _mm,
    _aten.matmul.default: _mm,
    _aten.add.Tensor: _add_bias,
    _aten.relu.default: lambda walk, node: nn.ReLU(),
    _aten.relu_.default: lambda walk, node: nn.ReLU(),
    _aten.max_pool2d.default: _max_pool,
    _aten.max_pool2d_with_indices.default: _max_pool,
    _aten.avg_pool2d.default: _avg_pool,
    _aten.flatten.using_ints: _flatten,
    _aten.view.default: _view,
    _aten.reshape.default: _view,
    _aten._unsafe_view.default: _view,
    _aten.batch_norm.default: _batch_norm,
    _aten._native_batch_norm_legit_no_training.default: _batch_norm,
    _aten.dropout.default: _dropout,
    _aten.clone.default: _identity,
    _aten.detach.default: _identity,
    _aten.alias.default: _identity,
    operator.getitem: _getitem,
}
_TUPLE_OPS = {_aten.max_pool2d_with_indices.default, _aten._native_batch_norm_legit_no_training.default}
# Ops applied to weights only (no activation flows through them): evaluated on the stored tensors.
_WEIGHT_OPS = {
    _aten.t.default,
    _aten.permute.default,
    _aten.transpose.int,
    _aten.detach.default,
    _aten.clone.default,
}
# Shape bookkeeping and assertions that compute nothing.
_SKIPPED_OPS = {
    _aten.sym_size.int,
    _aten._assert_tensor_metadata.default,
    _aten._assert_scalar.default,
    _aten.sym_constrain_range_for_size.default,
}

#: Serialized names (``aten.<op>.<overload>`` and ``operator.getitem``) of every op a program may use.
SUPPORTED_EXPORT_OPS: frozenset[str] = frozenset(
    _op_name(op) if isinstance(op, torch._ops.OpOverload) else "operator.getitem"
    for op in (*_CHAIN_OPS, *_WEIGHT_OPS, *_SKIPPED_OPS)
)
_SUPPORTED_TEXT = "supported ops: " + ", ".join(sorted(SUPPORTED_EXPORT_OPS))


def normalize_exported_program(
    program: torch.export.ExportedProgram,
) -> tuple[nn.Sequential, tuple[int, ...]]:
    """Translate a ``torch.export`` program into the normal form.

    The graph must be one chain from its single tensor input to its single output, of the ops in
    :data:`SUPPORTED_EXPORT_OPS`. The program's own graph is never run before every op was checked;
    ``program.module()`` is never used (calling its result runs the program's stored guard code);
    the comparison runs the lifted graph with ``torch.fx.Interpreter`` instead.

    Args:
        program: an ``ExportedProgram`` (exported from a model in eval mode).

    Returns:
        The normal form and the per-sample input shape (the example input's shape without batch).

    Raises:
        UnsupportedModuleError: an op outside the supported set (names the node and the op), or a
            graph that is not a single chain.
        ConstructionError: NaN/inf weights, or the normal form does not compute what the program does.
    """
    walk = _GraphWalk(program)
    input_shape, batch = walk.input_shape()
    leaves = walk.run()
    chain = nn.Sequential(*(m for _, m in leaves)).eval()
    normal = _normal_form(leaves)
    _check_equivalent(copy.deepcopy(chain).double(), normal, input_shape, "the program's layers")

    graph = program.graph_module

    def run_program(x: torch.Tensor) -> torch.Tensor:
        out = torch.fx.Interpreter(graph).run(*(x if t is None else t for t in walk.inputs))
        return out[0] if isinstance(out, tuple | list) else out

    # The stored graph runs in float32 (its asserts pin the dtype); the tolerance covers that rounding.
    # The batch is the example's when static, because a static program accepts no other.
    _check_equivalent(run_program, normal, input_shape, "the exported program", torch.float32, 1e-4, batch)
    return normal, input_shape
