"""The job page's figures, drawn server-side with matplotlib as SVG documents with labelled axes.

Drawn with matplotlib's object API (no pyplot, no global figure registry) under one lock, because
``rc_context`` changes process-wide settings for the length of a drawing. Text stays text
(``svg.fonttype = none``): the SVG is small, and its labels can be read and searched. Every data series
gets an SVG id (``gid``) that names it, so that a reader (or a test) finds the bars and lines drawn.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["output_error_figure", "sweep_figure", "weight_error_figure"]

_LOCK = threading.Lock()
_STYLE: dict[Any, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "ticketsolver",  # the same data gives the same document
    "font.size": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
#: no RDF block: it names outside vocabularies (dates and tool names say nothing about the data)
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}
#: errors below this are drawn at it: a log axis has no 0 (an exactly matched weight is counted in the legend)
FLOOR = 1e-12


def _svg(draw: Callable[[Figure], None]) -> bytes:
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with _LOCK, rc_context(_STYLE):
        figure = Figure(figsize=(7.0, 3.6), layout="constrained")
        draw(figure)
        out = io.BytesIO()
        figure.savefig(out, format="svg", metadata=_NO_METADATA)
    return out.getvalue()


def weight_error_figure(errors: Sequence[np.ndarray], constructions: Sequence[str]) -> bytes:
    """Histogram of the per-weight error ``|w - w_eff|`` of each target layer, log x axis (one step outline
    per layer, ids ``weight-errors-layer-<k>``)."""

    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        finite = [e[np.isfinite(e)] for e in errors]
        positive = np.concatenate([e[e > 0] for e in finite] or [np.zeros(0)])
        low = max(FLOOR, float(positive.min()) if positive.size else FLOOR)
        high = max(low * 10, float(positive.max()) if positive.size else 1.0)
        bins = np.logspace(np.log10(low) - 0.05, np.log10(high) + 0.05, 41)
        # exactly matched weights have no place on a log axis: the legend counts them
        for k, (values, construction) in enumerate(zip(finite, constructions, strict=True)):
            exact = int(np.count_nonzero(values == 0))
            exactly = f", {exact:,} exact" if exact else ""
            label = f"layer {k} ({construction}, {values.size:,} weights{exactly})"
            counts, edges = np.histogram(values[values > 0], bins=bins)
            axes.stairs(counts, edges, linewidth=1.4, label=label).set_gid(f"weight-errors-layer-{k}")
        axes.set_xscale("log")
        axes.set_xlabel("per-weight error |w - w_eff| (log scale)")
        axes.set_ylabel("weights")
        axes.set_title("Per-weight error of each target layer")
        axes.legend(loc="upper left", fontsize=8)

    return _svg(draw)


def output_error_figure(errors: Mapping[str, np.ndarray]) -> bytes:
    """Relative output error ``max_c |f - g| / max_c |f|`` against input index, one series per dtype (ids
    ``output-errors-<dtype>``), log y axis."""

    def draw(figure: Figure) -> None:
        axes = figure.add_subplot()
        for dtype, values in errors.items():
            shown = np.where(np.isfinite(values), np.maximum(values, FLOOR), np.nan)
            (line,) = axes.plot(
                np.arange(values.size), shown, marker=".", markersize=3, linewidth=0.6, label=f"{dtype}"
            )
            line.set_gid(f"output-errors-{dtype}")
        axes.set_yscale("log")
        axes.set_xlabel("input index (random inputs of the verification box)")
        axes.set_ylabel("relative output error max|f-g| / max|f|")
        axes.set_title("Relative output error per input")
        axes.legend(loc="upper right", fontsize=8)

    return _svg(draw)


def sweep_figure(series: Mapping[str, Sequence[tuple[int, float | None, float | None]]]) -> bytes:
    """For a sweep over n: per checkpoint, the largest weight error and the largest relative output error
    (random inputs, float64 when verified so) against n, log y axis (ids ``sweep-weight-<i>`` and
    ``sweep-output-<i>``).

    Args:
        series: checkpoint name -> [(n, max weight error, max relative output error or None), ...].
    """

    from matplotlib.ticker import MaxNLocator

    def draw(figure: Figure) -> None:
        left, right = figure.subplots(1, 2)
        for i, (name, points) in enumerate(series.items()):
            ordered = sorted(points)
            ns = [p[0] for p in ordered]
            _line(left, ns, [p[1] for p in ordered], _label(name), f"sweep-weight-{i}")
            _line(right, ns, [p[2] for p in ordered], _label(name), f"sweep-output-{i}")
        for axes, what in ((left, "largest weight error"), (right, "largest relative output error")):
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            axes.set_yscale("log")
            axes.set_xlabel("n (random values per target weight)")
            axes.set_ylabel(what)
            axes.legend(fontsize=8)
        left.set_title("Weight error against n")
        right.set_title("Output error against n")

    return _svg(draw)


def _line(axes: Axes, xs: Sequence[int], ys: Sequence[float | None], label: str, gid: str) -> None:
    shown = [np.nan if y is None else max(float(y), FLOOR) for y in ys]
    (line,) = axes.plot(xs, shown, marker="o", label=label)
    line.set_gid(gid)


def _label(text: str) -> str:
    """A client's file name as a legend label: shown literally (no mathtext), never hidden (a leading ``_``)."""
    return " " + text.replace("$", r"\$") if text.startswith("_") else text.replace("$", r"\$")
