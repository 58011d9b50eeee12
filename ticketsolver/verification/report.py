"""The verification report: every number verification measured, as JSON and as rich tables.

Last step of the verification stage; the CLI prints :meth:`Report.render` and the service stores
:meth:`Report.to_dict`. The report states numbers, not verdicts: which device ran (and that it was the
CPU when no GPU was present), the input box and law of the random inputs and where they came from, the
dtypes, output metrics per input set ("data", "random") and dtype, the per-layer table, the worst case
found, the certified bound (for exact arithmetic, and for a forward pass in each dtype, or why none could be
certified) and seconds per step.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ticketsolver.construction.pair import CONSTRUCTIONS
from ticketsolver.verification.certified import CertifiedBound
from ticketsolver.verification.layers import LayerCheck
from ticketsolver.verification.metrics import OutputMetrics
from ticketsolver.verification.worst_case import WorstCase

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["Report"]


def _plain(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become the strings "nan", "inf", "-inf" (strict JSON has none)."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class JsonReport:
    """``to_json`` for a report with a JSON-safe ``to_dict``."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self, path: str | Path) -> Path:
        """Writes :meth:`to_dict` as indented JSON to ``path``; returns the path."""
        out = Path(path)
        out.write_text(json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")
        return out


@dataclass
class Report(JsonReport):
    """Everything :func:`~ticketsolver.verification.verify_networks` measured.

    Attributes:
        device: the torch device that ran the forward passes, e.g. ``"cpu"`` or ``"cuda:0"``.
        device_note: a sentence about the device ("ran on CPU: no GPU present" when so).
        dtypes: the dtypes of the forward passes, e.g. ``["float32", "float64"]``.
        input_shape: per-sample input shape.
        input_box: ``source`` (where the box came from: declared, from data, the ticket's build box or the
            default; see :mod:`ticketsolver.verification.inputs`), ``law_name`` and ``law`` (the law of the
            random inputs) and the extreme bounds ``lo_min``, ``lo_max``, ``hi_min``, ``hi_max``.
        sections: input set (``"data"``, ``"random"``) -> dtype -> :class:`OutputMetrics`.
        layers: dtype -> one :class:`LayerCheck` per pruned pair.
        worst_case: dtype -> :class:`WorstCase` (empty when the search was not run).
        certified: the :class:`CertifiedBound`, or None when not computed.
        seconds: step name -> wall-clock seconds (``"total"`` included).
        seed: the seed of the random inputs and starts.
        torch_version: the torch version that ran.
        notes: sentences the report must carry (e.g. why a graph has no certified bound).
    """

    device: str
    device_note: str
    dtypes: list[str]
    input_shape: list[int]
    input_box: dict[str, Any]
    sections: dict[str, dict[str, OutputMetrics]] = field(default_factory=dict)
    layers: dict[str, list[LayerCheck]] = field(default_factory=dict)
    worst_case: dict[str, WorstCase] = field(default_factory=dict)
    certified: CertifiedBound | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    torch_version: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (str, int, float, bool, None, lists, dicts)."""
        return _plain(
            {
                "device": self.device,
                "device_note": self.device_note,
                "dtypes": list(self.dtypes),
                "input_shape": list(self.input_shape),
                "input_box": dict(self.input_box),
                "sections": {
                    name: {dtype: m.to_dict() for dtype, m in per_dtype.items()}
                    for name, per_dtype in self.sections.items()
                },
                "layers": {dtype: [c.to_dict() for c in checks] for dtype, checks in self.layers.items()},
                "worst_case": {dtype: w.to_dict() for dtype, w in self.worst_case.items()},
                "certified": self.certified.to_dict() if self.certified is not None else None,
                "seconds": dict(self.seconds),
                "seed": self.seed,
                "torch_version": self.torch_version,
                "notes": list(self.notes),
            }
        )

    def render(self, console: Console | None = None) -> None:
        """Prints a summary table (metric / one column per dtype) and a per-layer table.

        Args:
            console: where to print; a new ``rich.console.Console()`` if None.
        """
        from rich.console import Console
        from rich.table import Table

        console = console if console is not None else Console()
        console.print(f"[bold]verification[/bold] on {self.device}: {self.device_note}")
        box = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in self.input_box.items()}
        if box.get("lo_min") == box.get("lo_max") and box.get("hi_min") == box.get("hi_max"):
            span = f"[{box.get('lo_min')}, {box.get('hi_min')}] per feature"
        else:
            span = f"lo in [{box.get('lo_min')}, {box.get('lo_max')}], hi in [{box.get('hi_min')}, {box.get('hi_max')}]"
        console.print(f"input box {span} ({box.get('source', '?')}); input shape {tuple(self.input_shape)}")
        if "law" in box:
            console.print(f"random inputs: {box['law']}")

        summary = Table(title="f vs g", show_lines=False)
        summary.add_column("metric")
        for dtype in self.dtypes:
            summary.add_column(dtype, justify="right")
        for name, per_dtype in self.sections.items():
            n = next(iter(per_dtype.values())).n_inputs if per_dtype else 0
            rows: list[tuple[str, str]] = [
                ("max |f-g|", "max_abs_error"),
                ("mean per-input max |f-g|", "mean_abs_error"),
                ("relative error max", "relative_error_max"),
                ("relative error mean", "relative_error_mean"),
                ("accuracy f", "accuracy_target"),
                ("accuracy g", "accuracy_pruned"),
                ("top-1 agreement", "top1_agreement"),
            ]
            for label, attr in rows:
                values = [getattr(per_dtype[d], attr) if d in per_dtype else None for d in self.dtypes]
                if attr.startswith("accuracy") and all(v is None for v in values):
                    continue
                fmt = _percent if attr.startswith(("accuracy", "top1")) else _sci
                summary.add_row(f"{name} ({n}): {label}", *[fmt(v) for v in values])
        if self.worst_case:
            summary.add_row(
                "worst case max |f-g| (PGD)",
                *[_sci(self.worst_case[d].max_abs_error) if d in self.worst_case else "-" for d in self.dtypes],
            )
        certified = self.certified
        if certified is not None:
            # exact arithmetic holds whatever the dtype: the same figure under each, for comparison
            summary.add_row("certified sup |f-g|, exact arithmetic", *[_bound(certified.max_bound)] * len(self.dtypes))
            if certified.forward:
                summary.add_row(
                    "certified sup |f-g|, forward pass in this dtype",
                    *[_bound(certified.forward[d].max_bound) if d in certified.forward else "-" for d in self.dtypes],
                )
        console.print(summary)
        if certified is not None:
            console.print(
                "certified: 'exact arithmetic' holds on the stored weights over the whole box, rounding excluded; "
                "'forward pass' adds the rounding of f's and g's forward passes in that dtype on its inputs of "
                "the box (gamma_k per dot product, any summation order; Winograd/FFT convolutions excluded)"
                + "".join(
                    f"; {name} rounding up to {_sci(forward.rounding_max)}"
                    for name, forward in certified.forward.items()
                    if forward.rounding_max is not None
                )
            )
            if certified.not_certified is not None:
                console.print(f"[yellow]not certified:[/yellow] {certified.not_certified}")
        for note in self.notes:
            console.print(f"[dim]note:[/dim] {note}")

        if self.layers:
            console.print(self._layer_table(Table))
            outside = {c.index: c.outside_linear_region for c in list(self.layers.values())[-1]}
            if any(outside.values()):
                counts = ", ".join(f"layer {i}: {k}" for i, k in outside.items() if k)
                console.print(
                    f"L pairs compared with their effective layer only where linear (inside their build box); "
                    f"inputs outside: {counts}"
                )
        if self.seconds:
            console.print("seconds: " + ", ".join(f"{name} {sec:.2f}" for name, sec in self.seconds.items()))

    def _layer_table(self, table_cls: Any) -> Any:
        from rich import box

        table = table_cls(
            title="per layer, on the target's activations: g-f = max|pair - target layer|, "
            "g~eff = max|pair - effective layer| / max|f|",
            box=box.SIMPLE_HEAD,
        )
        table.add_column("#", justify="right")
        table.add_column("target layer", no_wrap=True)
        table.add_column("", justify="center")  # construction letter, O or I
        table.add_column("max|f|", justify="right", no_wrap=True)
        dtypes = [d for d in self.dtypes if d in self.layers]
        short = {d: d.replace("float", "f") for d in dtypes}
        for dtype in dtypes:
            table.add_column(f"g-f {short[dtype]}", justify="right", no_wrap=True)
        for dtype in dtypes:
            table.add_column(f"g~eff {short[dtype]}", justify="right", no_wrap=True)
        # the certified bound's per-layer terms are in to_dict(); the printed table stays within 80 columns
        by_dtype = {d: {c.index: c for c in self.layers[d]} for d in dtypes}
        for check in self.layers[dtypes[-1]] if dtypes else []:
            i = check.index
            letter = CONSTRUCTIONS.get(check.construction, "?")
            row = [str(i), _short_module(check.module), letter, _sci2(check.max_abs_target)]
            row += [_sci2(by_dtype[d][i].pair_vs_target) for d in dtypes]
            row += [_sci2(by_dtype[d][i].pair_vs_effective_relative) for d in dtypes]
            table.add_row(*row)
        return table


def _bound(value: float | None) -> str:
    return "not certified" if value is None else _sci(value)


def _short_module(text: str) -> str:
    """``Conv2d(6->16, k5x5, s1, p0, d1)`` -> ``Conv2d 6->16 k5``: defaults and repeats dropped."""
    text = re.sub(r"k(\d+)x\1", r"k\1", text)
    text = re.sub(r", (s1|p0|d1)(?=[,)])", "", text)
    return text.replace("(", " ").replace(")", "").replace(",", "")


def _sci2(value: float | None) -> str:
    """Two significant digits, for narrow columns."""
    return "-" if value is None else f"{value:.1e}"


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}%"
