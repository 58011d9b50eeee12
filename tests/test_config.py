"""The stage configs: one validation each, ConfigError naming the field, strict integers, resolved defaults.

References: the rules as documented in ticketsolver/config.py, written out here value by value; pydantic's
own nested validation for the job-spec case.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from ticketsolver import BuildConfig, ConfigError, TicketSolverError, VerifyConfig


def _ids(value: Any) -> str:
    return ",".join(f"{k}={v!r}" for k, v in value.items()) if isinstance(value, dict) else str(value)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n": 0}, "n must be an integer in [1, 64], got 0"),
        ({"n": 65}, "n must be an integer in [1, 64], got 65"),
        ({"n": 2.5}, "n must be an integer in [1, 64], got 2.5"),
        ({"n": 8.0}, "n must be an integer in [1, 64], got 8.0"),
        ({"n": True}, "n must be an integer in [1, 64], got True"),
        ({"n": "8"}, "n must be an integer in [1, 64], got '8'"),
        ({"seed": -1}, "seed must be an integer in [0, 9223372036854775807], got -1"),
        ({"seed": 2**63}, "seed must be an integer in [0, 9223372036854775807], got 9223372036854775808"),
        ({"resample": -1}, "resample must be an integer in [0, 255], got -1"),
        ({"resample": 256}, "resample must be an integer in [0, 255], got 256"),
        ({"resample": False}, "resample must be an integer in [0, 255], got False"),
        ({"tolerance": math.nan}, "tolerance must be a number in [0, inf], got nan"),
        ({"tolerance": -1e-3}, "tolerance must be a number in [0, inf], got -0.001"),
        ({"tolerance": True}, "tolerance must be a number in [0, inf], got True"),
        ({"tolerance": "1e-3"}, "tolerance must be a number in [0, inf], got '1e-3'"),
        ({"input_domain": (1, 0)}, "input_domain must be (lo, hi), finite with lo < hi, got (1, 0)"),
        ({"input_domain": (0, 0)}, "input_domain must be (lo, hi), finite with lo < hi, got (0, 0)"),
        ({"input_domain": (0, math.inf)}, "input_domain must be (lo, hi), finite with lo < hi, got (0, inf)"),
        ({"input_domain": (0, 1, 2)}, "input_domain must be (lo, hi), finite with lo < hi, got (0, 1, 2)"),
        ({"input_domain": "0,1"}, "input_domain must be (lo, hi), finite with lo < hi, got '0,1'"),
        ({"scale_margin": 0.0}, "scale_margin must be a number in [0.1, 100], got 0.0"),
        ({"block_draws": 256, "resample": 1}, "block_draws must be an integer in [0, 255], got 256"),
        ({"solver": "bogus"}, "solver must be one of auto, bruteforce, cbc, cpsat"),
        ({"construction": "bogus"}, "construction must be one of auto, output_blocks, input_blocks, offset_blocks"),
        ({"construction": "offset_blocks", "resample": 2}, "construction offset_blocks (L) is built from a pure"),
        ({"block_draws": 3}, "block_draws > 0 redraws random values: it needs resample > 0"),
        ({"source_density": 0}, "source_density must be a number in (0, 1], got 0"),
        ({"source_density": 1.5}, "source_density must be a number in (0, 1], got 1.5"),
        ({"source_density": -0.5}, "source_density must be a number in (0, 1], got -0.5"),
        ({"source_density": math.nan}, "source_density must be a number in (0, 1], got nan"),
        ({"source_density": True}, "source_density must be a number in (0, 1], got True"),
        ({"source_density": "0.5"}, "source_density must be a number in (0, 1], got '0.5'"),
        ({"density_policy": "ER"}, "density_policy must be one of uniform, erk, balanced, pyramidal, got 'ER'"),
        ({"bogus": 1}, "unknown field 'bogus'"),
    ],
    ids=_ids,
)
def test_bad_build_config_raises_config_error_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        BuildConfig(**fields)
    assert str(caught.value).startswith("BuildConfig: ")
    assert message in str(caught.value)
    assert isinstance(caught.value, TicketSolverError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"n_random": -1}, "n_random must be an integer in [0, 100000], got -1"),
        ({"n_random": 1.5}, "n_random must be an integer in [0, 100000], got 1.5"),
        ({"worst_case_starts": 65}, "worst_case_starts must be an integer in [0, 64], got 65"),
        ({"worst_case_steps": True}, "worst_case_steps must be an integer in [0, 1000], got True"),
        ({"batch_size": 0}, "batch_size must be an integer in [1, 65536], got 0"),
        ({"layer_check_inputs": -3}, "layer_check_inputs must be an integer in [0, 100000], got -3"),
        ({"seed": -1}, "seed must be an integer in [0, 9223372036854775807], got -1"),
        ({"certify": 1}, "certify must be true or false, got 1"),
        ({"certify": "yes"}, "certify must be true or false, got 'yes'"),
        ({"dtypes": []}, "dtypes must be a non-empty list of distinct names from float32, float64, got []"),
        ({"dtypes": ["float16"]}, "dtypes must be a non-empty list of distinct names from float32, float64"),
        ({"dtypes": ["float32", "float32"]}, "dtypes must be a non-empty list of distinct names"),
        ({"dtypes": "float32"}, "dtypes must be a non-empty list of distinct names from float32, float64, got 'f"),
        ({"input_box": (1, 0)}, "input_box must be (lo, hi), finite with lo <= hi, got (1, 0)"),
        ({"input_box": (math.nan, 1)}, "input_box must be (lo, hi), finite with lo <= hi, got (nan, 1)"),
        ({"random_law": "normal"}, "unknown field 'random_law'"),
    ],
    ids=_ids,
)
def test_bad_verify_config_raises_config_error_naming_the_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        VerifyConfig(**fields)
    assert str(caught.value).startswith("VerifyConfig: ")
    assert message in str(caught.value)


def test_every_bad_field_is_named_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        BuildConfig(n=0, seed=-2)
    assert "n must be an integer" in str(caught.value) and "seed must be an integer" in str(caught.value)


def test_build_defaults_resolve_per_kind_of_build() -> None:
    pure, rerandomized = BuildConfig(), BuildConfig(resample=3)
    assert (pure.n, pure.seed, pure.solver, pure.construction) == (20, 0, "auto", "auto")
    assert (pure.tolerance, pure.block_draws, pure.pure) == (1e-8, 0, True)
    assert (rerandomized.tolerance, rerandomized.block_draws, rerandomized.pure) == (1e-7, 8, False)
    assert (pure.source_density, pure.density_policy) == (1.0, "uniform")  # a dense source


def test_verify_defaults_are_the_documented_single_set() -> None:
    config = VerifyConfig()
    assert config.to_dict() == {
        "input_box": None,
        "n_random": 512,
        "worst_case_starts": 4,
        "worst_case_steps": 30,
        "dtypes": ["float32", "float64"],
        "certify": True,
        "batch_size": 1024,
        "layer_check_inputs": 256,
        "seed": 0,
    }


def test_numpy_integers_and_lists_become_plain_values() -> None:
    config = BuildConfig(n=np.int64(12), seed=np.uint32(7), input_domain=[np.float32(0), 1])
    assert type(config.n) is int and type(config.seed) is int
    assert config.input_domain == (0.0, 1.0) and type(config.input_domain[0]) is float
    assert VerifyConfig(dtypes=["float64"], input_box=[0, 0]).dtypes == ("float64",)


def test_configs_are_frozen_and_hashable() -> None:
    config = BuildConfig(n=8)
    with pytest.raises(ValidationError):
        config.n = 9  # type: ignore[misc]
    assert hash(config) == hash(BuildConfig(n=8)) and config == BuildConfig(n=8)
    assert config != BuildConfig(n=9)


def test_replace_validates_and_re_resolves_the_defaults() -> None:
    pure = BuildConfig(n=8, seed=3)
    rerandomized = pure.replace(resample=4)
    assert (rerandomized.n, rerandomized.seed, rerandomized.tolerance, rerandomized.block_draws) == (8, 3, 1e-7, 8)
    assert rerandomized.replace(resample=0) == pure
    assert BuildConfig(tolerance=1e-3).replace(resample=2).tolerance == 1e-3  # a value given is kept
    with pytest.raises(ConfigError, match="n must be an integer in \\[1, 64\\], got 0"):
        pure.replace(n=0)
    assert pure.n == 8  # the original is untouched


def test_to_dict_is_json_and_rebuilds_the_same_config() -> None:
    for config in (
        BuildConfig(n=8, input_domain=(0, 1), resample=2),
        BuildConfig(source_density=0.25, density_policy="pyramidal"),
        VerifyConfig(input_box=(-1, 1)),
    ):
        record = json.loads(json.dumps(config.to_dict()))
        assert type(config)(**record) == config


class _Spec(BaseModel):
    """Stands for a job spec: the configs nested in another pydantic model."""

    build: BuildConfig
    verify: VerifyConfig | None = None


def test_nested_in_another_model_json_validates_and_bad_values_are_pydantic_errors_naming_the_field() -> None:
    spec = _Spec.model_validate_json('{"build": {"n": 12, "input_domain": [0, 1]}, "verify": {"dtypes": ["float32"]}}')
    assert spec.build == BuildConfig(n=12, input_domain=(0.0, 1.0))
    assert spec.verify == VerifyConfig(dtypes=("float32",))
    with pytest.raises(ValidationError) as caught:
        _Spec.model_validate({"build": {"n": True}})
    assert "n must be an integer in [1, 64], got True" in str(caught.value)
    assert caught.value.errors()[0]["loc"][0] == "build"


def test_json_schema_states_the_limits() -> None:
    properties = _Spec.model_json_schema()["$defs"]["BuildConfig"]["properties"]
    assert (properties["n"]["minimum"], properties["n"]["maximum"]) == (1, 64)
    assert properties["construction"]["enum"] == ["auto", "output_blocks", "input_blocks", "offset_blocks"]
