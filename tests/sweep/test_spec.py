"""The sweep's grid: n ranges, list fields given as text or lists, skipped settings and the fingerprint."""

from __future__ import annotations

import pytest

from ticketsolver.config import BuildConfig
from ticketsolver.errors import ConfigError
from ticketsolver.sweep import SWEEP_VERIFY, SweepSpec, parse_n_range, row_label


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("10:40:10", (10, 20, 30, 40)),  # stop included when the step reaches it
        ("10:15:2", (10, 12, 14)),
        ("10:12", (10, 11, 12)),
        ("30,10,20,10", (10, 20, 30)),  # sorted, duplicates dropped
        (" 8 ", (8,)),
        ("1:64:63", (1, 64)),
    ],
)
def test_parse_n_range_reads_ranges_lists_and_single_values(text: str, values: tuple[int, ...]) -> None:
    assert parse_n_range(text) == values


@pytest.mark.parametrize("text", ["", "ten", "10:5", "10:20:0", "10:20:-2", "1:2:3:4", "10,x", "0:10", "65", "8,"])
def test_parse_n_range_refuses_bad_text_with_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="^n: "):
        parse_n_range(text)


def test_list_fields_take_text_or_lists_and_come_out_sorted() -> None:
    from_text = SweepSpec(n="12,8", resample="16,0", source_density="0.5,1", depth="L+1,2L")
    from_lists = SweepSpec(n=[8, 12, 12], resample=[0, 16], source_density=[1, 0.5], depth=["2L", "L+1"])
    assert from_text == from_lists
    assert (from_text.n, from_text.resample, from_text.source_density, from_text.depth) == (
        (8, 12),
        (0, 16),
        (1.0, 0.5),
        ("2L", "L+1"),
    )
    assert SweepSpec(n=30).verify == SWEEP_VERIFY


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"n": "0:4"}, "n"),
        ({"n": 30, "resample": "-1"}, "resample"),
        ({"n": 30, "resample": "0,300"}, "resample"),
        ({"n": 30, "source_density": "0"}, "source_density"),
        ({"n": 30, "depth": "3L"}, "depth"),
        ({"n": 30, "density_policy": "dense"}, "density_policy"),
        ({"n": 30, "verify": {"n_random": -1}}, "n_random"),
        ({"n": 30, "width": 2}, "width"),
    ],
)
def test_a_bad_field_is_a_config_error_that_names_it(fields: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        SweepSpec(**fields)


def test_settings_list_the_grid_setting_by_setting_with_n_innermost() -> None:
    configs, skipped = SweepSpec(n="8,10", resample="0,4", source_density="1,0.5", seed=3).settings()
    assert skipped == []
    assert [(c.resample, c.source_density, c.n) for c in configs] == [
        (0, 1.0, 8),
        (0, 1.0, 10),
        (0, 0.5, 8),
        (0, 0.5, 10),
        (4, 1.0, 8),
        (4, 1.0, 10),
        (4, 0.5, 8),
        (4, 0.5, 10),
    ]
    assert all(isinstance(c, BuildConfig) and c.seed == 3 for c in configs)
    assert len({row_label(c) for c in configs}) == len(configs)  # every row has its own ticket file


def test_L_plus_1_is_accepted_pure_and_skipped_with_its_reason_when_resampled_or_sparse() -> None:
    configs, skipped = SweepSpec(n="20", depth="2L,L+1", resample="0,16", source_density="1,0.5").settings()
    assert ("L+1", 0, 1.0) in [(c.depth, c.resample, c.source_density) for c in configs]
    reasons = {(s["depth"], s["resample"], s["source_density"]): reason for s, reason in skipped}
    assert set(reasons) == {("L+1", 0, 0.5), ("L+1", 16, 1.0), ("L+1", 16, 0.5)}
    assert reasons[("L+1", 16, 1.0)] == "depth L+1 is built from a pure source: use resample=0"


def test_the_fingerprint_changes_with_the_spec_and_the_target_and_only_then() -> None:
    spec = SweepSpec(n="10:20:5", resample="0,16")
    assert spec.fingerprint("a" * 64) == SweepSpec(n=[10, 15, 20], resample=[16, 0]).fingerprint("a" * 64)
    assert spec.fingerprint("a" * 64) != spec.fingerprint("b" * 64)
    assert spec.fingerprint("a" * 64) != spec.replace(seed=1).fingerprint("a" * 64)
    assert spec.fingerprint("a" * 64) != spec.replace(verify=SWEEP_VERIFY.replace(n_random=8)).fingerprint("a" * 64)
