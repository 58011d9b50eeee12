"""What a job asks for (:class:`JobSpec`), what the service allows (:class:`Limits`), and a job's states.

Place in the pipeline: jobs/service. A JobSpec is the one description of a job: the service takes it as
its request model, validates it once, stores it with the job as JSON (:meth:`JobSpec.to_dict`), and the
worker that builds each item reads it back (:meth:`JobSpec.from_dict`). How each ticket is built and
verified is the library's own :class:`~ticketsolver.config.BuildConfig` and
:class:`~ticketsolver.config.VerifyConfig`, with their defaults; only what is about the *job* lives at
the top level: the values of n (one item per n and checkpoint), the architecture of bare state_dicts and
the wall-clock limit of an item. A job with a ``learn`` section (:class:`LearnSpec`: the library's
:class:`~ticketsolver.learning.LearnConfig` and a bundled dataset) learns a mask over a random network of
each checkpoint's architecture instead (one item per checkpoint; n, build and verify do not apply). A job
with a ``sweep`` section (:class:`SweepSection`: the library's :class:`~ticketsolver.sweep.SweepSpec` and
optionally a bundled dataset) builds and verifies its one checkpoint at every setting of a grid with
:func:`ticketsolver.sweep.run_sweep` (one item; n, build and verify are the section's own).

>>> spec = JobSpec(n=[16, 20], build={"seed": 3})
>>> spec.n, spec.build_config(16).n, spec.build_config(16).seed
((16, 20), 16, 3)
>>> JobSpec.from_dict(spec.to_dict()) == spec
True
>>> learned = JobSpec(learn={"method": "iterand", "keep": 0.5, "data": "wine", "rerand_period": 5})
>>> learned.learn.config().method, learned.learn.data, learned.verify
('iterand', 'wine', None)
>>> swept = JobSpec(sweep={"n": [8, 10], "data": "wine"})
>>> swept.sweep.sweep_spec().n, swept.sweep.data, swept.verify
((8, 10), 'wine', None)
>>> JobSpec.from_dict({"seed": 3})
Traceback (most recent call last):
...
ticketsolver.errors.ConfigError: JobSpec: unknown field 'seed': it is a build setting, give it as build.seed
"""

from __future__ import annotations

import enum
import math
import numbers
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

from ticketsolver.config import MAX_N, MAX_RESAMPLE, BuildConfig, VerifyConfig
from ticketsolver.errors import ConfigError
from ticketsolver.learning.config import LearnConfig
from ticketsolver.sweep import SweepSpec

if TYPE_CHECKING:
    from ticketsolver.data import Dataset

__all__ = [
    "LEARN_DATA",
    "JobSpec",
    "JobState",
    "LearnData",
    "LearnSpec",
    "Limits",
    "SweepSection",
    "default_memory_budget",
    "load_bundled_data",
]


class JobState(enum.StrEnum):
    """A job's (and an item's) life: queued -> running -> succeeded | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


def _n_values(value: Any) -> tuple[int, ...]:
    """An integer or a non-empty list of distinct integers, each in [1, MAX_N]; ``true`` is not 1."""
    values = list(value) if isinstance(value, list | tuple) else [value]
    message = f"must be an integer in [1, {MAX_N}] or a non-empty list of distinct ones, got {value!r}"
    if not values:
        raise ValueError(message)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 1 <= int(v) <= MAX_N:
            raise ValueError(message)
    if len(set(values)) != len(values):
        raise ValueError(f"must not repeat a value, got {value!r}")
    return tuple(int(v) for v in values)


def _verify_value(value: Any) -> Any:
    if isinstance(value, bool):  # a boolean was the flat form of older versions
        raise ValueError(f"must be an object of verification settings ({{}} for the defaults) or null, got {value!r}")
    return value


def _time_limit(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0 < float(value) < math.inf):
        raise ValueError(f"must be a positive number of seconds, got {value!r}")
    return float(value)


_N_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_N},
        {
            "type": "array",
            "items": {"type": "integer", "minimum": 1, "maximum": MAX_N},
            "minItems": 1,
            "uniqueItems": True,
        },
    ]
}
#: top-level keys that belong to one of the nested configs: named in the error of an unknown key
_BUILD_FIELDS = frozenset(BuildConfig.model_fields) - {"n"}
_VERIFY_FIELDS = frozenset(VerifyConfig.model_fields)
#: the flat keys of the specs stored before the nested form (migration 0002 rewrites them)
_OLD_VERIFY_NAMES = {"verify_box": "input_box"}


class LearnData(NamedTuple):
    """A bundled dataset a learned-mask job may train on, as the library splits it (test 0.3, seed 0)."""

    loader: str  # its function in ticketsolver.data
    input_shape: tuple[int, ...]  # per-sample input shape
    classes: int
    train_examples: int  # examples per epoch (IteRand's event count depends on it)
    test_examples: int  # examples the learned network is measured on


#: the data a learned-mask job may name: bundled only, since the service never reads a client's data file
LEARN_DATA: dict[str, LearnData] = {
    "digits": LearnData("load_digits_28", (1, 28, 28), 10, 1257, 540),
    "digits-flat": LearnData("load_digits_flat", (64,), 10, 1257, 540),
    "wine": LearnData("load_wine_standardized", (13,), 3, 124, 54),
}


def _data_name(value: Any) -> str:
    if value not in LEARN_DATA:
        raise ValueError(f"must be one of {', '.join(LEARN_DATA)} (the bundled datasets), got {value!r}")
    return str(value)


def _optional_data_name(value: Any) -> str | None:
    return None if value is None else _data_name(value)


def load_bundled_data(name: str) -> Dataset:
    """The bundled dataset ``name`` (a key of :data:`LEARN_DATA`; needs scikit-learn, as the library's loaders do)."""
    from ticketsolver import data

    loaded: Dataset = getattr(data, LEARN_DATA[name].loader)()
    return loaded


class LearnSpec(LearnConfig):
    """A job's ``learn`` section: how each item learns its mask (the library's
    :class:`~ticketsolver.learning.LearnConfig`, same fields, validation and defaults) and on which bundled
    dataset. A bad value raises :class:`~ticketsolver.errors.ConfigError` naming the field."""

    data: Annotated[Literal["digits", "digits-flat", "wine"], BeforeValidator(_data_name)] = Field(
        description="bundled dataset to learn the mask on: digits (1x28x28, for LeNet5), digits-flat (64 "
        "features) or wine (13 features, 3 classes); the checkpoint's input and output must fit it"
    )

    @model_validator(mode="before")
    @classmethod
    def _data_is_named(cls, data: Any) -> Any:
        if isinstance(data, dict) and "data" not in data:
            raise ValueError(f"data is required: the bundled dataset to learn on, one of {', '.join(LEARN_DATA)}")
        return data

    @model_validator(mode="after")
    def _rerandomizations_fit(self) -> LearnSpec:
        """IteRand's draw indices are uint8: refuse, before any upload is read, a run that would redraw more
        often (``learn_mask`` would refuse it too, but only once the item runs)."""
        iterations, events, least = self.rerandomizations(LEARN_DATA[self.data].train_examples)
        if events > MAX_RESAMPLE:
            raise ValueError(
                f"rerand_period {self.rerand_period} re-randomises {events} times in "
                f"{iterations} iterations ({self.epochs} epochs on {self.data}); draw indices are uint8, so at most "
                f"{MAX_RESAMPLE}: give rerand_period >= {least}"
            )
        return self

    def config(self) -> LearnConfig:
        """The library's :class:`LearnConfig` of this section (everything but ``data``)."""
        return LearnConfig(**{name: getattr(self, name) for name in self.model_fields_set - {"data"}})

    def load_data(self) -> Dataset:
        """The bundled dataset (needs scikit-learn, as the library's loaders do)."""
        return load_bundled_data(self.data)


_LEARN_FIELDS = frozenset(LearnSpec.model_fields)


class SweepSection(SweepSpec):
    """A job's ``sweep`` section: the grid of settings its one checkpoint is built and verified at (the
    library's :class:`~ticketsolver.sweep.SweepSpec`, same fields, validation and defaults) and, optionally, a
    bundled dataset the tickets are also measured on. A bad value raises
    :class:`~ticketsolver.errors.ConfigError` naming the field."""

    data: Annotated[
        Literal["digits", "digits-flat", "wine"] | None,
        BeforeValidator(_optional_data_name),
    ] = Field(
        default=None,
        description="bundled dataset the tickets are also measured on (relative output error, agreement and "
        "accuracy on its test split): digits (1x28x28), digits-flat (64 features) or wine (13 features, 3 "
        "classes); the checkpoint's input and output must fit it; null: random inputs only",
    )

    @model_validator(mode="before")
    @classmethod
    def _n_is_given(cls, data: Any) -> Any:
        if isinstance(data, dict) and "n" not in data:
            raise ValueError("n is required: the values of n to build at, a list or a range START:STOP:STEP")
        return data

    def sweep_spec(self) -> SweepSpec:
        """The library's :class:`SweepSpec` of this section (everything but ``data``)."""
        return SweepSpec(**{name: getattr(self, name) for name in self.model_fields_set - {"data"}})

    def load_data(self) -> Dataset | None:
        """The bundled dataset, or None when the section names none."""
        return None if self.data is None else load_bundled_data(self.data)


_SWEEP_FIELDS = frozenset(SweepSection.model_fields)
#: the parameters of a sweep job (JobSpec.of_sweep) that are the job's own, not its section's
SWEEP_JOB_FIELDS = ("arch", "time_limit_s")


class JobSpec(BaseModel):
    """The parameters of a job. Frozen; unknown keys are refused with a message that says where they belong.

    Constructing one with a bad value raises :class:`~ticketsolver.errors.ConfigError` (a ``ValueError``)
    naming the field; as a nested model, or as the service's request model, normal pydantic validation
    applies and the same message is the error's text.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: one item per value of n and checkpoint (an integer, or a list of distinct integers)
    n: Annotated[
        tuple[int, ...],
        BeforeValidator(_n_values),
        WithJsonSchema(_N_SCHEMA),
        Field(
            description="random hidden units per block; a list makes a sweep (one item per n and checkpoint); "
            "not used by a learned-mask job (learn), which takes one value at most"
        ),
    ] = (BuildConfig.model_fields["n"].default,)
    #: built-in architecture of a bare state_dict; None infers it from the tensor shapes
    arch: Annotated[
        Literal["lenet5", "mlp", "export"] | None,
        Field(description="architecture of a bare state_dict; null infers it from the tensor shapes"),
    ] = None
    #: how each ticket is built (its n is not given here: each item builds with ``build_config(n)``)
    build: Annotated[BuildConfig, Field(description="how each ticket is built (the library's BuildConfig, less n)")] = (
        BuildConfig()
    )
    #: how each ticket is verified after it is built; None: not verified
    verify: Annotated[
        VerifyConfig | None,
        BeforeValidator(_verify_value),
        Field(description="how each ticket is verified (the library's VerifyConfig); null: not verified"),
    ] = VerifyConfig()
    #: wall-clock limit of one item in seconds; None: the service's default
    time_limit_s: Annotated[
        float | None,
        BeforeValidator(_time_limit),
        Field(description="wall-clock limit of one item in seconds (> 0); null: the service's default"),
    ] = None
    #: learn a mask (edge-popup / IteRand) per checkpoint instead of building; None: build
    learn: Annotated[
        LearnSpec | None,
        Field(
            description="learn a mask over a random network of each checkpoint's architecture on bundled data "
            "instead of building (one item per checkpoint: n and build do not apply, n may hold one value at "
            "most; verify does not apply either, there is no target to compare with: the item reports its task "
            "accuracy and loss); null: build"
        ),
    ] = None
    #: build and verify one checkpoint at every setting of a grid (ticketsolver.sweep); None: one build per n
    sweep: Annotated[
        SweepSection | None,
        Field(
            description="build and verify the job's one checkpoint at every setting of a grid (values of n, "
            "resample, source density, depth) with the library's run_sweep: one item whose results are a CSV "
            "table and figures (GET /sweeps/{id}); n, build and verify do not apply (the section has its own n, "
            "seed, solver, input_domain and verify); null: one build per n"
        ),
    ] = None

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _learned_items_are_not_verified(cls, data: Any) -> Any:
        """A learned-mask job verifies nothing (there is no target to compare with), and a sweep verifies
        with its own section's settings: their default is null."""
        sections = ("learn", "sweep")
        if isinstance(data, dict) and "verify" not in data and any(data.get(key) is not None for key in sections):
            return {**data, "verify": None}
        return data

    @model_validator(mode="after")
    def _n_at_the_top(self) -> JobSpec:
        if "n" in self.build.model_fields_set:
            raise ValueError("n is given at the top level of a job (a number or a list), not in build")
        if self.learn is not None and len(self.n) > 1:
            raise ValueError(
                f"n lists {len(self.n)} values, but a learned-mask job (learn) makes one item per checkpoint and "
                "does not use n: give one value or none"
            )
        if self.sweep is not None:
            if self.learn is not None:
                raise ValueError("a job either learns masks (learn) or sweeps a grid of builds (sweep), not both")
            if len(self.n) > 1:
                raise ValueError(
                    f"n lists {len(self.n)} values, but a sweep job takes its values of n in its section: give them "
                    "as sweep.n"
                )
            if self.build != BuildConfig():
                raise ValueError(
                    "build does not apply to a sweep job: give its settings in the sweep section (sweep.seed, "
                    "sweep.solver, sweep.input_domain, sweep.resample, ...)"
                )
            if self.verify is not None:
                raise ValueError("verify does not apply to a sweep job: give the verification settings as sweep.verify")
        return self

    def build_config(self, n: int) -> BuildConfig:
        """The :class:`BuildConfig` of the item with this ``n``."""
        return self.build.replace(n=n)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe and complete (the build's defaults resolved), as stored with the job."""
        return {
            "n": list(self.n),
            "arch": self.arch,
            "build": self.build.model_dump(mode="json", exclude={"n"}),
            "verify": None if self.verify is None else self.verify.to_dict(),
            "time_limit_s": self.time_limit_s,
            "learn": None if self.learn is None else self.learn.to_dict(),
            "sweep": None if self.sweep is None else self.sweep.to_dict(),
        }

    @classmethod
    def of_sweep(cls, params: dict[str, Any]) -> JobSpec:
        """The spec of a sweep job from flat parameters (``POST /sweeps``): the sweep section's fields, plus the
        job's own ``arch`` and ``time_limit_s``.

        >>> JobSpec.of_sweep({"n": [8, 10], "depth": ["2L"], "time_limit_s": 600}).sweep.n
        (8, 10)

        Raises:
            ConfigError: not a JSON object, an unknown key or a bad value (the message names the field).
        """
        if not isinstance(params, dict):
            raise ConfigError(f"JobSpec: expected a JSON object, got {type(params).__name__}")
        job = {key: params[key] for key in SWEEP_JOB_FIELDS if key in params}
        return cls(**job, sweep={key: value for key, value in params.items() if key not in SWEEP_JOB_FIELDS})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """The spec of :meth:`to_dict` (or of a client's JSON object).

        Raises:
            ConfigError: not a JSON object, an unknown key (the message says where it belongs), a bad value.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"JobSpec: expected a JSON object, got {type(data).__name__}")
        return cls(**data)


def _describe(exc: ValidationError) -> str:
    """``JobSpec: n must be ...; unknown field 'seed': it is a build setting, give it as build.seed``."""
    clauses = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        where = ".".join(loc)
        if error["type"] == "extra_forbidden":
            clauses.append(f"unknown field {where!r}" + (_belongs(loc[0]) if len(loc) == 1 else ""))
            continue
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigError) and loc:  # a nested config's own message: "BuildConfig: seed ..."
            clauses.append(f"{where}: {str(cause).split(': ', 1)[-1]}")
            continue
        if isinstance(cause, ValueError):
            text = str(cause)
        elif error["type"] == "literal_error":
            text = f"must be one of {error['ctx']['expected']}, got {error['input']!r}"
        else:
            text = f"{error['msg']}, got {error['input']!r}"
        clauses.append(f"{where} {text}" if where else text)
    return "JobSpec: " + "; ".join(clauses)


def _belongs(key: str) -> str:
    if key in _BUILD_FIELDS:
        return f": it is a build setting, give it as build.{key}"
    name = _OLD_VERIFY_NAMES.get(key, key)
    if name in _VERIFY_FIELDS:
        return f": it is a verification setting, give it as verify.{name}"
    if key in _LEARN_FIELDS:
        return f": it is a mask-learning setting, give it as learn.{key}"
    if key in _SWEEP_FIELDS:
        return f": it is a sweep setting, give it as sweep.{key}"
    return f"; the fields are {', '.join(JobSpec.model_fields)}"


def _physical_memory() -> int:
    """Bytes of RAM of this machine (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 0


def default_memory_budget() -> int:
    """Half of this machine's RAM (the other half is the API, the OS and other services); 4 GiB where the
    OS does not say how much there is."""
    return _physical_memory() // 2 or 4 * 1024**3


@dataclass(frozen=True)
class Limits:
    """What one job may ask for; beyond it the job is refused with a message."""

    max_n: int = MAX_N  # largest n
    max_batch_items: int = 32  # checkpoints x n values
    max_weights_per_job: int = 20_000_000  # target weights summed over the items
    max_checkpoint_bytes: int = 64 * 1024**2  # one checkpoint file
    max_sweep_rows: int = 256  # settings (tickets) of one sweep job
    #: bytes the items running at once may use together (estimated peak RSS of each worker, see
    #: ticketsolver.jobs.memory): an item whose estimate alone exceeds it is refused at intake
    memory_budget_bytes: int = field(default_factory=default_memory_budget)
    #: wall-clock limit of an item whose spec sets none (seconds); None: no limit
    time_limit_s: float | None = None
