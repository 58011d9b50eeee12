"""`ticketsolver learn-mask` and the task form of `verify`: learned-mask tickets from the command line.

Every run learns the wine MLP (13 -> 64 -> 3) for a few epochs, so each takes well under a second. References:
the files the commands write read back with the library, onnxruntime on wine's test split, and plain JSON.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result
from typer.testing import CliRunner

from ticketsolver import BuildConfig, Ticket, build_ticket, load_target
from ticketsolver.cli import app
from ticketsolver.data import load_wine_standardized
from ticketsolver.models import MLP

runner = CliRunner()


def invoke(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def flat(text: str) -> str:
    """Output with rich's line wrapping (and the borders of its error box) undone."""
    return " ".join(text.replace("│", " ").split())


def assert_fails_cleanly(result: Result, message: str, code: int = 1) -> None:
    """Non-zero exit with ``message`` and no Python exception escaping (so no traceback is printed)."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert message in flat(result.output), result.output
    assert "Traceback" not in result.output


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-learn")


@pytest.fixture(scope="module")
def learned(workdir: Path) -> tuple[Result, Path]:
    out = workdir / "wine.ticket"
    return invoke(
        "learn-mask", "mlp", "--data", "wine", "--method", "edge-popup", "--keep", 0.5, "--epochs", 3, "-o", out
    ), out


@pytest.fixture(scope="module")
def report(learned: tuple[Result, Path]) -> dict:
    assert learned[0].exit_code == 0, learned[0].output
    return json.loads(learned[1].with_suffix(".report.json").read_text())


@pytest.fixture(scope="module")
def mlp_checkpoint(workdir: Path) -> Path:
    """A state_dict of a wine-shaped MLP 13 -> 8 -> 3."""
    torch.manual_seed(0)
    path = workdir / "mlp.pt"
    torch.save(MLP((13, 8, 3)).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def constructed(workdir: Path) -> Path:
    """A pure constructed ticket of a wine-shaped MLP 13 -> 8 -> 3 at n = 4."""
    torch.manual_seed(0)
    ticket = build_ticket(MLP((13, 8, 3)), BuildConfig(n=4, solver="mitm"), input_shape=(13,))
    return ticket.save(workdir / "constructed.ticket")


# -- learning, then inspect / export / verify ---------------------------------------------------------------------


def test_learn_mask_writes_the_ticket_and_its_report(learned: tuple[Result, Path], report: dict) -> None:
    ticket = Ticket.load(learned[1])
    assert ticket.learned and ticket.build["method"] == "edge-popup" and ticket.build["random_network"] == "arch"
    assert [(layout.d_out, layout.d_in) for layout in ticket.layouts] == [(64, 13), (3, 64)]
    assert ticket.sizes()["kept_params"] == ticket.sizes()["source_params"] // 2
    assert report["learn_config"] == ticket.build["config"] and report["learn_config"]["keep"] == 0.5
    assert report["ticket"]["sizes"] == ticket.sizes() and report["seconds"] > 0
    assert report["task"]["accuracy"] == report["task"]["recorded_accuracy"] == ticket.build["task"]["test_accuracy"]
    text = flat(learned[0].output)
    assert "epochs" in text and "3/3" in text and "learned-mask ticket (edge-popup" in text
    assert "recorded at learning (wine)" in text


def test_inspect_accepts_the_learned_ticket(learned: tuple[Result, Path]) -> None:
    result = invoke("inspect", learned[1])
    assert result.exit_code == 0, result.output
    assert "learned-mask ticket (edge-popup, random network: arch)" in flat(result.output)
    assert "source: iid" in flat(result.output)


def test_exported_onnx_has_the_reported_accuracy_on_the_test_split(
    learned: tuple[Result, Path], report: dict, workdir: Path
) -> None:
    import onnxruntime as ort

    out = workdir / "wine.onnx"
    result = invoke("export", learned[1], "--format", "onnx", "-o", out)
    assert result.exit_code == 0, result.output
    wine = load_wine_standardized()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["output"], {"input": wine.x_test.numpy()})
    accuracy = float((logits.argmax(1) == wine.y_test.numpy()).mean())
    assert abs(100 * accuracy - 100 * report["task"]["accuracy"]) <= 0.1


def test_verify_with_data_alone_measures_the_task(learned: tuple[Result, Path], report: dict, workdir: Path) -> None:
    out = workdir / "task.json"
    result = invoke("verify", learned[1], "--data", "wine", "--json", out)
    assert result.exit_code == 0, result.output
    task = json.loads(out.read_text())
    assert task["accuracy"] == report["task"]["accuracy"] and task["examples"] == 54
    assert task["data"] == "wine (test split)" and task["ticket"] == "learned"


def test_verify_with_data_alone_measures_a_constructed_ticket_too(constructed: Path) -> None:
    result = invoke("verify", constructed, "--data", "wine")
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "constructed ticket: kept" in text and "the ticket's network on wine (test split)" in text
    assert "recorded at learning" not in text


def test_verify_of_a_learned_ticket_against_a_target_exits_1(
    learned: tuple[Result, Path], mlp_checkpoint: Path
) -> None:
    result = invoke("verify", learned[1], "--against", mlp_checkpoint, "--data", "wine")
    assert_fails_cleanly(result, "a learned-mask ticket has a task, not a target: verify it with --data alone")


def test_verify_without_against_needs_data(learned: tuple[Result, Path]) -> None:
    assert_fails_cleanly(invoke("verify", learned[1]), "without --against, verify measures the ticket", code=2)


def test_verify_without_against_needs_labels(learned: tuple[Result, Path], workdir: Path) -> None:
    unlabelled = workdir / "unlabelled.npz"
    np.savez(unlabelled, x=load_wine_standardized().x_test.numpy())
    result = invoke("verify", learned[1], "--data", unlabelled)
    assert_fails_cleanly(result, "has no labels (y)", code=2)


# -- the other random networks and methods --------------------------------------------------------------------------


def test_iterand_with_a_short_period_rerandomizes(workdir: Path) -> None:
    out = workdir / "iterand.ticket"
    # wine: 124 training examples = 2 iterations per epoch; 4 epochs, period 2: 4 re-randomisations
    args = ("--method", "iterand", "--keep", 0.5, "--epochs", 4, "--rerand-period", 2, "--rerand-rate", 0.5)
    result = invoke("learn-mask", "mlp", "--data", "wine", *args, "-o", out)
    assert result.exit_code == 0, result.output
    inspected = invoke("inspect", out)
    assert inspected.exit_code == 0, inspected.output
    assert "source: rerandomized (IteRand-style" in flat(inspected.output)
    sizes = json.loads(invoke("inspect", out, "--json").stdout)["sizes"]
    assert sizes["source_kind"] == "rerandomized" and sizes["examined_values"] > sizes["source_params"]
    assert Ticket.load(out).build["rerandomization"] == {"period": 2, "rate": 0.5, "events": 4}


def test_init_from_a_constructed_ticket(constructed: Path, workdir: Path) -> None:
    out = workdir / "init-from.ticket"
    result = invoke("learn-mask", "--init-from", constructed, "--data", "wine", "--epochs", 2, "-o", out)
    assert result.exit_code == 0, result.output
    ticket, start = Ticket.load(out), Ticket.load(constructed)
    assert ticket.build["random_network"] == "init-from" and ticket.build["config"]["keep"] is None
    assert ticket.sizes()["source_params"] == start.sizes()["source_params"]
    # keep None: every tensor keeps the constructed ticket's own count (U, beta -> layer 2p; V -> layer 2p+1)
    kept = [int(sum(m.sum() for m in masks.values())) for masks in ticket.masks]
    expected = [[int(m["U"].sum() + m["beta"].sum()), int(m["V"].sum())] for m in start.masks]
    assert kept == [count for pair in expected for count in pair]


def test_source_of_a_target_learns_over_its_pure_build_source(mlp_checkpoint: Path, workdir: Path) -> None:
    out = workdir / "source-of.ticket"
    result = invoke("learn-mask", "--source-of", mlp_checkpoint, "--n", 4, "--data", "wine", "--epochs", 2, "-o", out)
    assert result.exit_code == 0, result.output
    ticket = Ticket.load(out)
    pure = build_ticket(load_target(mlp_checkpoint), BuildConfig(n=4))
    assert ticket.build["random_network"] == "source-of" and len(ticket.layouts) == 2 * len(pure.layouts)
    assert ticket.sizes()["source_params"] == pure.sizes()["source_params"]
    assert "Linear 13->8" in flat(result.output)  # the build's per-layer progress


def test_learning_on_a_labelled_file_splits_it_70_30(workdir: Path) -> None:
    wine = load_wine_standardized()
    data = workdir / "wine.npz"
    np.savez(data, x=wine.x_train.numpy(), y=wine.y_train.numpy())
    out = workdir / "file.ticket"
    result = invoke("learn-mask", "mlp", "--data", data, "--epochs", 2, "-o", out)
    assert result.exit_code == 0, result.output
    task = Ticket.load(out).build["task"]
    assert task["data"] == "wine.npz" and task["examples"] == round(0.3 * len(wine.x_train))


# -- failures: a message and a non-zero exit, never a traceback -------------------------------------------------------


@pytest.mark.parametrize("keep", [0, 1.5])
def test_bad_keep_is_the_config_error_naming_keep(keep: float, tmp_path: Path) -> None:
    out = tmp_path / "t.ticket"
    result = invoke("learn-mask", "mlp", "--data", "wine", "--keep", keep, "--epochs", 1, "-o", out)
    assert_fails_cleanly(result, f"LearnConfig: keep must be a number in (0, 1], got {float(keep)}")
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "exactly one of ARCH_OR_MODEL"),
        (("mlp", "--init-from", "x.ticket"), "got ARCH_OR_MODEL and --init-from"),
        (("--source-of", "x.pt"), "--source-of and --n go together"),
        (("--init-from", "x.ticket", "--width", 2), "--width shapes a network drawn for an architecture"),
        (("mlp", "--rerand-period", 5), "--rerand-period applies with --method iterand only"),
        (("lenet5",), "lenet5 takes (C, 28, 28) images"),
        (("nowhere.pt",), "'nowhere.pt' is neither a built-in architecture"),
    ],
    ids=[
        "no-network",
        "two-networks",
        "source-of-without-n",
        "width-of-a-ticket",
        "rerand-of-edge-popup",
        "lenet5-on-wine",
        "no-such-model",
    ],
)
def test_bad_usage_exits_2(args: tuple[object, ...], message: str, tmp_path: Path) -> None:
    result = invoke("learn-mask", *args, "--data", "wine", "--epochs", 1, "-o", tmp_path / "t.ticket")
    assert_fails_cleanly(result, message, code=2)
    assert not (tmp_path / "t.ticket").exists()


def test_init_from_a_learned_ticket_exits_1(learned: tuple[Result, Path], tmp_path: Path) -> None:
    result = invoke("learn-mask", "--init-from", learned[1], "--data", "wine", "-o", tmp_path / "t.ticket")
    assert_fails_cleanly(result, "the ticket already holds learned layers")


def test_the_defaults_shown_in_the_help_are_learn_configs() -> None:
    from ticketsolver.cli import learn_mask_cmd
    from ticketsolver.learning import LearnConfig

    parameters = inspect.signature(learn_mask_cmd).parameters
    defaults = LearnConfig()
    for name in ("method", "epochs", "seed", "batch_size", "lr"):
        assert parameters[name].default == getattr(defaults, name), name
