"""The command line: build, inspect, verify and export a tiny MLP; every failure is a message, not a traceback.

Commands run through ``typer.testing.CliRunner`` on ``ticketsolver.cli.app`` (and once as a real process).
References: the files the commands write, read back with the library, onnxruntime and plain JSON.
"""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import Result
from ticket.checks import check_pruned_equals_source_times_mask
from typer.testing import CliRunner

from ticketsolver import BuildConfig, Ticket, build_ticket
from ticketsolver.cli import app
from ticketsolver.models import MLP
from ticketsolver.ticket.summary import density_cell

runner = CliRunner()


def invoke(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def assert_fails_cleanly(result: Result, message: str, code: int = 1) -> None:
    """Non-zero exit with ``message`` and no Python exception escaping (so no traceback is printed)."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert message in flat(result.output)
    assert "Traceback" not in result.output


class WritesMarker:
    """A pickle payload: unpickling it creates the marker file, which must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def checkpoint(workdir: Path) -> Path:
    """A state_dict of the built-in MLP 6 -> 8 -> 3 (architecture inferred from its keys and shapes)."""
    torch.manual_seed(0)
    path = workdir / "mlp.pt"
    torch.save(MLP((6, 8, 3)).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def built(checkpoint: Path, workdir: Path) -> tuple[Result, Path]:
    out = workdir / "mlp.ticket"
    return invoke("build", checkpoint, "--n", 12, "--resample", 2, "-o", out, "--no-verify"), out


@pytest.fixture(scope="module")
def data_file(workdir: Path) -> Path:
    rng = np.random.default_rng(0)
    path = workdir / "data.npz"
    np.savez(path, x=rng.standard_normal((24, 6)).astype(np.float32), y=rng.integers(0, 3, 24))
    return path


# -- the happy path ----------------------------------------------------------------------------------------------------


def test_build_writes_the_ticket_and_its_report(built: tuple[Result, Path]) -> None:
    result, ticket_path = built
    assert result.exit_code == 0, result.output
    ticket = Ticket.load(ticket_path)
    assert [layout.n for layout in ticket.layouts] == [12, 12]
    assert ticket.build["config"]["resample"] == 2 and ticket.build["arch"] == "mlp"
    assert str(ticket_path.name) in flat(result.output)
    report = json.loads(ticket_path.with_suffix(".report.json").read_text())
    assert report["ticket"]["sizes"] == ticket.sizes()
    assert "verification" not in report  # --no-verify


def test_inspect_prints_sizes_and_layers(built: tuple[Result, Path]) -> None:
    result = invoke("inspect", built[1])
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    sizes = Ticket.load(built[1]).sizes()
    assert f"kept {sizes['kept_params']:,}" in text and f"random source {sizes['source_params']:,}" in text
    assert "2 target layers -> 4 random layers" in text
    examined = sizes["examined_values"]
    assert f"source: {sizes['source_kind']} (" in text
    assert (f"{examined:,}" if examined is not None else "an unrecorded number of") in text


def test_inspect_says_a_pure_ticket_is_one_iid_network(workdir: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    ticket = build_ticket(net, BuildConfig(n=8, input_domain=(0, 1), solver="mitm"), input_shape=(3,))
    result = invoke("inspect", ticket.save(workdir / "pure.ticket"))
    assert result.exit_code == 0, result.output
    source = ticket.sizes()["source_params"]
    assert "source: iid (one i.i.d. random network, every tensor its law at draw 0)" in flat(result.output)
    assert f"examined {source:,} random values (= the source)" in flat(result.output)


def test_build_from_a_sparse_source_and_inspect_its_densities(checkpoint: Path, workdir: Path) -> None:
    out = workdir / "sparse.ticket"
    args = ("--n", 12, "--source-density", 0.5, "--density-policy", "erk", "--input-domain", "0,1", "-o", out)
    result = invoke("build", checkpoint, *args, "--no-verify")
    assert result.exit_code == 0, result.output
    ticket = Ticket.load(out)
    assert ticket.build["config"]["source_density"] == 0.5 and ticket.build["config"]["density_policy"] == "erk"
    assert all(layout.sparse for layout in ticket.layouts)
    inspected = invoke("inspect", out)
    assert inspected.exit_code == 0, inspected.output
    text = flat(inspected.output)
    assert "sparse source: Erdős–Rényi, density 0.5 (erk policy)" in text
    assert f"random source {ticket.sizes()['source_params']:,}" in text
    for k, layout in enumerate(ticket.layouts):
        stats = ticket.build["pairs"][k]
        density = density_cell(layout.densities)
        assert density in text and f"{stats['usable_mean']:.1f} ({stats['usable_min']})" in text
    summary = json.loads(invoke("inspect", out, "--json").stdout)
    assert [row["densities"] for row in summary["layers"]] == [layout.densities for layout in ticket.layouts]
    assert_fails_cleanly(invoke("build", checkpoint, "--source-density", 0, "--no-verify"), "source_density must be")


def test_inspect_json_is_valid_json_with_sizes(built: tuple[Result, Path]) -> None:
    result = invoke("inspect", built[1], "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    ticket = Ticket.load(built[1])
    assert summary["sizes"] == ticket.sizes()
    assert summary["file_bytes"] == built[1].stat().st_size
    assert [layer["construction"] for layer in summary["layers"]] == ["input_blocks", "output_blocks"]


def test_verify_against_the_checkpoint_on_data_from_a_file(
    built: tuple[Result, Path], checkpoint: Path, data_file: Path, workdir: Path
) -> None:
    report_path = workdir / "verify.json"
    result = invoke("verify", built[1], "--against", checkpoint, "--data", data_file, "--json", report_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["input_shape"] == [6] and report["sections"]
    assert report["input_box"]["source"].startswith("from data") or "build box" in report["input_box"]["source"]


DEFAULT_LAW = "random inputs: standard normal per feature, clipped to the box"


@pytest.mark.parametrize("resample", [0, 2], ids=["pure", "rerandomized"])
def test_build_of_a_signed_input_model_without_box_or_data_verifies_on_the_default_law(
    checkpoint: Path, tmp_path: Path, resample: int
) -> None:
    """Issue 8.5: no --input-domain and no --data used to build, save, then exit 1 with "no input box"."""
    out = tmp_path / "t.ticket"
    result = invoke("build", checkpoint, "--n", 12, "--resample", resample, "--block-draws", 0, "-o", out)
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert DEFAULT_LAW in text and "input box [-6, 6] per feature" in text
    assert "certified sup |f-g|, exact arithmetic" in text
    box = json.loads(out.with_suffix(".report.json").read_text())["verification"]["input_box"]
    assert box["law_name"] == "normal" and "default" in box["source"]
    assert (box["lo_min"], box["hi_max"]) == (-6.0, 6.0)


def test_verify_without_data_or_box_uses_the_default_law(built: tuple[Result, Path], checkpoint: Path) -> None:
    result = invoke("verify", built[1], "--against", checkpoint)
    assert result.exit_code == 0, result.output
    assert DEFAULT_LAW in flat(result.output)


def test_export_onnx_runs_in_onnxruntime(built: tuple[Result, Path], workdir: Path) -> None:
    import onnxruntime as ort

    out = workdir / "g.onnx"
    result = invoke("export", built[1], "--format", "onnx", "-o", out)
    assert result.exit_code == 0, result.output
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["output"], {"input": x})
    with torch.no_grad():
        expected = Ticket.load(built[1]).to_module()(torch.from_numpy(x)).numpy()
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_export_safetensors_writes_pruned_source_and_mask(built: tuple[Result, Path], workdir: Path) -> None:
    out = workdir / "g.safetensors"
    result = invoke("export", built[1], "--format", "safetensors", "-o", out)
    assert result.exit_code == 0, result.output
    assert check_pruned_equals_source_times_mask(out)


def test_build_at_depth_l_plus_1_verifies_inspects_and_exports(checkpoint: Path, workdir: Path) -> None:
    import onnxruntime as ort

    out = workdir / "shallow.ticket"
    result = invoke("build", checkpoint, "--n", 12, "--depth", "L+1", "--input-domain", "-1,1", "-o", out)
    assert result.exit_code == 0, result.output
    ticket = Ticket.load(out)
    assert ticket.depth == "L+1" and ticket.build["config"]["depth"] == "L+1"
    report = json.loads(out.with_suffix(".report.json").read_text())
    checks = report["verification"]["layers"]["float64"]
    assert [c["construction"] for c in checks] == ["offset_blocks", "copies"]
    assert report["verification"]["certified"]["max_bound"] is not None
    text = flat(invoke("inspect", out).output)
    assert "2 target layers -> 3 random layers (depth L+1)" in text and "C = one random layer" in text
    onnx_path = workdir / "shallow.onnx"
    assert invoke("export", out, "--format", "onnx", "-o", onnx_path).exit_code == 0
    x = np.random.default_rng(2).uniform(-1, 1, (4, 6)).astype(np.float32)
    (got,) = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["output"], {"input": x})
    with torch.no_grad():
        expected = ticket.to_module()(torch.from_numpy(x)).numpy()
        exact = copy.deepcopy(ticket.to_module()).double()(torch.from_numpy(x).double()).numpy()
    # two float32 runs with different summation orders (the L pair's constants cancel in float32): each is as far
    # from the float64 network as float32 allows, not bit-equal to the other
    float32_error = max(np.abs(expected - exact).max(), 1e-6 * np.abs(exact).max())
    assert np.abs(got - exact).max() <= 10 * float32_error
    safetensors_path = workdir / "shallow.safetensors"
    assert invoke("export", out, "--format", "safetensors", "-o", safetensors_path).exit_code == 0
    assert check_pruned_equals_source_times_mask(safetensors_path)
    assert_fails_cleanly(invoke("build", checkpoint, "--depth", "L+1", "--resample", 2, "--no-verify"), "pure source")


def test_module_entry_point_runs_as_a_real_process() -> None:
    done = subprocess.run([sys.executable, "-m", "ticketsolver", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for command in ("build", "verify", "inspect", "export"):
        assert command in done.stdout


# -- failures: a message and a non-zero exit, never a traceback -------------------------------------------------------


def test_missing_checkpoint(workdir: Path) -> None:
    assert_fails_cleanly(invoke("build", workdir / "absent.pt", "--no-verify"), "cannot read checkpoint")


@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_pickle_payload_in_place_of_a_state_dict_is_refused_and_never_runs(container: str, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    if container == "pickle":
        evil.write_bytes(pickle.dumps({"0.weight": WritesMarker(marker)}))
    else:
        torch.save({"0.weight": WritesMarker(marker)}, evil)
    result = invoke("build", evil, "--no-verify", "-o", tmp_path / "t.ticket")
    assert_fails_cleanly(result, "evil.pt")
    assert "refused" in flat(result.output) or "not a readable torch checkpoint" in flat(result.output)
    assert not marker.exists()
    assert not (tmp_path / "t.ticket").exists()


def test_the_pickle_payload_is_live(tmp_path: Path) -> None:
    """Control for the test above: plain unpickling does run the payload."""
    marker = tmp_path / "payload-ran"
    pickle.loads(pickle.dumps(WritesMarker(marker)))
    assert marker.exists()


def test_mismatched_arch(checkpoint: Path, tmp_path: Path) -> None:
    result = invoke("build", checkpoint, "--arch", "lenet5", "--no-verify", "-o", tmp_path / "t.ticket")
    assert_fails_cleanly(result, "mismatched --arch lenet5")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--n", 0, "BuildConfig: n must be an integer in [1, 64], got 0"),
        ("--resample", -1, "BuildConfig: resample must be an integer in [0, 255], got -1"),
        ("--input-domain", "1,0", "BuildConfig: input_domain must be (lo, hi), finite with lo < hi, got (1.0, 0.0)"),
        ("--solver", "bogus", "BuildConfig: solver must be one of auto, bruteforce"),
        ("--block-draws", 3, "BuildConfig: block_draws > 0 redraws random values: it needs resample > 0"),
    ],
)
def test_bad_build_parameters(checkpoint: Path, tmp_path: Path, option: str, value: object, message: str) -> None:
    result = invoke("build", checkpoint, option, value, "--no-verify", "-o", tmp_path / "t.ticket")
    assert_fails_cleanly(result, message)
    assert not (tmp_path / "t.ticket").exists()


def test_malformed_input_domain_is_a_usage_error(checkpoint: Path, tmp_path: Path) -> None:
    result = invoke("build", checkpoint, "--input-domain", "zero", "--no-verify", "-o", tmp_path / "t.ticket")
    assert_fails_cleanly(result, "expected LO,HI", code=2)


def test_unknown_export_format(built: tuple[Result, Path], tmp_path: Path) -> None:
    result = invoke("export", built[1], "--format", "bogus", "-o", tmp_path / "g.bogus")
    assert_fails_cleanly(result, "--format must be one of onnx, safetensors", code=2)
    assert not (tmp_path / "g.bogus").exists()


@pytest.mark.parametrize("command", ["inspect", "verify", "export"])
def test_corrupt_ticket(command: str, checkpoint: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.ticket"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2048))
    extra = {
        "inspect": [],
        "verify": ["--against", checkpoint],
        "export": ["--format", "onnx", "-o", tmp_path / "g.onnx"],
    }[command]
    assert_fails_cleanly(invoke(command, corrupt, *extra), "not a ticketsolver ticket")


def test_missing_ticket(tmp_path: Path) -> None:
    assert_fails_cleanly(invoke("inspect", tmp_path / "absent.ticket"), "cannot read ticket")


def test_ticket_verified_against_another_network(built: tuple[Result, Path], tmp_path: Path) -> None:
    other = tmp_path / "other.pt"
    torch.save(MLP((6, 5, 3)).state_dict(), other)
    assert_fails_cleanly(invoke("verify", built[1], "--against", other), "built for another network")


def _npz_without_x(tmp_path: Path) -> Path:
    np.savez(tmp_path / "d.npz", inputs=np.zeros((2, 6), np.float32))
    return tmp_path / "d.npz"


def _csv(tmp_path: Path) -> Path:
    (tmp_path / "d.csv").write_text("1,2,3\n")
    return tmp_path / "d.csv"


@pytest.mark.parametrize(
    ("make_data", "message"),
    [
        (_npz_without_x, "d.npz has no array named 'x' (inputs; 'y' holds optional labels)"),
        (_csv, "d.csv as .npz or .safetensors"),
    ],
    ids=["npz-without-x", "data-not-npz-or-safetensors"],
)
def test_unreadable_data_file_exits_1_with_the_reason(
    make_data: Any, message: str, built: tuple[Result, Path], checkpoint: Path, tmp_path: Path
) -> None:
    result = invoke("verify", built[1], "--against", checkpoint, "--data", make_data(tmp_path))
    assert_fails_cleanly(result, message)


def test_data_that_is_neither_a_bundled_name_nor_a_file_is_a_usage_error(
    built: tuple[Result, Path], checkpoint: Path
) -> None:
    result = invoke("verify", built[1], "--against", checkpoint, "--data", "nowhere")
    assert_fails_cleanly(result, "'nowhere' is neither a bundled dataset", code=2)  # rich boxes the rest
    assert flat(result.output).startswith("Usage: ticketsolver verify")


def test_ticket_that_is_a_directory_exits_1(tmp_path: Path) -> None:
    assert_fails_cleanly(invoke("inspect", tmp_path), f"cannot read ticket {tmp_path}")


def test_ticket_into_a_missing_directory_exits_1_and_names_it(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "missing-directory" / "t.ticket"
    result = invoke("build", checkpoint, "--n", 4, "--no-verify", "-o", out)
    assert_fails_cleanly(result, "missing-directory")
    assert not out.parent.exists()
