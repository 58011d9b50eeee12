"""The configuration of mask learning: :class:`LearnConfig` (edge-popup, IteRand).

Same machinery as :class:`~ticketsolver.config.BuildConfig`: a frozen pydantic model, a bad value raises
:class:`~ticketsolver.errors.ConfigError` naming the field, integers are strict, ``replace`` returns a validated
copy and ``to_dict`` is what the learned ticket records under ``build["config"]``.

>>> from ticketsolver.learning import LearnConfig
>>> config = LearnConfig(method="iterand", keep=0.3)
>>> config.rerand_period, config.rerand_rate, config.replace(keep=None).keep is None
(300, 0.1, True)
>>> LearnConfig(keep=0.0)
Traceback (most recent call last):
...
ticketsolver.errors.ConfigError: LearnConfig: keep must be a number in (0, 1], got 0.0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from ticketsolver.config import MAX_RESAMPLE, _boolean, _Config, _integer, _real
from ticketsolver.config import Seed as _Seed

__all__ = ["MAX_WIDTH", "InitLaw", "LearnConfig", "Method"]

#: the largest width multiplier accepted (a LeNet5 at 64x already holds ~180 M random values)
MAX_WIDTH = 64.0

Method = Literal["edge-popup", "iterand"]
InitLaw = Literal["signed_constant", "kaiming_normal"]
_METHODS: tuple[str, ...] = ("edge-popup", "iterand")
_INITS: tuple[str, ...] = ("signed_constant", "kaiming_normal")


def _open_unit(*, optional: bool) -> Callable[[Any], float | None]:
    """A number in (0, 1]: a kept fraction or a probability that must not be 0."""

    def check(value: Any) -> float | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
            raise ValueError(f"must be a number in (0, 1], got {value!r}")
        return float(value)

    return check


def _positive(high: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= high:
            raise ValueError(f"must be a number in (0, {high:g}], got {value!r}")
        return float(value)

    return check


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return str(value)

    return check


def _required(check: Callable[[Any], float | None]) -> Callable[[Any], float]:
    """``check`` for a field where None is not a value (``_real`` passes None through)."""

    def strict(value: Any) -> float:
        result = check(value)
        if result is None:
            raise ValueError(f"must be a number, got {value!r}")
        return result

    return strict


class LearnConfig(_Config):
    """How a mask is learned over a frozen random network; recorded in the learned ticket's manifest.

    Edge-popup (Ramanujan et al., CVPR 2020) trains one score per random weight and keeps, in every layer
    tensor, the ``keep`` fraction of largest |score|; IteRand (Chijiwa et al., NeurIPS 2021) also redraws,
    every ``rerand_period`` iterations, each pruned weight with probability ``rerand_rate``.

    Why these defaults: they are hidden-networks' CIFAR settings (SGD, lr 0.1, momentum 0.9, weight decay 5e-4 on
    the scores, cosine schedule, signed-constant weights with the scaled fan; batch 64 instead of 256, as the
    bundled datasets are small) and IteRand's (period 300 iterations, rate 0.1). Measured on the bundled tasks at
    keep 0.5 (2 CPU cores), they need no tuning: LeNet5 on the 28x28 digits (1,257 training images, 20 iterations
    per epoch) reaches 97.8% test accuracy at width 1 (14 s) and 98.1% at width 2 (44 s) in 30 epochs; the
    13-64-3 MLP on wine 98.1% at width 1 and 100% at width 2 (well under a second). IteRand's period counts
    iterations: on a small dataset 300 iterations are many epochs (15 on the digits, two events in 30 epochs),
    so short runs need a smaller period to re-randomise at all (period 20 on the digits: 98.3%).
    """

    method: Annotated[Method, BeforeValidator(_choice(_METHODS))] = Field(
        default="edge-popup", description="edge-popup (scores only) or iterand (scores + re-randomised pruned weights)"
    )
    keep: Annotated[float | None, BeforeValidator(_open_unit(optional=True))] = Field(
        default=None,
        description="kept fraction of every layer tensor; None: 0.5, or on a constructed ticket's source "
        "(--source-of, --init-from) that ticket's own kept fraction of each tensor",
    )
    width: Annotated[float, BeforeValidator(_positive(MAX_WIDTH))] = Field(
        default=1.0,
        description="hidden widths (and channels) of the random network = the architecture's times width, rounded, "
        ">= 1; the input and the output stay",
    )
    epochs: Annotated[int, Field(ge=1, le=10_000), BeforeValidator(_integer(1, 10_000))] = Field(
        default=30, description="passes over the training set"
    )
    batch_size: Annotated[int, Field(ge=1, le=65_536), BeforeValidator(_integer(1, 65_536))] = Field(
        default=64, description="examples per SGD step"
    )
    lr: Annotated[float, BeforeValidator(_positive(100.0))] = Field(
        default=0.1, description="SGD learning rate of the scores at iteration 0 (cosine schedule down to 0)"
    )
    momentum: Annotated[float, BeforeValidator(_required(_real(0.0, 0.999)))] = Field(
        default=0.9, description="SGD momentum"
    )
    weight_decay: Annotated[float, BeforeValidator(_required(_real(0.0, 1.0)))] = Field(
        default=5e-4, description="L2 weight decay of the scores (the random weights are frozen)"
    )
    init: Annotated[InitLaw, BeforeValidator(_choice(_INITS))] = Field(
        default="signed_constant",
        description="law of the random weights: ±std with equal probability (signed_constant) or normal with that "
        "std (kaiming_normal); std = sqrt(2 / fan_in)",
    )
    scale_fan: Annotated[bool, BeforeValidator(_boolean)] = Field(
        default=True,
        description="hidden-networks' --scale-fan: fan_in multiplied by keep, std = sqrt(2 / (fan_in * keep)), so "
        "the kept network's activations keep their scale",
    )
    seed: _Seed = Field(
        default=0,
        description="keys the random network (with layer, tensor and draw), the scores' initialisation, the "
        "minibatch order and IteRand's choices",
    )
    rerand_period: Annotated[int, Field(ge=1, le=10**9), BeforeValidator(_integer(1, 10**9))] = Field(
        default=300, description="iterand: iterations between re-randomisations (IteRand's K_per)"
    )
    rerand_rate: Annotated[float, BeforeValidator(_open_unit(optional=False))] = Field(
        default=0.1, description="iterand: probability that a pruned weight is redrawn at an event (IteRand's lambda)"
    )

    @property
    def default_keep(self) -> float:
        """``keep``, or 0.5 where it is left to the network (a network without an initial mask)."""
        return 0.5 if self.keep is None else self.keep

    def rerandomizations(self, examples: int) -> tuple[int, int, int]:
        """``(iterations, events, least period)`` of a run on ``examples`` training examples: its SGD steps, its
        re-randomisations (0 for edge-popup) and the smallest ``rerand_period`` that keeps them within
        :data:`~ticketsolver.config.MAX_RESAMPLE` (draw indices are uint8)."""
        iterations = self.epochs * math.ceil(examples / self.batch_size)
        events = iterations // self.rerand_period if self.method == "iterand" else 0
        return iterations, events, iterations // (MAX_RESAMPLE + 1) + 1
