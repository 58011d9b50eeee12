"""Verify a ticket on its task: the pruned network's accuracy and loss on labelled data.

A learned-mask ticket (edge-popup, IteRand) has a task, not a target: there is no f to compare g with, so it is
verified by what it was learned for, the accuracy of ``ticket.to_module()`` on held-out labelled data, beside
the accuracy its learning recorded. A constructed ticket can be measured the same way. ``ticketsolver verify``
without ``--against`` prints this report.

>>> from ticketsolver.data import load_wine_standardized
>>> from ticketsolver.learning import LearnConfig, learn_mask, random_network_of
>>> from ticketsolver.models import MLP, Target
>>> wine = load_wine_standardized()
>>> network = random_network_of(Target.from_module(MLP((13, 64, 3)), (13,)))
>>> ticket = learn_mask(network, wine, LearnConfig(epochs=5))
>>> report = evaluate_task(ticket, wine, device="cpu")
>>> report.examples, report.accuracy == report.recorded_accuracy
(54, True)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ticketsolver.errors import VerificationError
from ticketsolver.verification.report import JsonReport, _percent, _plain
from ticketsolver.verification.verify import _check_data, _device_note, _ieee_float32, _resolve_device

if TYPE_CHECKING:
    from rich.console import Console

    from ticketsolver.ticket import Ticket

__all__ = ["TaskReport", "evaluate_task"]


@dataclass
class TaskReport(JsonReport):
    """How the ticket's pruned network does on a labelled task.

    Attributes:
        data: what was evaluated, e.g. ``"wine (test split)"``.
        examples: number of labelled inputs.
        accuracy: fraction of inputs whose argmax output equals the label (float32 forward pass).
        loss: mean cross-entropy of the outputs (logits) against the labels.
        device: the torch device that ran the forward passes, e.g. ``"cpu"``.
        device_note: a sentence about the device ("ran on CPU: no GPU present" when so).
        input_shape: per-sample input shape.
        ticket: ``"learned"`` or ``"constructed"``.
        method: the learning method (``"edge-popup"``, ``"iterand"``) of a learned ticket, else None.
        sizes: the ticket's :meth:`~ticketsolver.ticket.Ticket.sizes` (kept/source params, source kind, examined
            values).
        recorded: a learned ticket's task as its learning recorded it (``build["task"]``: data, train and test
            accuracy, test loss, examples), else None.
        seconds: wall-clock seconds of the evaluation.
        torch_version: the torch version that ran.
    """

    data: str
    examples: int
    accuracy: float
    loss: float
    device: str
    device_note: str
    input_shape: list[int]
    ticket: str
    method: str | None
    sizes: dict[str, Any]
    recorded: dict[str, Any] | None = None
    seconds: float = 0.0
    torch_version: str = field(default_factory=lambda: torch.__version__)

    @property
    def recorded_accuracy(self) -> float | None:
        """The test accuracy the learning recorded (``build["task"]["test_accuracy"]``), or None."""
        value = (self.recorded or {}).get("test_accuracy")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (str, int, float, bool, None, lists, dicts)."""
        return _plain(
            {
                "data": self.data,
                "examples": self.examples,
                "accuracy": self.accuracy,
                "loss": self.loss,
                "recorded_accuracy": self.recorded_accuracy,
                "device": self.device,
                "device_note": self.device_note,
                "input_shape": list(self.input_shape),
                "ticket": self.ticket,
                "method": self.method,
                "sizes": dict(self.sizes),
                "recorded": None if self.recorded is None else dict(self.recorded),
                "seconds": self.seconds,
                "torch_version": self.torch_version,
            }
        )

    def render(self, console: Console | None = None) -> None:
        """Prints the ticket's sizes and a table of the task's metrics (measured, and recorded when learned).

        Args:
            console: where to print; a new ``rich.console.Console()`` if None.
        """
        from rich.console import Console
        from rich.table import Table

        console = console if console is not None else Console()
        console.print(f"[bold]task verification[/bold] on {self.device}: {self.device_note}")
        s = self.sizes
        kind = f"learned-mask ticket ({self.method})" if self.ticket == "learned" else "constructed ticket"
        examined = s.get("examined_values")
        console.print(
            f"{kind}: kept {s['kept_params']:,} of {s['source_params']:,} random source params "
            f"({s['kept_params'] / max(s['source_params'], 1):.2%}); source {s['source_kind']}, examined "
            f"{'an unrecorded number of' if examined is None else f'{examined:,}'} random values"
        )
        table = Table(title=f"the ticket's network on {self.data}")
        table.add_column("metric")
        table.add_column("measured", justify="right")
        recorded = self.recorded
        if recorded is not None:
            table.add_column(f"recorded at learning ({recorded.get('data', '?')})", justify="right")
        rows: list[tuple[str, str, str]] = [
            ("examples", str(self.examples), str(recorded.get("examples", "-")) if recorded else "-"),
            ("accuracy", _percent(self.accuracy), _percent(self.recorded_accuracy)),
            ("mean cross-entropy", f"{self.loss:.4f}", _number(recorded.get("test_loss")) if recorded else "-"),
        ]
        for label, measured, stored in rows:
            table.add_row(label, measured, *([stored] if recorded is not None else []))
        console.print(table)
        if recorded is not None and self.recorded_accuracy is not None:
            difference = 100.0 * (self.accuracy - self.recorded_accuracy)
            console.print(f"measured - recorded accuracy: {difference:+.2f} points")
        console.print(f"seconds: {self.seconds:.2f}")


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"


def evaluate_task(
    ticket: Ticket,
    data: Any,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 1024,
    name: str | None = None,
) -> TaskReport:
    """The accuracy and mean cross-entropy of the ticket's pruned network on labelled data.

    Works for any ticket: a learned-mask ticket's report also carries the task its learning recorded
    (``build["task"]``), so the two accuracies can be compared (they agree when the data are that test split).

    Args:
        ticket: the :class:`~ticketsolver.ticket.Ticket` (constructed or learned).
        data: a :class:`ticketsolver.data.Dataset` (its test split is used) or an ``(x, y)`` pair of tensors with
            integer labels ``y``.
        device: where to run (default: CUDA when present, else the CPU; the report says which).
        batch_size: inputs per forward pass.
        name: what the data are called in the report (default: the dataset's name, or ``"(x, y)"``).

    Returns:
        The :class:`TaskReport`.

    Raises:
        VerificationError: no labels, data of the wrong shape or type, labels outside the network's outputs,
            an unknown or absent device, or a ``batch_size`` below 1.
    """
    begin = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise VerificationError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if data is not None and hasattr(data, "x_test"):
        name = name or f"{getattr(data, 'name', 'data')} (test split)"
        data = (data.x_test, data.y_test)
    if data is None:
        raise VerificationError("a task needs labelled data: a Dataset or an (x, y) pair")
    x, y = _check_data(data, tuple(ticket.input_shape))
    if x is None or y is None:
        raise VerificationError("the data have no labels: a task is measured on labelled data (x, y)")
    dev = _resolve_device(device)
    network = ticket.to_module().to(dev)
    network.requires_grad_(False)
    correct, loss_sum = 0, 0.0
    with torch.no_grad(), _ieee_float32(dev):
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(dev, torch.float32), y[i : i + batch_size].to(dev)
            logits = network(xb).flatten(1)
            if i == 0 and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
                raise VerificationError(
                    f"labels must be in [0, {logits.shape[1]}) for a network of {logits.shape[1]} outputs, got "
                    f"[{int(y.min())}, {int(y.max())}]"
                )
            correct += int((logits.argmax(1) == yb).sum())
            loss_sum += float(F.cross_entropy(logits.double(), yb, reduction="sum"))
    learned = bool(ticket.learned)
    build = ticket.build if isinstance(ticket.build, dict) else {}
    recorded = build.get("task") if learned else None
    return TaskReport(
        data=name or "(x, y)",
        examples=len(x),
        accuracy=correct / len(x),
        loss=loss_sum / len(x),
        device=str(dev),
        device_note=_device_note(dev),
        input_shape=list(ticket.input_shape),
        ticket="learned" if learned else "constructed",
        method=build.get("method") if learned else None,
        sizes=dict(ticket.sizes()),
        recorded=dict(recorded) if isinstance(recorded, dict) else None,
        seconds=time.perf_counter() - begin,
    )
