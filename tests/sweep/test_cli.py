"""``ticketsolver sweep``: a thin shell over run_sweep; its table, its paths, resuming, and clean failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ticketsolver.sweep.run as sweep_run
from ticketsolver.cli import app
from ticketsolver.models import MLP
from ticketsolver.sweep import read_rows

runner = CliRunner()


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state_dict of the built-in MLP 4 -> 8 -> 3."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("cli_sweep") / "mlp.pt"
    torch.save(MLP((4, 8, 3)).state_dict(), path)
    return path


def sweep(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, ["sweep", *map(str, args)], env={"COLUMNS": "160"})
    return result.exit_code, result.output


def test_sweep_writes_the_results_and_figures_and_resumes(checkpoint: Path, tmp_path: Path) -> None:
    args = (checkpoint, "--n", "8:10:2", "--resample", "0,2", "--input-domain", "0,1")
    code, output = sweep(*args, "--n-random", 16, "-o", tmp_path)
    assert code == 0, output
    rows = read_rows(tmp_path / "results.csv")
    assert [(r["depth"], r["resample"], r["n"]) for r in rows] == [
        ("2L", 0, 8),
        ("2L", 0, 10),
        ("2L", 2, 8),
        ("2L", 2, 10),
    ]
    assert f"results -> {tmp_path / 'results.csv'}" in flat(output)
    assert f"figure -> {tmp_path / 'figures' / 'error_vs_n.svg'}" in flat(output)
    assert "2L, R = 2" in output  # the table names each row's setting

    code, output = sweep(*args, "--n-random", 16, "-o", tmp_path)
    assert code == 0 and f"{len(rows)} rows resumed" in output


def test_settings_that_cannot_be_built_are_reported_as_skipped(checkpoint: Path, tmp_path: Path) -> None:
    code, output = sweep(checkpoint, "--n", 8, "--depth", "L+1", "--resample", 2, "-o", tmp_path)
    assert code == 0, output
    assert "skipped L+1, R = 2: depth L+1 is built from a pure source" in flat(output)
    assert read_rows(tmp_path / "results.csv") == []


def test_a_changed_sweep_into_the_same_directory_fails_with_the_reason(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sweep_run, "write_figures", lambda rows, out: [])  # not what this test is about
    assert sweep(checkpoint, "--n", 8, "--input-domain", "0,1", "--n-random", 8, "-o", tmp_path)[0] == 0
    code, output = sweep(checkpoint, "--n", 8, "--input-domain", "0,1", "--n-random", 9, "-o", tmp_path)
    assert code == 1 and "holds another sweep (different spec: verify)" in flat(output)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--n", "40:10"), 1, "SweepSpec: n '40:10' needs step >= 1 and stop >= start"),
        (("--n", "8", "--resample", "0,x"), 1, "resample must be a list"),
        (("--n", "8", "--data", "mnist"), 2, "neither a bundled dataset"),
        (("--n", "8", "--data", "{six_features}"), 1, "data inputs must have shape (N, 4) for this target, got (5, 6)"),
    ],
)
def test_bad_options_fail_cleanly(
    checkpoint: Path, tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    six_features = tmp_path / "six.npz"
    np.savez(six_features, x=np.zeros((5, 6), np.float32))
    exit_code, output = sweep(checkpoint, *[a.format(six_features=six_features) for a in args], "-o", tmp_path)
    assert exit_code == code, output
    assert message in flat(output) and "Traceback" not in output
