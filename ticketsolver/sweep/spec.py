"""What a sweep runs: :class:`SweepSpec`, a grid of build settings over n, and its fingerprint.

A sweep is the papers' experiment made routine: one target, built at every n of a range, for each setting
(depth, source density, re-randomisation), each ticket verified the same way. The spec is a frozen pydantic
model like :class:`~ticketsolver.config.BuildConfig`: a bad value raises
:class:`~ticketsolver.errors.ConfigError` naming the field. Its list fields also take the text the CLI and
the service receive (``n="10:40:2"``, ``resample="0,16"``), so both shells hand strings straight to it.

>>> spec = SweepSpec(n="10:14:2", resample="0,16", input_domain=(0, 1))
>>> configs, skipped = spec.settings()
>>> [(c.n, c.resample) for c in configs]
[(10, 0), (12, 0), (14, 0), (10, 16), (12, 16), (14, 16)]
>>> SweepSpec(n="30", depth="L+1", resample="0,16").settings()[1][0][1]
'depth L+1 is built from a pure source: use resample=0'
"""

from __future__ import annotations

import hashlib
import json
import numbers
from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BeforeValidator, Field

from ticketsolver.config import (
    DEPTHS,
    MAX_N,
    MAX_RESAMPLE,
    BuildConfig,
    DensityPolicy,
    Depth,
    Seed,
    VerifyConfig,
    _box,
    _Config,
    _density_policy,
    _solver,
)
from ticketsolver.errors import ConfigError

__all__ = [
    "MAX_SETTINGS",
    "SWEEP_VERIFY",
    "SweepSpec",
    "data_sha256",
    "parse_n_range",
    "row_label",
    "setting_label",
    "target_sha256",
]

#: the most values one list field of a spec may hold (besides n, which MAX_N bounds)
MAX_SETTINGS = 16
#: how a sweep verifies by default: float64 outputs on the data and 256 random inputs, and the per-layer check.
#: No worst-case search and no certified bound: on LeNet5 they are most of a verification's time, and a sweep
#: compares settings over n, for which the measured errors suffice (``ticketsolver verify`` does the rest).
SWEEP_VERIFY = VerifyConfig(n_random=256, worst_case_starts=0, certify=False, dtypes=("float64",))
# bump when the meaning of a row changes, so that an old results.csv is not resumed as if it were current
_SWEEP_FORMAT = 1


def parse_n_range(text: str) -> tuple[int, ...]:
    """The n values of a range text, sorted and unique.

    ``"10:40:2"`` is start:stop:step with stop included when the step reaches it (``"10:40"``: step 1);
    ``"10,20,30"`` a list; ``"30"`` one value. Every value must lie in [1, MAX_N].

    >>> parse_n_range("10:20:5"), parse_n_range("30,10,20,10"), parse_n_range("8")
    ((10, 15, 20), (10, 20, 30), (8,))

    Raises:
        ConfigError: not of these forms, a step below 1, stop below start, or a value outside [1, MAX_N].
    """
    usage = f"n: expected START:STOP[:STEP], a list A,B,C or one value, got {text!r}"
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(usage)
    try:
        parts = [int(p) for p in text.split(":" if ":" in text else ",")]
    except ValueError:
        raise ConfigError(usage) from None
    if ":" in text:
        if len(parts) not in (2, 3):
            raise ConfigError(usage)
        start, stop, step = parts[0], parts[1], parts[2] if len(parts) == 3 else 1
        if step < 1 or stop < start:
            raise ConfigError(f"n: {text!r} needs step >= 1 and stop >= start")
        values = list(range(start, stop + 1, step))
    else:
        values = parts
    outside = [v for v in values if not 1 <= v <= MAX_N]
    if outside:
        raise ConfigError(f"n: values must lie in [1, {MAX_N}], got {outside[0]} in {text!r}")
    return tuple(sorted(set(values)))


# --- field checks: each raises ValueError("must be ...") and _Config names the field ---------------------


def _split(value: Any) -> Any:
    """A comma-separated text becomes its list of parts; anything else is left as it is."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")]
    if isinstance(value, numbers.Number):
        return [value]
    return value


def _n_values(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            return parse_n_range(value)
        except ConfigError as exc:
            raise ValueError(str(exc).removeprefix("n: ")) from None
    values = _split(value)
    if isinstance(values, list | tuple) and values and all(_is_int(v) for v in values):
        if all(1 <= int(v) <= MAX_N for v in values):
            return tuple(sorted({int(v) for v in values}))
    raise ValueError(f"must be a non-empty list of integers in [1, {MAX_N}] or a range START:STOP:STEP, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _parsed_list(value: Any, message: str, parse: Callable[[str], Any], valid: Callable[[Any], bool]) -> list[Any]:
    """A list field given as a list or as comma-separated text: its values, text parsed; ValueError(message) when it
    is empty, longer than MAX_SETTINGS, or holds a value that does not parse or is not ``valid``."""
    values = _split(value)
    if not isinstance(values, list | tuple) or not values or len(values) > MAX_SETTINGS:
        raise ValueError(message)
    try:
        parsed = [parse(v) if isinstance(v, str) else v for v in values]
    except ValueError:
        raise ValueError(message) from None
    if not all(valid(v) for v in parsed):
        raise ValueError(message)
    return parsed


def _resample_values(value: Any) -> tuple[int, ...]:
    message = f"must be a list of at most {MAX_SETTINGS} integers in [0, {MAX_RESAMPLE}], got {value!r}"
    parsed = _parsed_list(value, message, int, lambda v: _is_int(v) and 0 <= int(v) <= MAX_RESAMPLE)
    return tuple(sorted({int(v) for v in parsed}))  # pure (0) first


def _density_values(value: Any) -> tuple[float, ...]:
    message = f"must be a list of at most {MAX_SETTINGS} numbers in (0, 1], got {value!r}"

    def valid(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, numbers.Real) and 0.0 < float(v) <= 1.0

    parsed = _parsed_list(value, message, float, valid)
    return tuple(sorted({float(v) for v in parsed}, reverse=True))  # dense (1) first


def _depth_values(value: Any) -> tuple[str, ...]:
    values = _split(value)
    if not isinstance(values, list | tuple) or not values or any(v not in DEPTHS for v in values):
        raise ValueError(f"must be a non-empty list of {', '.join(DEPTHS)}, got {value!r}")
    return tuple(d for d in DEPTHS if d in values)


def _verify_config(value: Any) -> Any:
    """A dict changes the sweep's own verification settings (SWEEP_VERIFY), not VerifyConfig's defaults."""
    if isinstance(value, dict):
        return SWEEP_VERIFY.replace(**value)  # its ConfigError names the nested field
    return value


class SweepSpec(_Config):
    """A grid of builds: every n for every setting (depth x re-randomisation x source density).

    List fields take a list, one value, or a comma-separated text; ``n`` also a range ``"10:40:2"``. Values
    are sorted and de-duplicated: n ascending, resample ascending (pure first), density descending (dense
    first), depth in the order 2L, L+1. :meth:`settings` lists the grid in that order, n innermost.
    """

    n: Annotated[tuple[int, ...], BeforeValidator(_n_values)] = Field(
        description="random hidden units per block of each build: a list or a range START:STOP:STEP (stop included)"
    )
    resample: Annotated[tuple[int, ...], BeforeValidator(_resample_values)] = Field(
        default=(0,), description="re-randomisation rounds of each setting: 0 a pure source, R > 0 IteRand-style"
    )
    source_density: Annotated[tuple[float, ...], BeforeValidator(_density_values)] = Field(
        default=(1.0,), description="overall densities of an Erdos-Renyi sparse source (1: dense)"
    )
    density_policy: Annotated[DensityPolicy, BeforeValidator(_density_policy)] = Field(
        default="uniform", description="how a sparse source's layers share the density (BuildConfig)"
    )
    depth: Annotated[tuple[Depth, ...], BeforeValidator(_depth_values)] = Field(
        default=("2L",), description="depths of the random network: 2L (pairs) and/or L+1"
    )
    seed: Seed = Field(default=0, description="seed of every build's random source")
    input_domain: Annotated[tuple[float, float] | None, BeforeValidator(_box(strict=True))] = Field(
        default=None, description="box [lo, hi] of the model's inputs; None: the data's domain, else the default box"
    )
    solver: Annotated[str, BeforeValidator(_solver)] = Field(default="auto", description="subset-sum backend")
    verify: Annotated[VerifyConfig, BeforeValidator(_verify_config)] = Field(
        default=SWEEP_VERIFY,
        description="how each ticket is verified: SWEEP_VERIFY, or a dict of the fields that differ from SWEEP_VERIFY",
    )

    def _combos(self) -> list[dict[str, Any]]:
        return [
            {"depth": depth, "resample": resample, "source_density": density, "density_policy": self.density_policy}
            for depth in self.depth
            for resample in self.resample
            for density in self.source_density
        ]

    def settings(self) -> tuple[list[BuildConfig], list[tuple[dict[str, Any], str]]]:
        """The builds to run, in grid order (setting by setting, n innermost), and the settings skipped.

        A setting that :class:`BuildConfig` refuses whatever n (depth L+1 with resample > 0 or a sparse
        source) is skipped, not run: it comes back as ``(its fields, BuildConfig's reason)``.
        """
        configs: list[BuildConfig] = []
        skipped: list[tuple[dict[str, Any], str]] = []
        for combo in self._combos():
            common: dict[str, Any] = {"seed": self.seed, "solver": self.solver, "input_domain": self.input_domain}
            try:
                row = [BuildConfig(n=n, **common, **combo) for n in self.n]
            except ConfigError as exc:
                skipped.append((combo, str(exc).removeprefix("BuildConfig: ")))
                continue
            configs.extend(row)
        return configs, skipped

    def fingerprint(self, target_sha256: str) -> str:
        """SHA-256 of the spec and the target: rows of a results.csv with the same fingerprint are resumed."""
        record = {"format": _SWEEP_FORMAT, "spec": self.to_dict(), "target_sha256": target_sha256}
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def setting_label(depth: str, resample: int, source_density: float, density_policy: str) -> str:
    """How figures and progress name a setting: ``2L, pure``, ``2L, R = 16, p = 0.5 (erk)``.

    >>> setting_label("2L", 16, 0.5, "erk")
    '2L, R = 16, p = 0.5 (erk)'
    """
    label = f"{depth}, {'pure' if resample == 0 else f'R = {resample}'}"
    if source_density < 1.0:
        label += f", p = {source_density:g} ({density_policy})"
    return label


def row_label(config: BuildConfig) -> str:
    """A row's name, unique in its sweep and safe as a file name: ``2L-R0-p1-n30``, ``2L-R16-p0.5-erk-n12``.

    >>> row_label(BuildConfig(n=30))
    '2L-R0-p1-n30'
    """
    policy = f"-{config.density_policy}" if config.source_density < 1.0 else ""
    return f"{config.depth}-R{config.resample}-p{config.source_density:g}{policy}-n{config.n}"


def target_sha256(target: Any) -> str:
    """SHA-256 of a target's normal form: input shape, each module's repr, then every parameter's bytes."""
    digest = hashlib.sha256(json.dumps(list(target.input_shape)).encode())
    for module in target.module:
        digest.update(repr(module).encode())
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    return digest.hexdigest()


def data_sha256(data: Any) -> str | None:
    """SHA-256 of the evaluation data a sweep verifies on (a Dataset's test split, or ``(x, y)``); None: none."""
    if data is None:
        return None
    pair = (data.x_test, data.y_test) if hasattr(data, "x_test") else tuple(data)
    digest = hashlib.sha256()
    for part in pair:
        if part is None:
            digest.update(b"none")
            continue
        array = part.detach().cpu().numpy() if isinstance(part, torch.Tensor) else np.asarray(part)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
