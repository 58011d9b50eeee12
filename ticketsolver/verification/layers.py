"""Per-layer checks of a pruned network against its target: where a builder bug would show first.

Verification stage, layer by layer. Every layer of the *target* is fed the target's own activation (the
input that layer receives inside f on the same inputs), and for each pruned pair three things are
compared on that same input: the target layer, the pair itself and the pair's effective-weights layer
(:meth:`PrunedPair.effective`). ``pair - target`` is the approximation error of that layer alone;
``pair - effective`` must be at float rounding level (a construction whose structure or weights do not
match its effective layer is a builder bug). An offset-blocks (L) pair equals its effective layer only
inside the box it was built for, precisely where every kept unit's pre-activation is >= 0: it is compared
with its effective layer on those inputs only, and the inputs outside are counted. A stage of a depth-L+1
network (:class:`~ticketsolver.construction.copies.CopyStage`) is fed the target's activation laid out as
copies, and *every* output copy is compared with the target layer and with the stage's effective weights.
:func:`validate_networks` checks that f and g correspond module by module before anything runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ticketsolver.construction.copies import CopyStage
from ticketsolver.construction.pair import EffectiveLayer, PrunedPair
from ticketsolver.construction.steps import describe_step
from ticketsolver.errors import ConstructionError, VerificationError

__all__ = [
    "SUPPORTED_MODULES",
    "LayerCheck",
    "LayerChecker",
    "check_layers",
    "describe_module",
    "validate_networks",
]

#: module types a target in normal form may contain
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.ReLU,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Flatten,
)


def describe_module(module: nn.Module) -> str:
    """A short human-readable name of a module of the target, e.g. ``Conv2d(1->6, k5x5, s1, p2, d1)``."""
    if isinstance(module, nn.Linear):
        return f"Linear({module.in_features}->{module.out_features})"
    if isinstance(module, nn.Conv2d):
        k, s, p, d = module.kernel_size, module.stride, module.padding, module.dilation
        return (
            f"Conv2d({module.in_channels}->{module.out_channels}, k{k[0]}x{k[1]}, s{_pair_str(s)}, "
            f"p{_pair_str(p)}, d{_pair_str(d)})"
        )
    if isinstance(module, nn.MaxPool2d | nn.AvgPool2d):
        return f"{type(module).__name__}(k{module.kernel_size}, s{module.stride})"
    return type(module).__name__


def _pair_str(value: Any) -> str:
    if isinstance(value, tuple) and len(value) == 2 and value[0] == value[1]:
        return str(value[0])
    return "x".join(str(v) for v in value) if isinstance(value, tuple) else str(value)


def _conv_geometry(conv: nn.Conv2d) -> tuple[Any, ...]:
    return (tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation))


def _check_pair(index: int, layer: nn.Module, pair: PrunedPair) -> None:
    """Raises VerificationError when ``pair`` cannot stand for ``layer`` (shapes, geometry, kind)."""
    where = f"layer {index} ({describe_module(layer)})"
    first, second = pair.first, pair.second
    if second.bias is not None:
        raise VerificationError(f"{where}: the pair's second layer has a bias; a pruned pair's V has none")
    if isinstance(layer, nn.Linear):
        if not (isinstance(first, nn.Linear) and isinstance(second, nn.Linear)):
            raise VerificationError(f"{where}: target is Linear but the pair is made of {pair.kind} layers")
        if first.in_features != layer.in_features or second.out_features != layer.out_features:
            raise VerificationError(
                f"{where}: pair maps {first.in_features} -> {second.out_features} features, target maps "
                f"{layer.in_features} -> {layer.out_features}"
            )
        if second.in_features != first.out_features:
            raise VerificationError(
                f"{where}: pair's hidden widths disagree ({first.out_features} vs {second.in_features})"
            )
        return
    assert isinstance(layer, nn.Conv2d)
    if not (isinstance(first, nn.Conv2d) and isinstance(second, nn.Conv2d)):
        raise VerificationError(f"{where}: target is Conv2d but the pair is made of {pair.kind} layers")
    if first.in_channels != layer.in_channels or second.out_channels != layer.out_channels:
        raise VerificationError(
            f"{where}: pair maps {first.in_channels} -> {second.out_channels} channels, target maps "
            f"{layer.in_channels} -> {layer.out_channels}"
        )
    if _conv_geometry(first) != _conv_geometry(layer) or first.groups != 1:
        raise VerificationError(
            f"{where}: pair's first conv has kernel/stride/padding/dilation {_conv_geometry(first)}, "
            f"the target's are {_conv_geometry(layer)}"
        )
    if tuple(second.kernel_size) != (1, 1) or tuple(second.stride) != (1, 1) or tuple(second.padding) != (0, 0):
        raise VerificationError(f"{where}: pair's second conv must be 1x1 with stride 1 and no padding")
    if second.in_channels != first.out_channels or second.groups != 1:
        raise VerificationError(
            f"{where}: pair's hidden channels disagree ({first.out_channels} vs {second.in_channels})"
        )


def _check_stage(index: int, layer: nn.Module, stage: CopyStage) -> None:
    """Raises VerificationError when a depth-L+1 ``stage`` cannot stand for ``layer`` (shapes, geometry, kind)."""
    where = f"layer {index} ({describe_module(layer)})"
    plan = stage.plan
    weight = layer.weight
    assert isinstance(weight, torch.Tensor)
    if (plan.d_out, plan.d_in) != (weight.shape[0], weight[0].numel()) or (plan.kind == "conv2d") != isinstance(
        layer, nn.Conv2d
    ):
        raise VerificationError(
            f"{where}: the stage stands for a {plan.kind} layer {plan.d_out}x{plan.d_in}, the target's is "
            f"{weight.shape[0]}x{weight[0].numel()}"
        )
    inner = stage.layer
    first: nn.Module = inner
    if isinstance(inner, PrunedPair):
        if plan.copies_in != 0 or not isinstance(inner.second, nn.Linear | nn.Conv2d):
            raise VerificationError(f"{where}: only the first stage of a depth-L+1 network is a pair")
        first = inner.first
    if not isinstance(first, nn.Linear | nn.Conv2d) or (isinstance(first, nn.Conv2d) != isinstance(layer, nn.Conv2d)):
        raise VerificationError(f"{where}: the stage's random layer is {type(first).__name__}")
    if isinstance(first, nn.Conv2d):
        assert isinstance(layer, nn.Conv2d)
        if _conv_geometry(first) != _conv_geometry(layer) or first.groups != 1:
            raise VerificationError(
                f"{where}: the stage's conv has kernel/stride/padding/dilation {_conv_geometry(first)}, the target's "
                f"are {_conv_geometry(layer)}"
            )
    reads = first.in_features if isinstance(first, nn.Linear) else first.in_channels
    expected = plan.channels * (plan.positions if plan.kind == "linear" else 1)
    if plan.copies_in == 0:
        expected = weight[0].numel() if plan.kind == "linear" else plan.channels_in
    if reads != expected:
        raise VerificationError(f"{where}: the stage's random layer reads {reads} inputs, its plan says {expected}")


def validate_networks(target: nn.Sequential, pruned: nn.Sequential) -> list[int]:
    """Checks that ``pruned`` is ``target`` with each Linear/Conv2d replaced by a matching PrunedPair (or, in a
    depth-L+1 network, a matching :class:`CopyStage`).

    Args:
        target: the trained network f in normal form (see :data:`SUPPORTED_MODULES`).
        pruned: the pruned random network g, same length as ``target``.

    Returns:
        The indices of the pruned pairs, in order.

    Raises:
        VerificationError: different lengths, a module the target may not hold (named), a pair where the
            target has no linear layer or none where it has one, shapes or conv geometry that disagree,
            or a non-pair module that differs from the target's.
    """
    if not isinstance(target, nn.Sequential) or not isinstance(pruned, nn.Sequential):
        raise VerificationError(
            f"target and pruned must be nn.Sequential, got {type(target).__name__} and {type(pruned).__name__}"
        )
    if len(target) != len(pruned):
        raise VerificationError(f"target has {len(target)} modules but the pruned network has {len(pruned)}")
    pairs: list[int] = []
    for i, (layer, other) in enumerate(zip(target, pruned, strict=True)):
        if not isinstance(layer, SUPPORTED_MODULES):
            raise VerificationError(
                f"layer {i}: {type(layer).__name__} is not supported by verification; a target in normal "
                f"form holds only {', '.join(t.__name__ for t in SUPPORTED_MODULES)}"
            )
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise VerificationError(
                    f"layer {i} ({describe_module(layer)}): only groups=1 convs with integer zero padding "
                    f"are supported (got groups={layer.groups}, padding={layer.padding!r}, "
                    f"padding_mode={layer.padding_mode!r})"
                )
        if isinstance(layer, nn.MaxPool2d) and layer.return_indices:
            raise VerificationError(f"layer {i}: MaxPool2d with return_indices=True is not a normal-form module")
        if isinstance(layer, nn.Linear | nn.Conv2d):
            if isinstance(other, CopyStage):
                _check_stage(i, layer, other)
                pairs.append(i)
                continue
            if not isinstance(other, PrunedPair):
                raise VerificationError(
                    f"layer {i} ({describe_module(layer)}): the pruned network holds {type(other).__name__} "
                    "where a PrunedPair is expected"
                )
            _check_pair(i, layer, other)
            pairs.append(i)
            continue
        if isinstance(other, PrunedPair | CopyStage):
            raise VerificationError(
                f"layer {i}: the pruned network holds a {type(other).__name__} where the target has "
                f"{type(layer).__name__}"
            )
        if type(other) is not type(layer) or describe_step(other) != describe_step(layer):
            raise VerificationError(
                f"layer {i}: target has {layer!r} but the pruned network has {other!r}; modules between "
                "pairs must be the target's own"
            )
    return pairs


@dataclass(frozen=True)
class LayerCheck:
    """One pruned pair compared with its target layer on the target's own activations, in one dtype.

    Attributes:
        index: position of the layer in the Sequential.
        module: short name of the target layer (:func:`describe_module`).
        construction: ``"output_blocks"``, ``"input_blocks"`` or ``"offset_blocks"``.
        dtype: ``"float32"`` or ``"float64"``.
        n_inputs: number of network inputs the activations came from.
        input_min: smallest entry of the layer's input (O pairs need it >= 0).
        max_abs_target: max ``|target layer output|`` (the scale of the errors below).
        pair_vs_target: max ``|pair(h) - target_layer(h)|``: this layer's approximation error.
        pair_vs_effective: max ``|pair(h) - effective(h)|``: must be float rounding. For an L pair, over the
            inputs where the pair is linear (every kept unit's pre-activation >= 0) only.
        pair_vs_target_relative: ``pair_vs_target / max_abs_target``.
        pair_vs_effective_relative: ``pair_vs_effective / max_abs_target``.
        outside_linear_region: inputs at which an L pair was not linear (outside the box it was built for),
            left out of ``pair_vs_effective``; 0 for O and I.
    """

    index: int
    module: str
    construction: str
    dtype: str
    n_inputs: int
    input_min: float
    max_abs_target: float
    pair_vs_target: float
    pair_vs_effective: float
    pair_vs_target_relative: float
    pair_vs_effective_relative: float
    outside_linear_region: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _relative(value: float, scale: float) -> float:
    if scale > 0:
        return value / scale
    return 0.0 if value == 0 else float("inf")


class LayerChecker:
    """Runs the target layer by layer on batches and accumulates :class:`LayerCheck` statistics.

    ``target`` and ``pruned`` must already be on the device and in the dtype of the check; the effective
    layers are computed once, in that dtype, from the pairs' own tensors.

    Args:
        target: the target network f.
        pruned: the pruned network g (validated against ``target``).

    Raises:
        VerificationError: the networks do not correspond (see :func:`validate_networks`), or a pair's
            sparsity pattern does not have the structure of its construction.
    """

    def __init__(self, target: nn.Sequential, pruned: nn.Sequential) -> None:
        self.target, self.pruned = target, pruned
        self.pair_indices = validate_networks(target, pruned)
        self.effective: dict[int, EffectiveLayer] = {}
        self.stage_effective: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # depth L+1: per copy (W', b')
        for i in self.pair_indices:
            pair = pruned[i]
            if isinstance(pair, CopyStage):
                self.stage_effective[i] = pair.effective()
                continue
            assert isinstance(pair, PrunedPair)
            try:
                self.effective[i] = pair.effective(pair.first.weight.dtype)
            except ConstructionError as exc:
                raise VerificationError(f"layer {i} ({describe_module(target[i])}): {exc}") from exc
            target_weight, effective_weight = target[i].weight, self.effective[i].weight_pos
            assert isinstance(target_weight, torch.Tensor) and isinstance(effective_weight, torch.Tensor)
            if effective_weight.shape != target_weight.shape:
                raise VerificationError(
                    f"layer {i}: effective weight shape {tuple(effective_weight.shape)} != "
                    f"target weight shape {tuple(target_weight.shape)}"
                )
        params = list(target.parameters())
        self.dtype = params[0].dtype if params else None
        self._n = 0
        self._stats = {
            i: {"input_min": float("inf"), "target": 0.0, "pair_target": 0.0, "pair_effective": 0.0, "outside": 0}
            for i in self.pair_indices
        }

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> torch.Tensor:
        """Adds one batch of network inputs; returns the target's output on them (so f is run once).

        Args:
            x: (B, *input_shape) inputs in the networks' dtype and device.

        Returns:
            ``target(x)``.
        """
        h = x
        pairs = set(self.pair_indices)
        for i, layer in enumerate(self.target):
            if i not in pairs:
                h = layer(h)
                continue
            out_target = layer(h)
            pair = self.pruned[i]
            if isinstance(pair, CopyStage):
                out_pair, linear, out_effective = _stage_forward(pair, h, self.stage_effective[i])
                out_target = out_target.unsqueeze(2)  # against every copy
            else:
                assert isinstance(pair, PrunedPair)
                out_pair, linear = _pair_forward(pair, h)
                out_effective = self.effective[i](h)
            stats = self._stats[i]
            stats["input_min"] = min(stats["input_min"], float(h.min()))
            stats["target"] = max(stats["target"], float(out_target.abs().max()))
            stats["pair_target"] = max(stats["pair_target"], float((out_pair - out_target).abs().max()))
            gap = (out_pair - out_effective).abs().flatten(1).amax(1)
            if linear is not None:
                stats["outside"] += int((~linear).sum())
                gap = gap[linear]
            if gap.numel():
                stats["pair_effective"] = max(stats["pair_effective"], float(gap.max()))
            h = layer(h) if isinstance(pair, CopyStage) else out_target
        self._n += int(x.shape[0])
        return h

    @property
    def n_inputs(self) -> int:
        """Inputs checked so far."""
        return self._n

    def result(self) -> list[LayerCheck]:
        """One :class:`LayerCheck` per pair over every batch added so far."""
        dtype = str(self.dtype).removeprefix("torch.") if self.dtype is not None else "unknown"
        checks = []
        for i in self.pair_indices:
            s = self._stats[i]
            pair = self.pruned[i]
            construction = _stage_construction(pair)
            checks.append(
                LayerCheck(
                    index=i,
                    module=describe_module(self.target[i]),
                    construction=construction,
                    dtype=dtype,
                    n_inputs=self._n,
                    input_min=s["input_min"],
                    max_abs_target=s["target"],
                    pair_vs_target=s["pair_target"],
                    pair_vs_effective=s["pair_effective"],
                    pair_vs_target_relative=_relative(s["pair_target"], s["target"]),
                    pair_vs_effective_relative=_relative(s["pair_effective"], s["target"]),
                    outside_linear_region=int(s["outside"]),
                )
            )
        return checks


def _pair_forward(pair: PrunedPair, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``pair(h)``, and for an L pair which inputs it is linear at: every kept hidden unit (one with a kept
    V entry) has a pre-activation >= 0 there, so the ReLU is the identity and the pair is its effective layer.
    """
    if pair.construction != "offset_blocks":
        return pair(h), None
    out, least = pair.forward_with_margin(h)
    return out, least >= 0


def _stage_construction(module: nn.Module) -> str:
    """``offset_blocks`` etc. for a pair; a depth-L+1 stage: its first (an L pair) or ``copies``."""
    if isinstance(module, CopyStage):
        return module.layer.construction if isinstance(module.layer, PrunedPair) else "copies"
    assert isinstance(module, PrunedPair)
    return module.construction


def _stage_forward(
    stage: CopyStage, h: torch.Tensor, effective: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """A depth-L+1 stage on the target's activation ``h``: its output copies, where it is linear (the first stage,
    an L pair; None otherwise) and the output copies of its effective weights ``effective``
    (:meth:`CopyStage.effective`), each ``(B, d_out, copies, *spatial)``."""
    plan = stage.plan
    x = plan.expand(h, stage.constants_in.to(h.device))
    if isinstance(stage.layer, PrunedPair):
        out, linear = _pair_forward(stage.layer, x)
    else:
        out, linear = stage(x), None
    return plan.collapse(out), linear, stage.effective_forward(h, effective)


def check_layers(target: nn.Sequential, pruned: nn.Sequential, x: torch.Tensor) -> list[LayerCheck]:
    """Per-layer comparison of ``pruned`` with ``target`` on one batch of inputs (see :class:`LayerChecker`).

    Args:
        target: the target network f, in the dtype and on the device of ``x``.
        pruned: the pruned network g, same dtype and device.
        x: (B, *input_shape) network inputs.

    Returns:
        One :class:`LayerCheck` per pruned pair.

    Raises:
        VerificationError: the networks do not correspond.
    """
    checker = LayerChecker(target, pruned)
    checker.update(x)
    return checker.result()
