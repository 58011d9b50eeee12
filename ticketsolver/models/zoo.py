"""Built-in target architectures and recognising them in a bare state_dict.

Place in the pipeline: *target side*, before normalisation. A user hands over a state_dict (keys of any
naming scheme); this module reads the sequence of tensor shapes, decides which built-in architecture it
is (``lenet5`` or ``mlp``), builds that module and loads the tensors into it. The result then goes to
:func:`ticketsolver.models.normalize.normalize`.

How a state_dict is read. Tensors are taken in order and grouped into *weight layers*: a rank-4 tensor
is a Conv2d weight, a rank-2 tensor a Linear weight; the rank-1 tensors of the layer's output size that
follow belong to it, and their count says what they are:

    ====  =====================================================================
    0     no bias
    1     bias
    4     BatchNorm (weight, bias, running_mean, running_var), layer has no bias
    5     bias + BatchNorm
    ====  =====================================================================

A rank-0 tensor after them is BatchNorm's ``num_batches_tracked`` (it may be absent). Anything else
(2 or 3 vectors, stray scalars, other ranks) is not a chain of conv/linear layers and is refused.
Key names are never needed; when the stored order does not parse (safetensors stores keys sorted), the
keys are tried once more in natural order ("layer.10" after "layer.9", weight before bias).

Supported: LeNet5 and MLPs of any depth and widths, each layer with or without bias and with or
without a BatchNorm right after it. Not distinguishable from shapes: the original 32x32 LeNet-5
without padding has the same tensor shapes as our 28x28 padded one; it is read as the latter. Export
other architectures with ``torch.export`` (a ``.pt2`` file) instead.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ticketsolver.errors import CheckpointError, ConfigError

__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "LayerTensors",
    "LeNet5",
    "MLP",
    "build_from_state_dict",
    "infer_architecture",
    "parse_layers",
]

# One flag per weight layer, or one flag for all of them.
Flags = bool | Sequence[bool]


def _per_layer(flags: Flags, count: int, name: str) -> tuple[bool, ...]:
    """Expand a bool or a sequence of bools to one flag per weight layer."""
    if isinstance(flags, bool):
        return (flags,) * count
    out = tuple(bool(f) for f in flags)
    if len(out) != count:
        raise ConfigError(f"{name} needs {count} flags (one per weight layer), got {len(out)}")
    return out


class LeNet5(nn.Sequential):
    """Classic LeNet-5 for 28x28 inputs (first conv padded by 2), a plain chain of layers.

    Conv2d(in,6,5,p=2) ReLU MaxPool2d(2) Conv2d(6,16,5) ReLU MaxPool2d(2) Flatten
    Linear(400,120) ReLU Linear(120,84) ReLU Linear(84,num_classes).

    It subclasses :class:`torch.nn.Sequential` without overriding ``forward``, so the normaliser can
    read it as a chain.

    Args:
        in_channels: input channels (1 for grey images).
        num_classes: outputs of the last layer.
        bias: whether each of the 5 weight layers has a bias (one bool or 5).
        batch_norm: whether a BatchNorm follows each weight layer (one bool or 5).

    >>> LeNet5()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, *, bias: Flags = True, batch_norm: Flags = False
    ) -> None:
        if in_channels < 1 or num_classes < 1:
            raise ConfigError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        biases = _per_layer(bias, 5, "bias")
        norms = _per_layer(batch_norm, 5, "batch_norm")
        layers: list[nn.Module] = []
        convs = [(in_channels, 6, 2), (6, 16, 0)]
        for i, (c_in, c_out, pad) in enumerate(convs):
            layers.append(nn.Conv2d(c_in, c_out, 5, padding=pad, bias=biases[i]))
            if norms[i]:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
        layers.append(nn.Flatten())
        dense = [(400, 120), (120, 84), (84, num_classes)]
        for i, (d_in, d_out) in enumerate(dense, start=2):
            layers.append(nn.Linear(d_in, d_out, bias=biases[i]))
            if norms[i]:
                layers.append(nn.BatchNorm1d(d_out))
            if i < 4:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        self.in_channels = in_channels
        self.num_classes = num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape, ``(in_channels, 28, 28)``."""
        return (self.in_channels, 28, 28)


class MLP(nn.Sequential):
    """A fully connected ReLU network: Linear ReLU Linear ... Linear (no ReLU after the last).

    Args:
        sizes: layer widths from input to output, e.g. ``(64, 500, 10)``; at least two.
        bias: whether each Linear has a bias (one bool or one per Linear).
        batch_norm: whether a BatchNorm1d follows each Linear (one bool or one per Linear).

    Raises:
        ValueError: fewer than two sizes or a size below 1.

    >>> MLP((64, 500, 10))(torch.zeros(3, 64)).shape
    torch.Size([3, 10])
    """

    def __init__(self, sizes: Sequence[int], *, bias: Flags = True, batch_norm: Flags = False) -> None:
        sizes = tuple(int(s) for s in sizes)
        if len(sizes) < 2 or min(sizes) < 1:
            raise ConfigError(f"MLP needs at least two sizes, all >= 1; got {sizes}")
        count = len(sizes) - 1
        biases = _per_layer(bias, count, "bias")
        norms = _per_layer(batch_norm, count, "batch_norm")
        layers: list[nn.Module] = []
        for i in range(count):
            layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=biases[i]))
            if norms[i]:
                layers.append(nn.BatchNorm1d(sizes[i + 1]))
            if i < count - 1:
                layers.append(nn.ReLU())
        super().__init__(*layers)
        self.sizes = sizes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape, ``(sizes[0],)``."""
        return (self.sizes[0],)


# ---------------------------------------------------------------------------------------------------
# Reading a state_dict as a sequence of weight layers
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerTensors:
    """The tensors of one weight layer found in a state_dict, in the order they were stored.

    Attributes:
        kind: ``"conv"`` (rank-4 weight) or ``"linear"`` (rank-2 weight).
        weight: the layer's weight.
        bias: the layer's bias, or None.
        batch_norm: (weight, bias, running_mean, running_var) of a BatchNorm right after it, or None.
        keys: the state_dict keys these tensors came from (for messages).
    """

    kind: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    batch_norm: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None
    keys: tuple[str, ...]

    def describe(self) -> str:
        """Short text such as ``conv(6, 1, 5, 5)+bias+bn``."""
        text = f"{self.kind}{tuple(self.weight.shape)}"
        if self.bias is not None:
            text += "+bias"
        if self.batch_norm is not None:
            text += "+bn"
        return text


def parse_layers(items: Sequence[tuple[str, torch.Tensor]]) -> list[LayerTensors]:
    """Group an ordered list of (key, tensor) into weight layers (see the module docstring).

    Args:
        items: state_dict entries in the order to read them.

    Returns:
        The weight layers in order.

    Raises:
        CheckpointError: the sequence is not a chain of conv/linear layers with optional bias/BatchNorm.
    """
    layers: list[LayerTensors] = []
    i = 0
    while i < len(items):
        key, weight = items[i]
        if weight.dim() not in (2, 4):
            raise CheckpointError(
                f"tensor {key!r} of shape {tuple(weight.shape)} is where a Conv2d (rank 4) or Linear "
                f"(rank 2) weight was expected"
            )
        _require_float(key, weight)
        out = weight.shape[0]
        j = i + 1
        while j < len(items) and items[j][1].dim() == 1 and items[j][1].shape[0] == out:
            _require_float(*items[j])
            j += 1
        vectors = [t for _, t in items[i + 1 : j]]
        has_counter = j < len(items) and items[j][1].dim() == 0
        if has_counter:
            j += 1
        layers.append(_layer_from_vectors(items[i:j], weight, vectors, has_counter))
        i = j
    return layers


def _require_float(key: str, tensor: torch.Tensor) -> None:
    if not tensor.is_floating_point():
        raise CheckpointError(f"tensor {key!r} has dtype {tensor.dtype}; weights must be floating point")


def _layer_from_vectors(
    entries: Sequence[tuple[str, torch.Tensor]],
    weight: torch.Tensor,
    vectors: list[torch.Tensor],
    has_counter: bool,
) -> LayerTensors:
    """Decide from the number of trailing vectors whether they are a bias and/or BatchNorm tensors."""
    keys = tuple(k for k, _ in entries)
    count = len(vectors)
    if count not in (0, 1, 4, 5) or (has_counter and count not in (4, 5)):
        raise CheckpointError(
            f"after weight {keys[0]!r} of shape {tuple(weight.shape)} come {count} vectors of size "
            f"{weight.shape[0]}{' and a counter' if has_counter else ''}: neither a bias (1), a BatchNorm "
            f"(4) nor both (5); keys {list(keys)}"
        )
    bias = vectors[0] if count in (1, 5) else None
    bn_tensors = vectors[-4:] if count >= 4 else None
    batch_norm = tuple(bn_tensors) if bn_tensors is not None else None
    kind = "conv" if weight.dim() == 4 else "linear"
    return LayerTensors(kind, weight, bias, batch_norm, keys)  # type: ignore[arg-type]


_SUFFIX_RANK = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}


def _natural_key(key: str) -> tuple[Any, ...]:
    """Sort key: module path in natural order ("10" after "9"), then weight, bias, BatchNorm buffers."""
    prefix, _, last = key.rpartition(".")
    if last not in _SUFFIX_RANK:
        prefix, last = key, ""
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", prefix) if p)
    return parts, _SUFFIX_RANK.get(last, 5)


def _candidate_orders(state_dict: Mapping[str, torch.Tensor]) -> list[list[tuple[str, torch.Tensor]]]:
    """The stored order first, then natural key order if that differs."""
    stored = list(state_dict.items())
    natural = sorted(stored, key=lambda kv: _natural_key(kv[0]))
    orders = [stored]
    if [k for k, _ in natural] != [k for k, _ in stored]:
        orders.append(natural)
    return orders


# ---------------------------------------------------------------------------------------------------
# Architectures
# ---------------------------------------------------------------------------------------------------


class Architecture(ABC):
    """A built-in architecture: recognise its weight layers, build the module, load the tensors.

    Subclasses set ``name`` and ``expected`` (a one-line description of the shapes it needs, used
    in error messages) and implement :meth:`match` and :meth:`build`.
    """

    name: str = ""
    expected: str = ""

    @abstractmethod
    def match(self, layers: Sequence[LayerTensors]) -> dict[str, Any] | None:
        """Return constructor arguments if the layers are this architecture, else None."""

    @abstractmethod
    def build(self, config: Mapping[str, Any]) -> nn.Module:
        """Construct an (untrained) module from the arguments :meth:`match` returned."""

    def load(self, layers: Sequence[LayerTensors]) -> tuple[nn.Module, tuple[int, ...]]:
        """Build the module for ``layers`` and copy their tensors into it.

        Returns:
            The module in eval mode and its per-sample input shape.

        Raises:
            CheckpointError: the layers are not this architecture.
        """
        config = self.match(layers)
        if config is None:
            raise CheckpointError(
                f"mismatched --arch {self.name}: expected {self.expected}; found {_describe_layers(layers)}"
            )
        module = self.build(config)
        _copy_layers(module, layers)
        return module.eval(), tuple(module.input_shape)  # type: ignore[arg-type]


def _flags(layers: Sequence[LayerTensors]) -> dict[str, tuple[bool, ...]]:
    return {
        "bias": tuple(layer.bias is not None for layer in layers),
        "batch_norm": tuple(layer.batch_norm is not None for layer in layers),
    }


class LeNet5Architecture(Architecture):
    """LeNet5 as in :class:`LeNet5`; any input channel count and class count."""

    name = "lenet5"
    expected = "LeNet5 weights (6,C,5,5) (16,6,5,5) (120,400) (84,120) (K,84), each with optional bias/BatchNorm"

    def match(self, layers: Sequence[LayerTensors]) -> dict[str, Any] | None:
        kinds = [layer.kind for layer in layers]
        if kinds != ["conv", "conv", "linear", "linear", "linear"]:
            return None
        shapes = [tuple(layer.weight.shape) for layer in layers]
        in_channels, num_classes = shapes[0][1], shapes[4][0]
        wanted = [(6, in_channels, 5, 5), (16, 6, 5, 5), (120, 400), (84, 120), (num_classes, 84)]
        if shapes != wanted:
            return None
        return {"in_channels": in_channels, "num_classes": num_classes, **_flags(layers)}

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        return LeNet5(**config)


class MLPArchitecture(Architecture):
    """A chain of Linear layers of any depth and widths (:class:`MLP`)."""

    name = "mlp"
    expected = "a chain of Linear weights (h1,d) (h2,h1) ... (K,h_last), each with optional bias/BatchNorm"

    def match(self, layers: Sequence[LayerTensors]) -> dict[str, Any] | None:
        if not layers or any(layer.kind != "linear" for layer in layers):
            return None
        sizes = [layers[0].weight.shape[1]]
        for layer in layers:
            out, inp = layer.weight.shape
            if inp != sizes[-1]:
                return None
            sizes.append(out)
        return {"sizes": tuple(sizes), **_flags(layers)}

    def build(self, config: Mapping[str, Any]) -> nn.Module:
        config = dict(config)
        return MLP(config.pop("sizes"), **config)


# Order matters for inference: the more specific architecture is tried first.
ARCHITECTURES: dict[str, Architecture] = {
    "lenet5": LeNet5Architecture(),
    "mlp": MLPArchitecture(),
}


def _describe_layers(layers: Sequence[LayerTensors]) -> str:
    return " ".join(layer.describe() for layer in layers) or "no tensors"


def _weight_slots(module: nn.Module) -> list[tuple[nn.Conv2d | nn.Linear, _BatchNorm | None]]:
    """(conv/linear, following BatchNorm or None) for each weight layer of a zoo module."""
    children = list(module.children())
    slots: list[tuple[nn.Conv2d | nn.Linear, _BatchNorm | None]] = []
    for i, child in enumerate(children):
        if isinstance(child, nn.Conv2d | nn.Linear):
            nxt = children[i + 1] if i + 1 < len(children) else None
            slots.append((child, nxt if isinstance(nxt, _BatchNorm) else None))
    return slots


@torch.no_grad()
def _copy_layers(module: nn.Module, layers: Sequence[LayerTensors]) -> None:
    """Copy each layer's tensors (as float32) into the matching slot of a freshly built module."""
    for (layer, bn), tensors in zip(_weight_slots(module), layers, strict=True):
        layer.weight.copy_(tensors.weight.to(torch.float32))
        if tensors.bias is not None and layer.bias is not None:
            layer.bias.copy_(tensors.bias.to(torch.float32))
        if tensors.batch_norm is not None and bn is not None:
            weight, bias, mean, var = (t.to(torch.float32) for t in tensors.batch_norm)
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
            bn.running_mean = mean.clone()  # assigning a registered buffer replaces it
            bn.running_var = var.clone()


def _check_state_dict(state_dict: Mapping[str, Any]) -> None:
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise CheckpointError("the checkpoint holds no tensors (an empty or non-mapping state_dict)")
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"state_dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                f"expected a mapping of names to tensors"
            )


def _parsed_orders(state_dict: Mapping[str, torch.Tensor]) -> Iterable[list[LayerTensors]]:
    """Parse the candidate orders, yielding each that parses; raises the first error if none does."""
    first_error: CheckpointError | None = None
    parsed_any = False
    for items in _candidate_orders(state_dict):
        try:
            layers = parse_layers(items)
        except CheckpointError as error:
            first_error = first_error or error
            continue
        parsed_any = True
        yield layers
    if not parsed_any and first_error is not None:
        raise first_error


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name of the built-in architecture whose weight shapes the state_dict holds.

    Args:
        state_dict: mapping of names (any) to tensors, in stored order.

    Returns:
        A key of :data:`ARCHITECTURES` (``"lenet5"`` or ``"mlp"``).

    Raises:
        CheckpointError: not a mapping of tensors, or no built-in architecture matches.

    >>> infer_architecture({"a": torch.zeros(5, 3), "b": torch.zeros(5), "c": torch.zeros(2, 5)})
    'mlp'
    """
    return _resolve(state_dict)[0].name


def _resolve(state_dict: Mapping[str, torch.Tensor]) -> tuple[Architecture, list[LayerTensors]]:
    _check_state_dict(state_dict)
    seen: list[list[LayerTensors]] = []
    for layers in _parsed_orders(state_dict):
        seen.append(layers)
        for arch in ARCHITECTURES.values():
            if arch.match(layers) is not None:
                return arch, layers
    expected = "; ".join(f"{a.name}: {a.expected}" for a in ARCHITECTURES.values())
    raise CheckpointError(
        f"no built-in architecture matches the checkpoint's layers {_describe_layers(seen[0])}. "
        f"Expected one of: {expected}. For other architectures save a torch.export program (.pt2)."
    )


def build_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], arch: str | None = None
) -> tuple[nn.Module, tuple[int, ...]]:
    """Build the built-in architecture a state_dict belongs to and load its tensors.

    Args:
        state_dict: mapping of names (any) to tensors, in stored order.
        arch: architecture name to insist on (``"lenet5"``, ``"mlp"``); None infers it.

    Returns:
        The module (eval mode, float32) and its per-sample input shape.

    Raises:
        CheckpointError: unknown ``arch``, tensors that do not match it ("mismatched --arch"), or no
            architecture matches.

    >>> module, shape = build_from_state_dict(LeNet5().state_dict())
    >>> shape
    (1, 28, 28)
    """
    if arch is None:
        architecture, layers = _resolve(state_dict)
        return architecture.load(layers)
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    architecture = ARCHITECTURES[arch]
    _check_state_dict(state_dict)
    try:
        candidates = list(_parsed_orders(state_dict))
    except CheckpointError as error:
        raise CheckpointError(f"mismatched --arch {arch}: expected {architecture.expected}; found: {error}") from error
    for layers in candidates:
        if architecture.match(layers) is not None:
            return architecture.load(layers)
    return architecture.load(candidates[0])  # raises the "mismatched --arch" error
