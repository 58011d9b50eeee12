"""LearnConfig: the papers' defaults, ConfigError naming the field, strict integers, replace and to_dict."""

from __future__ import annotations

import pytest

from ticketsolver.errors import ConfigError
from ticketsolver.learning import LearnConfig


def test_defaults_are_the_papers() -> None:
    config = LearnConfig()
    assert (config.method, config.keep, config.default_keep, config.width, config.epochs) == (
        "edge-popup",
        None,
        0.5,
        1.0,
        30,
    )
    assert (config.lr, config.momentum, config.weight_decay, config.batch_size) == (0.1, 0.9, 5e-4, 64)
    assert (config.init, config.scale_fan, config.rerand_period, config.rerand_rate) == (
        "signed_constant",
        True,
        300,
        0.1,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "sgd"),
        ("keep", 0.0),
        ("keep", 1.01),
        ("keep", True),
        ("width", 0.0),
        ("width", 65.0),
        ("epochs", 0),
        ("epochs", 3.0),
        ("epochs", True),
        ("batch_size", 0),
        ("lr", 0.0),
        ("momentum", 1.0),
        ("weight_decay", -1e-4),
        ("init", "xavier"),
        ("scale_fan", 1),
        ("seed", -1),
        ("rerand_period", 0),
        ("rerand_rate", 0.0),
        ("rerand_rate", None),
    ],
)
def test_a_bad_value_raises_config_error_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^LearnConfig: {field} "):
        LearnConfig(**{field: value})


def test_unknown_fields_are_refused_and_configs_are_frozen() -> None:
    with pytest.raises(ConfigError, match="unknown field 'prune_rate'"):
        LearnConfig(prune_rate=0.5)
    with pytest.raises(Exception, match="frozen"):
        LearnConfig().keep = 0.3  # type: ignore[misc]


def test_replace_validates_and_to_dict_is_json_safe() -> None:
    config = LearnConfig(method="iterand", keep=0.3).replace(rerand_rate=0.5)
    assert (config.method, config.keep, config.rerand_rate) == ("iterand", 0.3, 0.5)
    with pytest.raises(ConfigError, match="rerand_rate"):
        config.replace(rerand_rate=2.0)
    assert LearnConfig(**config.to_dict()) == config
    assert config.to_dict()["keep"] == 0.3 and LearnConfig().to_dict()["keep"] is None


def test_the_least_period_that_fits_uint8_draws_is_exact_at_the_boundary() -> None:
    """512 iterations: period 2 re-randomises 256 times (one too many), so the least period is 3, not 512/256."""
    config = LearnConfig(method="iterand", epochs=256, batch_size=64, rerand_period=2)
    assert config.rerandomizations(128) == (512, 256, 3)
    assert config.replace(rerand_period=3).rerandomizations(128)[1] == 170
    assert config.replace(method="edge-popup").rerandomizations(128) == (512, 0, 3)
