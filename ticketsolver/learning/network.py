"""The frozen random network a mask is learned over: its layers as ticket units, before any mask exists.

Mask learning's first stage. A :class:`RandomNetwork` says which random values the network holds (seed and
:class:`~ticketsolver.ticket.layer.LayerLayout` streams, so the learned ticket regenerates them bit for bit) and
which modules run between its layers. It comes from one of two places:

- :func:`random_network_of`: a target's architecture, widened, with hidden-networks' initialisation (no bias,
  signed-constant or Kaiming-normal weights), every layer drawn from its own stream ``(k, "W")``;
- :func:`network_of_ticket`: a constructed ticket's random source, each pair as its two layers (U with beta,
  then V), drawing from the pair's own streams; optionally with the construction's masks as the starting mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.construction import ConvGeometry, PairLayout, describe_step
from ticketsolver.construction.steps import as_pair
from ticketsolver.errors import ConfigError
from ticketsolver.learning.config import MAX_WIDTH, InitLaw, LearnConfig
from ticketsolver.models import Target
from ticketsolver.source import Law, RandomSource
from ticketsolver.ticket import Ticket
from ticketsolver.ticket.layer import LayerLayout, Stream, layers_of_pair

__all__ = ["Origin", "RandomNetwork", "network_for", "network_of_ticket", "random_network_of"]

#: where a random network comes from: an architecture, a ticket's source, or a ticket's source and masks
Origin = Literal["arch", "source-of", "init-from"]

#: LearnConfig.init -> the source's law of the weights
_LAWS: dict[str, Law] = {"signed_constant": "signed_constant", "kaiming_normal": "normal"}
#: relu's gain sqrt(2): std = sqrt(2 / fan_in) keeps the activations' scale through ReLU layers
_GAIN_SQUARED = 2.0


@dataclass(frozen=True)
class RandomNetwork:
    """A frozen random network: everything of a learned ticket except its masks and draws.

    Attributes:
        seed: the random source's seed.
        input_shape: per-sample input shape.
        steps: ``{"op": "layer", "unit": k}`` for layer k, else a kept module (relu, pools, flatten).
        layouts: one :class:`LayerLayout` per layer, ``layouts[k].unit == k``.
        target_params: weights and biases of the target (or of the constructed ticket's target).
        origin: ``"arch"`` (:func:`random_network_of`), ``"source-of"`` or ``"init-from"`` (:func:`network_of_ticket`).
        init_masks: per layer, the starting mask per tensor name (a warm start), or None.
        keep_per_unit: per layer, the kept fraction of each tensor of ``init_masks``, or None.
    """

    seed: int
    input_shape: tuple[int, ...]
    steps: list[dict[str, Any]]
    layouts: list[LayerLayout]
    target_params: int
    origin: Origin
    init_masks: list[dict[str, np.ndarray]] | None = None
    keep_per_unit: list[dict[str, float]] | None = None

    @property
    def source(self) -> RandomSource:
        return RandomSource(self.seed)

    def source_params(self) -> int:
        """Every random value of the network (draw 0)."""
        return sum(layout.source_params() for layout in self.layouts)


def random_network_of(
    target: Target,
    *,
    width: float = 1.0,
    init: InitLaw = "signed_constant",
    keep: float = 0.5,
    scale_fan: bool = True,
    seed: int = 0,
) -> RandomNetwork:
    """The target's architecture as a frozen random network, hidden-networks style.

    Every Linear/Conv2d of the target's normal form becomes a random layer without bias whose output width is
    ``max(1, round(width * d_out))`` (the last layer's output stays); its input follows the previous layer,
    through pools and flatten (a Linear after Flatten sees the widened channels). Its weights are drawn from
    stream ``(k, "W")`` with std ``sqrt(2 / (fan_in * keep))`` (``scale_fan``) or ``sqrt(2 / fan_in)``,
    fan_in = the random layer's d_in.

    Args:
        target: the trained network in normal form (its weights are only counted).
        width: hidden width multiplier, in (0, 64].
        init: ``"signed_constant"`` (±std) or ``"kaiming_normal"`` (Gaussian of that std).
        keep: the kept fraction the scale is computed for (``scale_fan``).
        scale_fan: multiply fan_in by keep (hidden-networks' ``--scale-fan``).
        seed: the random source's seed.

    Raises:
        ConfigError: a bad width, keep or init, or ``target`` is not a Target.

    >>> from ticketsolver.models import MLP, Target
    >>> net = random_network_of(Target.from_module(MLP((13, 64, 3)), (13,)), width=2.0)
    >>> [(u.d_out, u.d_in, u.bias) for u in net.layouts], net.target_params
    ([(128, 13, None), (3, 128, None)], 1091)
    """
    if not isinstance(target, Target):
        raise ConfigError(f"random_network_of needs a Target, got {type(target).__name__}")
    if isinstance(width, bool) or not 0.0 < float(width) <= MAX_WIDTH:
        raise ConfigError(f"width must be a number in (0, {MAX_WIDTH:g}], got {width!r}")
    if isinstance(keep, bool) or not 0.0 < float(keep) <= 1.0:
        raise ConfigError(f"keep must be a number in (0, 1], got {keep!r}")
    if init not in _LAWS:
        raise ConfigError(f"init must be one of {', '.join(_LAWS)}, got {init!r}")
    law = _LAWS[init]
    fan_factor = float(keep) if scale_fan else 1.0
    n_layers = sum(isinstance(m, nn.Linear | nn.Conv2d) for m in target.module)
    # shapes only: a meta tensor carries them through pools and flatten without computing anything
    x = torch.empty((1, *target.input_shape), device="meta")
    steps: list[dict[str, Any]] = []
    layouts: list[LayerLayout] = []
    for module in target.module:
        if not isinstance(module, nn.Linear | nn.Conv2d):
            steps.append(describe_step(module))
            x = module(x)
            continue
        k = len(layouts)
        d_out = module.weight.shape[0]
        if k < n_layers - 1:
            d_out = max(1, round(width * d_out))
        geometry: ConvGeometry | None = None
        if isinstance(module, nn.Linear):
            d_in = int(x.shape[-1])
            x = x.new_empty((*x.shape[:-1], d_out))
        else:
            geometry = ConvGeometry(
                in_channels=int(x.shape[1]),
                kernel_size=tuple(as_pair(module.kernel_size)),  # type: ignore[arg-type]
                stride=tuple(as_pair(module.stride)),  # type: ignore[arg-type]
                padding=tuple(as_pair(module.padding)),  # type: ignore[arg-type]
                dilation=tuple(as_pair(module.dilation)),  # type: ignore[arg-type]
            )
            d_in = geometry.in_channels * math.prod(geometry.kernel_size)
            kernel = x.new_empty((d_out, geometry.in_channels, *geometry.kernel_size))
            x = F.conv2d(x, kernel, None, geometry.stride, geometry.padding, geometry.dilation)
        scale = math.sqrt(_GAIN_SQUARED / (d_in * fan_factor))
        kind: Literal["linear", "conv2d"] = "linear" if geometry is None else "conv2d"
        layouts.append(LayerLayout(k, kind, d_out, d_in, weight=Stream(k, "W", law, scale), conv=geometry))
        steps.append({"op": "layer", "unit": k})
    if not layouts:
        raise ConfigError("the target has no Linear or Conv2d layer: there is nothing to learn a mask over")
    return RandomNetwork(
        seed=int(seed),
        input_shape=tuple(target.input_shape),
        steps=steps,
        layouts=layouts,
        target_params=sum(p.numel() for p in target.module.parameters()),
        origin="arch",
    )


def network_for(target: Target, config: LearnConfig) -> RandomNetwork:
    """:func:`random_network_of` the target as ``config`` asks: its width, initialisation law, seed, and the keep
    the weights' scale is computed for (``config.default_keep`` under ``scale_fan``)."""
    return random_network_of(
        target,
        width=config.width,
        init=config.init,
        keep=config.default_keep,
        scale_fan=config.scale_fan,
        seed=config.seed,
    )


def network_of_ticket(ticket: Ticket, *, use_masks: bool) -> RandomNetwork:
    """A constructed ticket's random source as a layer network: each pair becomes U (+beta), ReLU, V.

    The layers draw from the pair's own streams, so their values are the construction's bit for bit. The
    construction's kept fraction of each tensor is the default keep (``LearnConfig.keep=None``: the same budget
    as the constructed ticket; its source is not variance-scaled, and keeping half of it makes activations of
    ~1e10 on LeNet5, where no score can be trained). With ``use_masks`` (``--init-from``) the construction's
    masks are also the starting mask (U and beta -> the first layer's weight and bias, V -> the second's).

    Args:
        ticket: a constructed ticket from a pure build.
        use_masks: start from the ticket's masks (origin ``"init-from"``) or not (``"source-of"``).

    Raises:
        ConfigError: the ticket already has learned layer units, or some pair was re-randomised (its draw
            indices name whole construction units, a block of entries at once, not single entries, so they
            have no per-entry form), or some pair draws from an Erdős–Rényi sparse source (a layer's stream has no
            ER mask).
    """
    if any(not isinstance(layout, PairLayout) for layout in ticket.layouts) or any(
        step.get("op") == "layer" for step in ticket.steps
    ):
        raise ConfigError("the ticket already holds learned layers; learn from a constructed ticket (pairs only)")
    redrawn = [k for k, draws in enumerate(ticket.draws) if draws.any()]
    if redrawn:
        raise ConfigError(
            f"pairs {redrawn} of the ticket were re-randomised (resample > 0): a pair's draw indices belong to "
            "construction units (one draw for a whole block of entries), not to single entries as a learned "
            "layer's do; learn from a pure build (resample=0)"
        )
    sparse = [k for k, layout in enumerate(ticket.layouts) if isinstance(layout, PairLayout) and layout.sparse]
    if sparse:
        raise ConfigError(
            f"pairs {sparse} of the ticket draw from an Erdős–Rényi sparse source: a learned layer's stream has no ER "
            "mask yet, so it would not hold the same values; learn from a dense build (source_density=1)"
        )
    steps: list[dict[str, Any]] = []
    layouts: list[LayerLayout] = []
    init_masks: list[dict[str, np.ndarray]] = []
    for step in ticket.steps:
        if step.get("op") != "pair":
            steps.append(dict(step))
            continue
        p = int(step["pair"])
        pair = ticket.layouts[p]
        assert isinstance(pair, PairLayout)
        first, second = layers_of_pair(pair, len(layouts))
        steps += [{"op": "layer", "unit": first.unit}, {"op": "relu"}, {"op": "layer", "unit": second.unit}]
        layouts += [first, second]
        masks = ticket.dense_masks(p)  # the layers hold U whole (an L pair's mask expanded)
        init_masks.append({"weight": masks["U"]} | ({"bias": masks["beta"]} if first.bias is not None else {}))
        init_masks.append({"weight": masks["V"]})
    keep_per_unit = [{name: float(mask.mean()) for name, mask in masks.items()} for masks in init_masks]
    return RandomNetwork(
        seed=ticket.seed,
        input_shape=ticket.input_shape,
        steps=steps,
        layouts=layouts,
        target_params=int(ticket.sizes()["target_params"]),
        origin="init-from" if use_masks else "source-of",
        init_masks=[{k: v.copy() for k, v in m.items()} for m in init_masks] if use_masks else None,
        keep_per_unit=keep_per_unit,
    )
