"""JobSpec: one validation (the library's BuildConfig/VerifyConfig nested), the stored JSON, helpful errors."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from ticketsolver.config import BuildConfig, VerifyConfig
from ticketsolver.errors import ConfigError, TicketSolverError
from ticketsolver.jobs.spec import JobSpec, JobState, Limits, default_memory_budget


def test_n_is_one_integer_or_a_list_of_distinct_ones():
    assert JobSpec(n=12).n == (12,)
    assert JobSpec.from_dict({"n": [12, 16]}).n == (12, 16)
    assert JobSpec().n == (BuildConfig().n,)


@pytest.mark.parametrize(
    "n, message",
    [(True, "got True"), ([12, True], "got \\[12, True\\]"), ([], "non-empty"), ([5, 5], "repeat"), (0, "\\[1, 64\\]")],
)
def test_bad_n_is_refused_naming_n(n, message):
    with pytest.raises(ConfigError, match=f"JobSpec: n .*{message}"):
        JobSpec(n=n)


def test_each_item_builds_with_the_shared_build_config_and_its_own_n():
    spec = JobSpec(n=[8, 12], build={"seed": 7, "resample": 2})
    config = spec.build_config(12)
    assert isinstance(config, BuildConfig)
    assert (config.n, config.seed, config.resample) == (12, 7, 2)
    assert config == BuildConfig(n=12, seed=7, resample=2)  # the library's defaults of a re-randomised build


def test_n_inside_build_is_refused_it_lives_at_the_top():
    with pytest.raises(ConfigError, match="n is given at the top level"):
        JobSpec(build={"n": 12})


def test_verification_defaults_to_the_library_defaults_and_null_turns_it_off():
    assert JobSpec().verify == VerifyConfig()
    assert JobSpec(verify=None).verify is None
    with pytest.raises(ConfigError, match="verify must be an object"):
        JobSpec(verify=True)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"seed": 3}, "unknown field 'seed': it is a build setting, give it as build.seed"),
        ({"n_random": 3}, "unknown field 'n_random': it is a verification setting, give it as verify.n_random"),
        ({"verify_box": [0, 1]}, "give it as verify.input_box"),
        ({"colour": "red"}, "unknown field 'colour'; the fields are n, arch, build, verify, time_limit_s"),
        ({"build": {"colour": 1}}, "build: unknown field 'colour'"),
        ({"build": {"seed": -1}}, "build: seed must be an integer"),
        ({"verify": {"n_random": -1}}, "verify: n_random must be an integer"),
        ({"arch": "resnet"}, "arch must be one of 'lenet5', 'mlp' or 'export', got 'resnet'"),
        ({"time_limit_s": 0}, "time_limit_s must be a positive number of seconds"),
        ({"time_limit_s": True}, "time_limit_s must be a positive number"),
    ],
)
def test_bad_keys_and_values_are_refused_with_a_message_that_names_them(data, message):
    with pytest.raises(ConfigError) as caught:
        JobSpec.from_dict(data)
    assert message in str(caught.value)
    assert isinstance(caught.value, TicketSolverError)


def test_not_an_object_is_refused():
    with pytest.raises(ConfigError, match="expected a JSON object"):
        JobSpec.from_dict([1, 2])  # type: ignore[arg-type]


def test_stored_json_round_trips_and_is_complete():
    spec = JobSpec(n=[4, 6], arch="mlp", build={"input_domain": [0, 1]}, verify={"n_random": 8}, time_limit_s=60)
    stored = json.loads(json.dumps(spec.to_dict()))
    assert JobSpec.from_dict(stored) == spec
    assert stored["build"]["tolerance"] == BuildConfig().tolerance  # defaults resolved when accepted
    assert "n" not in stored["build"]
    assert JobSpec.from_dict(JobSpec(verify=None).to_dict()).verify is None


def test_spec_is_frozen():
    spec = JobSpec()
    with pytest.raises(ValidationError):
        spec.n = (3,)  # type: ignore[misc]


def test_as_a_request_model_the_message_reaches_pydantic_validation():
    # the service validates its request body with pydantic (JSON string -> JobSpec): a 422, not a 500
    with pytest.raises(ValidationError, match="give it as build.seed"):
        JobSpec.model_validate_json('{"seed": 1}')

    class Request(BaseModel):
        spec: JobSpec

    with pytest.raises(ValidationError, match="n must not repeat"):
        Request.model_validate({"spec": {"n": [3, 3]}})


def test_job_state_is_a_string_enum():
    assert JobState("running") is JobState.RUNNING
    assert JobState.RUNNING == "running" and f"{JobState.FAILED}" == "failed"
    assert [state.value for state in JobState] == ["queued", "running", "succeeded", "failed", "cancelled"]


def test_memory_budget_defaults_to_half_of_this_machines_ram():
    import os

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_memory_budget() == ram // 2
    assert Limits().memory_budget_bytes == ram // 2
    assert Limits(memory_budget_bytes=1024).memory_budget_bytes == 1024
