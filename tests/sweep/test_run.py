"""Running a sweep: every row built and verified for real, results.csv and the figures written, resumable.

References: the library's own ``build_ticket``, ``Ticket.load`` and ``verify`` on the same settings, and an
uninterrupted run of the same sweep for the resumed one.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import ticketsolver.sweep.run as sweep_run
from ticketsolver import BuildConfig, Ticket, build_ticket, verify
from ticketsolver.errors import ConfigError, VerificationError
from ticketsolver.models import Target
from ticketsolver.sweep import (
    FIGURES,
    RESULT_COLUMNS,
    SWEEP_VERIFY,
    VARYING_COLUMNS,
    SweepResult,
    SweepSpec,
    read_rows,
    run_sweep,
)

CHECKS = SWEEP_VERIFY.replace(n_random=16, layer_check_inputs=16)
SPEC = SweepSpec(n="8,10", resample="0,2", input_domain=(0, 1), verify=CHECKS)


@pytest.fixture(scope="module")
def target() -> Target:
    torch.manual_seed(0)
    return Target.from_module(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), (4,))


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(24, 4, generator=generator), torch.randint(0, 3, (24,), generator=generator)


@pytest.fixture(scope="module")
def swept(target: Target, data: Any, tmp_path_factory: pytest.TempPathFactory) -> SweepResult:
    """The uninterrupted sweep: 2 settings (pure, R = 2) x n in {8, 10}."""
    return run_sweep(target, SPEC, tmp_path_factory.mktemp("sweep"), data=data)


def _csv(path: Path, drop: tuple[str, ...] = ()) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def test_a_sweep_writes_one_row_per_setting_and_n_with_every_column(swept: SweepResult) -> None:
    with open(swept.csv_path, newline="") as handle:
        header = next(csv.reader(handle))
    assert tuple(header) == RESULT_COLUMNS
    rows = read_rows(swept.csv_path)
    assert rows == swept.rows
    assert [(r["resample"], r["n"], r["source_kind"]) for r in rows] == [
        (0, 8, "iid"),
        (0, 10, "iid"),
        (2, 8, "rerandomized"),
        (2, 10, "rerandomized"),
    ]
    no_conv = {"max_rel_error_conv"}  # an MLP has no conv layer
    for row in rows:
        assert all(row[column] is not None for column in RESULT_COLUMNS if column not in no_conv), row
        assert row["max_rel_error_conv"] is None
        assert 0 < row["kept_params"] < row["source_params"] <= row["examined_values"]
        assert (swept.csv_path.parent / "tickets" / f"{row['label']}.ticket").stat().st_size == row["ticket_bytes"]


def test_a_row_holds_what_the_library_measures_for_its_ticket(swept: SweepResult, target: Target, data: Any) -> None:
    row = swept.rows[3]
    config = BuildConfig(n=10, resample=2, input_domain=(0, 1))
    ticket = build_ticket(target, config)
    assert Ticket.load(swept.csv_path.parent / "tickets" / f"{row['label']}.ticket").kept_hash() == ticket.kept_hash()
    report = verify(target, ticket, CHECKS, data=data)
    on_data, on_random = report.sections["data"]["float64"], report.sections["random"]["float64"]
    assert row["max_rel_error_data"] == on_data.relative_error_max
    assert row["mean_rel_error_random"] == on_random.relative_error_mean
    assert row["agreement_data"] == on_data.top1_agreement
    assert row["accuracy_ticket"] == on_data.accuracy_pruned
    assert row["max_weight_error"] == max(p["weight_error_max"] for p in ticket.build["pairs"])
    assert row["source_params"] == ticket.sizes()["source_params"]
    assert row["examined_values"] == ticket.sizes()["examined_values"]
    # the 4 -> 8 -> 3 MLP as two pairs: four weight layers, and every weight entry of g counted once per input
    dense = sum(m.weight.numel() for m in ticket.to_module().modules() if isinstance(m, nn.Linear))
    assert (row["random_layers"], row["macs_dense"]) == (4, dense)
    assert row["macs_kept"] == row["kept_params"] - sum(int(m["beta"].sum()) for m in ticket.masks)


def test_the_figures_are_written_as_png_and_svg(swept: SweepResult) -> None:
    expected = {f"{name}{suffix}" for name in FIGURES if name != "conv_error_vs_n" for suffix in (".png", ".svg")}
    assert {path.name for path in swept.figures} == expected  # no conv layer: no conv figure
    assert all(path.stat().st_size > 1000 for path in swept.figures)


def test_an_interrupted_sweep_resumes_without_rebuilding_finished_rows(
    swept: SweepResult, target: Target, data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def cancel_after_the_first_row(done: int, total: int, label: str) -> None:
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(target, SPEC, tmp_path, data=data, progress=cancel_after_the_first_row)
    first = read_rows(tmp_path / "results.csv")
    assert [row["label"] for row in first] == [swept.rows[0]["label"]]

    built: list[BuildConfig] = []

    def counting_build(target: Any, config: BuildConfig, **kwargs: Any) -> Ticket:
        built.append(config)
        return build_ticket(target, config, **kwargs)

    monkeypatch.setattr(sweep_run, "build_ticket", counting_build)
    monkeypatch.setattr(sweep_run, "write_figures", lambda rows, out: [])  # drawn and checked above
    calls: list[tuple[int, int, str]] = []
    result = run_sweep(target, SPEC, tmp_path, data=data, progress=lambda *args: calls.append(args))
    assert [(c.resample, c.n) for c in built] == [(0, 10), (2, 8), (2, 10)]
    assert result.reused == 1 and result.rows[0] == first[0]  # timings included: the row was kept, not redone
    assert calls[0] == (1, 4, "2L, pure, n = 10") and calls[-1][:2] == (4, 4)
    assert _csv(result.csv_path, VARYING_COLUMNS) == _csv(swept.csv_path, VARYING_COLUMNS)

    built.clear()
    assert run_sweep(target, SPEC, tmp_path, data=data).reused == 4 and built == []


def test_another_sweep_in_the_same_directory_is_refused(swept: SweepResult, target: Target, data: Any) -> None:
    out = swept.csv_path.parent
    with pytest.raises(ConfigError, match="different spec: n"):
        run_sweep(target, SPEC.replace(n=(8, 12)), out, data=data)
    with pytest.raises(ConfigError, match="different data"):
        run_sweep(target, SPEC, out, data=(data[0][:10], data[1][:10]))
    other = Target.from_module(nn.Sequential(nn.Linear(4, 3)), (4,))
    with pytest.raises(ConfigError, match="different target"):
        run_sweep(other, SPEC, out, data=data)


def test_skipped_settings_are_reported_and_not_run(target: Target, tmp_path: Path) -> None:
    spec = SweepSpec(n="8", depth="L+1", resample="2", input_domain=(0, 1), verify=CHECKS)
    result = run_sweep(target, spec, tmp_path)
    assert result.rows == [] and result.figures == []
    assert [(s["depth"], s["resample"]) for s, _ in result.skipped] == [("L+1", 2)]
    assert "pure source" in result.skipped[0][1]
    assert read_rows(result.csv_path) == [] and list((tmp_path / "tickets").iterdir()) == []


def test_data_of_another_shape_is_refused_before_anything_is_built(
    target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep_run, "build_ticket", lambda *a, **k: pytest.fail("built"))
    with pytest.raises(VerificationError, match="shape"):
        run_sweep(target, SPEC, tmp_path, data=(torch.rand(5, 6), None))


def test_a_target_with_convolutions_gets_the_conv_error_and_its_figure(tmp_path: Path) -> None:
    torch.manual_seed(2)
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    target = Target.from_module(module, (1, 6, 6))
    result = run_sweep(target, SweepSpec(n="6", resample="2", verify=CHECKS), tmp_path)
    ticket = Ticket.load(tmp_path / "tickets" / f"{result.rows[0]['label']}.ticket")
    report = verify(target, ticket, CHECKS)
    convs = [c.pair_vs_target_relative for c in report.layers["float64"] if c.module.startswith("Conv2d")]
    assert len(convs) == 2 and result.rows[0]["max_rel_error_conv"] == max(convs)
    assert result.rows[0]["max_rel_error_data"] is None  # no data given
    assert {"conv_error_vs_n.png", "conv_error_vs_n.svg"} <= {path.name for path in result.figures}
    assert "accuracy_vs_source.png" not in {path.name for path in result.figures}  # no labels


def test_a_sweep_over_both_depths_builds_l_plus_1_rows_with_their_wider_source(
    target: Target, data: Any, tmp_path: Path
) -> None:
    spec = SweepSpec(n="8", depth="2L,L+1", input_domain=(0, 1), verify=CHECKS)
    result = run_sweep(target, spec, tmp_path, data=data)
    by_depth = {row["depth"]: row for row in result.rows}
    assert set(by_depth) == {"2L", "L+1"}
    shallow = Ticket.load(tmp_path / "tickets" / f"{by_depth['L+1']['label']}.ticket")
    assert shallow.depth == "L+1" and shallow.sizes()["source_params"] == by_depth["L+1"]["source_params"]
    assert by_depth["L+1"]["source_params"] > by_depth["2L"]["source_params"]
