"""evaluate_task: a ticket's network measured on its task, for constructed and learned tickets alike.

Reference: the ticket's own ``to_module()`` evaluated by hand (argmax accuracy, PyTorch's cross-entropy), and
for a learned ticket the task its learning recorded.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from ticketsolver import Ticket
from ticketsolver.data import Dataset, load_wine_standardized
from ticketsolver.errors import VerificationError
from ticketsolver.learning import LearnConfig, learn_mask, random_network_of
from ticketsolver.models import MLP, Target
from ticketsolver.verification import TaskReport, evaluate_task

from .helpers import single_thread  # noqa: F401  (autouse fixture)


@pytest.fixture(scope="module")
def labelled(mlp_ticket: Ticket) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the MLP ticket and labels of a made-up task (so accuracy is neither 0 nor 1)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, *mlp_ticket.input_shape, generator=generator)
    return x, torch.randint(0, 3, (300,), generator=generator)


@pytest.fixture(scope="module")
def wine() -> Dataset:
    return load_wine_standardized()


@pytest.fixture(scope="module")
def learned(wine: Dataset) -> Ticket:
    network = random_network_of(Target.from_module(MLP((13, 64, 3)), (13,)), seed=1)
    return learn_mask(network, wine, LearnConfig(epochs=3, seed=1))


def test_accuracy_and_loss_of_a_constructed_ticket_equal_its_module_evaluated_by_hand(
    mlp_ticket: Ticket, labelled: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = labelled
    report = evaluate_task(mlp_ticket, (x, y), device="cpu", batch_size=64)  # several batches
    with torch.no_grad():
        logits = mlp_ticket.to_module()(x)
    assert report.accuracy == pytest.approx(float((logits.argmax(1) == y).double().mean()), abs=1e-12)
    assert report.loss == pytest.approx(float(F.cross_entropy(logits.double(), y)), rel=1e-6)
    assert 0.0 < report.accuracy < 1.0
    assert (report.examples, report.ticket, report.method, report.recorded) == (300, "constructed", None, None)
    assert report.sizes == mlp_ticket.sizes() and report.device == "cpu"


def test_a_learned_ticket_reports_the_accuracy_its_learning_recorded(learned: Ticket, wine: Dataset) -> None:
    report = evaluate_task(learned, wine, device="cpu")
    assert report.data == "wine (test split)" and report.examples == len(wine.x_test)
    assert report.ticket == "learned" and report.method == "edge-popup"
    assert report.recorded == learned.build["task"]
    assert report.accuracy == report.recorded_accuracy == learned.build["task"]["test_accuracy"]
    assert report.loss == pytest.approx(learned.build["task"]["test_loss"], rel=1e-5)


def test_report_as_json_and_as_tables(learned: Ticket, wine: Dataset, tmp_path: Path) -> None:
    report = evaluate_task(learned, (wine.x_test, wine.y_test), device="cpu", name="wine test")
    written = json.loads(report.to_json(tmp_path / "task.json").read_text())
    assert written == report.to_dict()
    assert written["accuracy"] == written["recorded_accuracy"] and written["sizes"] == learned.sizes()
    out = io.StringIO()
    report.render(Console(file=out, width=120))
    text = out.getvalue()
    assert "learned-mask ticket (edge-popup)" in text and "on wine test" in text
    assert "recorded at learning (wine)" in text and "measured - recorded accuracy: +0.00 points" in text
    assert isinstance(report, TaskReport)


def test_unlabelled_data_are_refused(mlp_ticket: Ticket, labelled: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(VerificationError, match="no labels"):
        evaluate_task(mlp_ticket, (labelled[0], None))
    with pytest.raises(VerificationError, match="labelled data"):
        evaluate_task(mlp_ticket, None)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x, y: (x[:, :4], y), r"data inputs must have shape \(N, 5\)"),
        (lambda x, y: (x, y + 3), r"labels must be in \[0, 3\)"),
        (lambda x, y: (x, y.float()), "labels must be an integer tensor"),
    ],
    ids=["wrong-input-shape", "labels-beyond-the-outputs", "float-labels"],
)
def test_data_that_do_not_fit_the_network_are_refused(
    mlp_ticket: Ticket, labelled: tuple[torch.Tensor, torch.Tensor], make: object, message: str
) -> None:
    with pytest.raises(VerificationError, match=message):
        evaluate_task(mlp_ticket, make(*labelled))  # type: ignore[operator]


def test_bad_batch_size_is_refused(mlp_ticket: Ticket, labelled: tuple[torch.Tensor, torch.Tensor]) -> None:
    with pytest.raises(VerificationError, match="batch_size"):
        evaluate_task(mlp_ticket, labelled, batch_size=0)
