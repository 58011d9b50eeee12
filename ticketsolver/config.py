"""The configuration of each pipeline stage: :class:`BuildConfig` (construction) and :class:`VerifyConfig`.

One object per stage, validated once and handed down: the library (``build_ticket``, ``verify``), the CLI,
the batch jobs and the service all take these, with the same defaults and the same rules. Both are frozen
pydantic models. Constructing one with a bad value raises :class:`~ticketsolver.errors.ConfigError` naming
the field; nested inside another pydantic model (a job spec) normal pydantic validation applies. Integers
are strict: ``True`` is not 1, ``1.0`` is not 1 (NumPy integers are accepted and become plain ints).

>>> from ticketsolver.config import BuildConfig, VerifyConfig
>>> config = BuildConfig(n=12, input_domain=(0, 1))
>>> config.tolerance, config.block_draws, config.pure  # resolved for a pure build
(1e-08, 0, True)
>>> config.replace(resample=4).tolerance  # defaults re-resolve for the new kind of build
1e-07
>>> BuildConfig(n=True)
Traceback (most recent call last):
...
ticketsolver.errors.ConfigError: BuildConfig: n must be an integer in [1, 64], got True
>>> VerifyConfig().n_random, VerifyConfig(certify=False).certify
(512, False)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from ticketsolver.errors import ConfigError

__all__ = [
    "DENSITY_POLICIES",
    "DTYPES",
    "MAX_N",
    "MAX_RESAMPLE",
    "PURE_TOLERANCE",
    "RESAMPLE_BLOCK_DRAWS",
    "RESAMPLE_TOLERANCE",
    "SHALLOW_TOLERANCE",
    "BuildConfig",
    "Construction",
    "DensityPolicy",
    "Depth",
    "DEPTHS",
    "VerifyConfig",
]

#: the largest n accepted
MAX_N = 64
#: the most redraw rounds (and construction I block draws) of a re-randomised build: draw indices are uint8
MAX_RESAMPLE = 255
#: default tolerance of a pure build: a subset sum within it needs no larger search (see solvers.auto)
PURE_TOLERANCE = 1e-8
#: default tolerance of a depth-L+1 build: its ~n² times more subset sums stop there (LeNet5, n = 30: max relative
#: output error 2.6e-5 against 1.8e-5 at 1e-8, built ~5x faster)
SHALLOW_TOLERANCE = 1e-6
#: default tolerance of a re-randomised build: a unit is redrawn while its error exceeds it
RESAMPLE_TOLERANCE = 1e-7
#: construction I's default extra block draws when re-randomising (a pure build draws each block once)
RESAMPLE_BLOCK_DRAWS = 8
#: dtypes the verification can run its forward passes in
DTYPES: tuple[Literal["float32", "float64"], ...] = ("float32", "float64")
_MAX_SEED = 2**63 - 1

Construction = Literal["auto", "output_blocks", "input_blocks", "offset_blocks"]
_CONSTRUCTIONS: tuple[str, ...] = ("auto", "output_blocks", "input_blocks", "offset_blocks")
#: layer-wise density policies of an Erdős–Rényi sparse source (ticketsolver.construction.sparsity)
DensityPolicy = Literal["uniform", "erk", "balanced", "pyramidal"]
DENSITY_POLICIES: tuple[str, ...] = ("uniform", "erk", "balanced", "pyramidal")
#: depth of the random network: 2 random layers per target layer (pairs), or L + 1 (Burkholz 2022: copies)
Depth = Literal["2L", "L+1"]
DEPTHS: tuple[str, ...] = ("2L", "L+1")


# --- field checks: each raises ValueError("must be ...") and the error names the field -------------------


def _integer(low: int, high: int, *, optional: bool = False) -> Callable[[Any], int | None]:
    def check(value: Any) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
            raise ValueError(f"must be an integer in [{low}, {high}], got {value!r}")
        return int(value)  # NumPy integers become plain ints (JSON-safe in the manifest)

    return check


def _real(low: float, high: float) -> Callable[[Any], float | None]:
    def check(value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not low <= float(value) <= high:
            raise ValueError(f"must be a number in [{low:g}, {high:g}], got {value!r}")
        return float(value)

    return check


def _box(strict: bool) -> Callable[[Any], tuple[float, float] | None]:
    order = "lo < hi" if strict else "lo <= hi"

    def check(value: Any) -> tuple[float, float] | None:
        if value is None:
            return None
        message = f"must be (lo, hi), finite with {order}, got {value!r}"
        if isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != 2:
            raise ValueError(message)
        if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in value):
            raise ValueError(message)
        lo, hi = float(value[0]), float(value[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi or (strict and lo == hi):
            raise ValueError(message)
        return lo, hi

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _solver(value: Any) -> str:
    from ticketsolver.solvers import available_solvers  # a name registry; backends stay unimported

    if not isinstance(value, str) or value not in available_solvers():
        raise ValueError(f"must be one of {', '.join(available_solvers())}, got {value!r}")
    return value


def _construction(value: Any) -> str:
    if value not in _CONSTRUCTIONS:
        raise ValueError(f"must be one of {', '.join(_CONSTRUCTIONS)}, got {value!r}")
    return str(value)


def _density(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
        raise ValueError(f"must be a number in (0, 1], got {value!r}")
    return float(value)


def _density_policy(value: Any) -> str:
    if value not in DENSITY_POLICIES:
        raise ValueError(f"must be one of {', '.join(DENSITY_POLICIES)}, got {value!r}")
    return str(value)


def _depth(value: Any) -> str:
    if value not in DEPTHS:
        raise ValueError(f"must be one of {', '.join(DEPTHS)}, got {value!r}")
    return str(value)


def _dtypes(value: Any) -> tuple[str, ...]:
    message = f"must be a non-empty list of distinct names from {', '.join(DTYPES)}, got {value!r}"
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple) or not value:
        raise ValueError(message)
    if any(v not in DTYPES for v in value) or len(set(value)) != len(value):
        raise ValueError(message)
    return tuple(value)


Seed = Annotated[int, Field(ge=0, le=_MAX_SEED), BeforeValidator(_integer(0, _MAX_SEED))]
Rounds = Annotated[int, Field(ge=0, le=MAX_RESAMPLE), BeforeValidator(_integer(0, MAX_RESAMPLE))]
Box = tuple[float, float]
Flag = Annotated[bool, BeforeValidator(_boolean)]


class _Config(BaseModel):
    """Shared machinery: frozen, no unknown fields, :class:`ConfigError` on bad values, :meth:`replace`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_describe(type(self).__name__, exc)) from None

    def replace(self, **changes: Any) -> Self:
        """A validated copy with ``changes`` applied. Fields left to their default (``None`` resolved per
        kind of build) are resolved again, so ``replace(resample=4)`` gets the re-randomised defaults."""
        given = {name: getattr(self, name) for name in self.model_fields_set}
        return type(self)(**{**given, **changes})

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (tuples become lists): how tickets, reports and jobs record the config."""
        return self.model_dump(mode="json")


def _describe(name: str, exc: ValidationError) -> str:
    """``BuildConfig: n must be an integer in [1, 64], got 0`` (one clause per bad field)."""
    clauses = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"])
        if error["type"] == "extra_forbidden":
            clauses.append(f"unknown field {field!r}")
            continue
        cause = (error.get("ctx") or {}).get("error")
        text = str(cause) if isinstance(cause, ValueError) else f"{error['msg']}, got {error['input']!r}"
        clauses.append(f"{field} {text}" if field else text)
    return f"{name}: " + "; ".join(clauses)


class BuildConfig(_Config):
    """How a ticket is built; recorded in the ticket's manifest.

    ``None`` fields take the default of the build's kind, resolved on construction: a *pure* build
    (``resample == 0``, one i.i.d. random network) or a *re-randomised* one (``resample > 0``, IteRand).
    """

    n: Annotated[int, Field(ge=1, le=MAX_N), BeforeValidator(_integer(1, MAX_N))] = Field(
        default=20, description="random hidden units per block: candidate coefficients per weight"
    )
    seed: Seed = Field(default=0, description="keys every random tensor (with pair, tensor and draw)")
    solver: Annotated[str, BeforeValidator(_solver)] = Field(
        default="auto",
        description="subset-sum backend (ticketsolver.solvers); auto of a pure build solves to tolerance",
    )
    input_domain: Annotated[Box | None, BeforeValidator(_box(strict=True))] = Field(
        default=None, description="box [lo, hi] of the model's inputs; None: the default box (standardised features)"
    )
    resample: Rounds = Field(
        default=0,
        description="0: a pure source (one i.i.d. random network); R > 0: re-randomisation (IteRand), units whose "
        "error exceeds tolerance are redrawn up to R times (the ticket is then 'rerandomized')",
    )
    tolerance: Annotated[Annotated[float, Field(ge=0)] | None, BeforeValidator(_real(0.0, math.inf))] = Field(
        default=None,
        description="pure: a subset sum within it is accepted (1e-8; depth L+1: 1e-6); resample > 0: units above it "
        "are redrawn (1e-7)",
    )
    block_draws: Annotated[
        Annotated[int, Field(ge=0, le=MAX_RESAMPLE)] | None, BeforeValidator(_integer(0, MAX_RESAMPLE, optional=True))
    ] = Field(default=None, description="construction I: draws of each input block's U rows (resample > 0: 8; pure: 0)")
    scale_margin: Annotated[Annotated[float, Field(ge=0.1, le=100)] | None, BeforeValidator(_real(0.1, 100.0))] = Field(
        default=None,
        description="reach of a block's subset sums in units of the layer's max |w| (None: per construction)",
    )
    construction: Annotated[Construction, BeforeValidator(_construction)] = Field(
        default="auto", description="force one where valid (auto: L when pure, else O where the input is >= 0, else I)"
    )
    source_density: Annotated[float, Field(gt=0, le=1), BeforeValidator(_density)] = Field(
        default=1.0,
        description="overall density p of an Erdos-Renyi sparse random source (Gadhikar et al. 2023): an entry of a "
        "random layer's weights exists with its layer's density, the ticket's masks lie inside; 1: dense",
    )
    density_policy: Annotated[DensityPolicy, BeforeValidator(_density_policy)] = Field(
        default="uniform",
        description="how the sparse source's layers share the density: uniform (p each), erk, balanced (equal "
        "nonzeros per layer) or pyramidal (p_l = r^l)",
    )

    depth: Annotated[Depth, BeforeValidator(_depth)] = Field(
        default="2L",
        description="2L: a pair of random layers per target layer; L+1: one random layer per target layer plus a "
        "first layer of scaled input copies (Burkholz 2022), each layer computing n copies of its target layer",
    )

    @model_validator(mode="after")
    def _resolve_and_check(self) -> Self:
        if self.tolerance is None:
            default = PURE_TOLERANCE if self.pure else RESAMPLE_TOLERANCE
            object.__setattr__(self, "tolerance", SHALLOW_TOLERANCE if self.depth == "L+1" else default)
        if self.block_draws is None:
            object.__setattr__(self, "block_draws", 0 if self.pure else RESAMPLE_BLOCK_DRAWS)
        if self.construction == "offset_blocks" and not self.pure:
            raise ValueError("construction offset_blocks (L) is built from a pure source: use resample=0")
        if self.block_draws and self.pure:
            raise ValueError("block_draws > 0 redraws random values: it needs resample > 0")
        if self.depth == "L+1":
            if not self.pure:
                raise ValueError("depth L+1 is built from a pure source: use resample=0")
            if self.source_density < 1.0:
                raise ValueError("depth L+1 draws a dense source: use source_density=1 (sparse L+1 is not built)")
            if self.construction not in ("auto", "offset_blocks"):
                raise ValueError("depth L+1 starts with construction L (offset_blocks): leave construction auto")
        return self

    @property
    def pure(self) -> bool:
        """True for a build from one i.i.d. random network (no re-randomisation)."""
        return self.resample == 0


class VerifyConfig(_Config):
    """What verification measures and how hard it looks. One set of defaults for library, CLI, jobs and API.

    Why these defaults: on LeNet5 (n = 30, 540 test digits, CPU) the forward passes over the data dominate
    verification, and the worst-case search is what the defaults can make cheap or dear. 4 starts of 30 steps
    found 98% of the float64 worst case that the 8 x 50 search of earlier library versions found, at 30% of
    its cost; the service's former 2 x 10 found 66%. 512 random inputs (measured in each dtype) give the
    typical error on the box; the certified bound covers the whole box, so more buy little. The per-layer
    check takes the first 256 inputs.
    """

    input_box: Annotated[Box | None, BeforeValidator(_box(strict=False))] = Field(
        default=None,
        description="box [lo, hi] of the random inputs, the worst-case search and the certified bound; None: the "
        "box the ticket was built for, else the data's range, else the documented default (the report says which)",
    )
    n_random: Annotated[int, Field(ge=0, le=100_000), BeforeValidator(_integer(0, 100_000))] = Field(
        default=512, description="inputs drawn in the box for the report's random section (0: none)"
    )
    worst_case_starts: Annotated[int, Field(ge=0, le=64), BeforeValidator(_integer(0, 64))] = Field(
        default=4, description="starts of the gradient ascent for the worst case (0: no search)"
    )
    worst_case_steps: Annotated[int, Field(ge=0, le=1_000), BeforeValidator(_integer(0, 1_000))] = Field(
        default=30, description="gradient steps per start"
    )
    dtypes: Annotated[tuple[Literal["float32", "float64"], ...], BeforeValidator(_dtypes)] = Field(
        default=DTYPES, description="dtypes of the forward passes (each measured, and certified with its rounding)"
    )
    certify: Flag = Field(
        default=True,
        description="compute the certified bound (float64), for exact arithmetic and each dtype's forward pass",
    )
    batch_size: Annotated[int, Field(ge=1, le=65_536), BeforeValidator(_integer(1, 65_536))] = Field(
        default=1024, description="inputs per forward pass"
    )
    layer_check_inputs: Annotated[int, Field(ge=0, le=100_000), BeforeValidator(_integer(0, 100_000))] = Field(
        default=256, description="inputs per dtype (data first) that also run through the per-layer check of each pair"
    )
    seed: Seed = Field(default=0, description="seed of the random inputs and starts (the same on every device)")
