"""Where verification's inputs come from: the input box, the law of the random inputs, and the default.

Verification stage, first step. Every check but the one on real data needs a box of inputs: random inputs
are drawn in it, the worst-case search climbs inside it and the certified bound holds over it. A box is
*declared* (by the caller, or by the user when the ticket was built), derived *from data* (per-feature
min/max), or, when nothing gives one, the *default*: the builder's ``DEFAULT_INPUT_BOX`` (standardised
features, six standard deviations each way), where random inputs are drawn from the standard normal law
per feature clipped to the box — the law standardised features follow, whereas uniform draws on [-6, 6]
would put most inputs beyond two standard deviations. A declared or derived box is sampled uniformly.
Verification never fails for want of a box: the report states which box and law it used and why.
"""

from __future__ import annotations

from typing import Final

import torch

from ticketsolver.construction.box import DEFAULT_INPUT_BOX
from ticketsolver.errors import ConfigError

__all__ = [
    "DEFAULT_LAW",
    "LAWS",
    "SOURCE_DATA",
    "SOURCE_DECLARED",
    "SOURCE_DEFAULT",
    "SOURCE_TICKET",
    "SOURCE_TICKET_DEFAULT",
    "default_input_box",
    "sample_inputs",
]

#: law name -> how the report states it
LAWS: Final[dict[str, str]] = {
    "uniform": "uniform in the box",
    "normal": "standard normal per feature, clipped to the box",
}
#: the law of the random inputs when the box is the default one
DEFAULT_LAW: Final = "normal"

#: where a box came from, as the report states it
SOURCE_DECLARED: Final = "declared"
SOURCE_DATA: Final = "from data: per-feature min/max"
SOURCE_TICKET: Final = "ticket's build box, declared at build"
SOURCE_TICKET_DEFAULT: Final = "ticket's build box, the default: nothing was declared at build"
SOURCE_DEFAULT: Final = "default: nothing declared, no data"


def default_input_box() -> tuple[float, float]:
    """The box used when nothing declares one: the builder's ``DEFAULT_INPUT_BOX``, so that a ticket built
    without a declared domain is verified over the very box its layers were built for."""
    return (float(DEFAULT_INPUT_BOX[0]), float(DEFAULT_INPUT_BOX[1]))


def sample_inputs(
    lo: torch.Tensor, hi: torch.Tensor, n: int, input_shape: tuple[int, ...], seed: int, law: str = "uniform"
) -> torch.Tensor:
    """``n`` inputs of the box ``[lo, hi]`` drawn from ``law`` (float64, CPU), reproducible from ``seed``.

    Args:
        lo: lower bounds, broadcastable to ``input_shape``.
        hi: upper bounds, same.
        n: number of points.
        input_shape: per-sample shape.
        seed: seed of the CPU generator (the same points on every machine and device).
        law: ``"uniform"`` in the box, or ``"normal"``: standard normal per feature, clipped to the box.

    Returns:
        (n, *input_shape) float64 tensor on the CPU, inside the box.

    Raises:
        ValueError: an unknown law.
    """
    if law not in LAWS:
        raise ConfigError(f"unknown input law {law!r}; expected one of {sorted(LAWS)}")
    generator = torch.Generator().manual_seed(seed)
    lo64, hi64 = lo.to("cpu", torch.float64), hi.to("cpu", torch.float64)
    if law == "normal":
        z = torch.randn((n, *input_shape), generator=generator, dtype=torch.float64)
        return torch.minimum(torch.maximum(z, lo64), hi64)
    u = torch.rand((n, *input_shape), generator=generator, dtype=torch.float64)
    return lo64 + (hi64 - lo64) * u
