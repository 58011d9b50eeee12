"""A sweep's figures, drawn from its rows with matplotlib's Agg backend (no display), each as PNG and SVG.

One line per setting (depth, re-randomisation, source density) in every panel, each in the legend:

- ``error_vs_n``: max relative output error against n (on the data: solid; on random inputs: dashed);
- ``error_vs_size``: the same error against source params, and against examined random values (where a
  re-randomised source pays for its smaller network);
- ``kept_fraction_vs_n``: kept / source params against n;
- ``accuracy_vs_source``: the ticket's accuracy against source params, the target's as a reference line
  (Pensia et al. 2020, figure 1 style);
- ``conv_error_vs_n``: the largest relative error of a conv layer against n, for targets with convolutions
  (da Cunha et al. 2022 style: the conv part alone).

A figure whose data no row has (no labels: no accuracy; no Conv2d layer: no conv error) is not drawn.
Axes are logarithmic where the values span a decade or more.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ticketsolver.errors import TicketSolverError
from ticketsolver.sweep.results import row_setting

__all__ = ["FIGURES", "write_figures"]

#: the figures :func:`write_figures` draws, by file stem
FIGURES: tuple[str, ...] = (
    "error_vs_n",
    "error_vs_size",
    "kept_fraction_vs_n",
    "accuracy_vs_source",
    "conv_error_vs_n",
)

_N_LABEL = "n (random hidden units per block)"
_REL_ERROR = "max relative output error\nmax_c |f - g| / max_c |f| (dimensionless)"


def write_figures(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Draw every figure the rows have data for into ``out_dir``; returns the files written (PNG, SVG each).

    Raises:
        TicketSolverError: matplotlib is not installed (``pip install 'ticketsolver[bench]'``).
    """
    try:
        import matplotlib
    except ImportError:
        raise TicketSolverError("sweep figures need matplotlib: pip install 'ticketsolver[bench]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    drawers: dict[str, Callable[[Any, list[dict[str, Any]]], Any]] = {
        "error_vs_n": _error_vs_n,
        "error_vs_size": _error_vs_size,
        "kept_fraction_vs_n": _kept_fraction_vs_n,
        "accuracy_vs_source": _accuracy_vs_source,
        "conv_error_vs_n": _conv_error_vs_n,
    }
    for name in FIGURES:
        fig = drawers[name](plt, rows)
        if fig is None:
            continue
        fig.tight_layout()
        for suffix in (".png", ".svg"):
            path = out_dir / f"{name}{suffix}"
            fig.savefig(path, dpi=130)
            written.append(path)
        plt.close(fig)
    return written


def _settings(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by setting, in first-seen order; each group sorted by n."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row_setting(row), []).append(row)
    return {label: sorted(group, key=lambda r: r["n"]) for label, group in groups.items()}


def _has(rows: list[dict[str, Any]], column: str) -> bool:
    return any(_finite(row.get(column)) for row in rows)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _line(ax: Any, rows: list[dict[str, Any]], x: str, y: str, label: str, **style: Any) -> bool:
    """Plot column y against column x over the rows that have both, joined in the order of n (a curve
    parametrised by n where x is not n: examined values need not grow with n), its ends marked with their n.
    False when no row has both."""
    points = sorted((row["n"], row[x], row[y]) for row in rows if _finite(row.get(x)) and _finite(row.get(y)))
    if not points:
        return False
    (line,) = ax.plot([p[1] for p in points], [p[2] for p in points], marker="o", markersize=3.5, label=label, **style)
    if x != "n":
        for n, px, py in {points[0], points[-1]}:
            ax.annotate(
                f"n={n}", (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7, color=line.get_color()
            )
    return True


def _scale(ax: Any, axis: str, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    """A log axis when the positive values span a decade or more (zero or negative values stay linear)."""
    values = [float(row[c]) for row in rows for c in columns if _finite(row.get(c))]
    if values and min(values) > 0 and max(values) / min(values) >= 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _finish(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _error_vs_n(plt: Any, rows: list[dict[str, Any]]) -> Any:
    columns = [c for c in ("max_rel_error_data", "max_rel_error_random") if _has(rows, c)]
    if not columns:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for index, (label, group) in enumerate(_settings(rows).items()):
        color = f"C{index}"
        if "max_rel_error_data" in columns:
            _line(ax, group, "n", "max_rel_error_data", f"{label}: test data", color=color)
        if "max_rel_error_random" in columns:
            _line(ax, group, "n", "max_rel_error_random", f"{label}: random inputs", color=color, linestyle="--")
    _scale(ax, "y", rows, tuple(columns))
    _finish(ax, _N_LABEL, _REL_ERROR, "output error against n")
    return fig


def _error_column(rows: list[dict[str, Any]]) -> tuple[str, str] | None:
    if _has(rows, "max_rel_error_data"):
        return "max_rel_error_data", "on the test data"
    if _has(rows, "max_rel_error_random"):
        return "max_rel_error_random", "on random inputs of the box"
    return None


def _error_vs_size(plt: Any, rows: list[dict[str, Any]]) -> Any:
    chosen = _error_column(rows)
    if chosen is None:
        return None
    column, where = chosen
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, x, xlabel in (
        (axes[0], "source_params", "source params (random network entries, count)"),
        (axes[1], "examined_values", "examined random values (drawn and compared, count)"),
    ):
        for index, (label, group) in enumerate(_settings(rows).items()):
            _line(ax, group, x, column, label, color=f"C{index}")
        _scale(ax, "x", rows, (x,))
        _scale(ax, "y", rows, (column,))
        _finish(ax, xlabel, _REL_ERROR, f"output error {where} against {x.replace('_', ' ')}")
    return fig


def _one_column_vs_n(plt: Any, rows: list[dict[str, Any]], column: str, ylabel: str, title: str) -> Any:
    """One line per setting of ``column`` against n (None when no row has it)."""
    if not _has(rows, column):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for index, (label, group) in enumerate(_settings(rows).items()):
        _line(ax, group, "n", column, label, color=f"C{index}")
    _scale(ax, "y", rows, (column,))
    _finish(ax, _N_LABEL, ylabel, title)
    return fig


def _kept_fraction_vs_n(plt: Any, rows: list[dict[str, Any]]) -> Any:
    return _one_column_vs_n(
        plt,
        rows,
        "kept_fraction",
        "kept fraction (kept / source params)",
        "kept fraction of the random network against n",
    )


def _accuracy_vs_source(plt: Any, rows: list[dict[str, Any]]) -> Any:
    if not _has(rows, "accuracy_ticket"):
        return None
    labelled = [row for row in rows if _finite(row.get("accuracy_ticket"))]
    percent = [{**row, "accuracy_ticket": 100 * row["accuracy_ticket"]} for row in labelled]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for index, (label, group) in enumerate(_settings(percent).items()):
        _line(ax, group, "source_params", "accuracy_ticket", f"ticket g, {label}", color=f"C{index}")
    targets = [row["accuracy_target"] for row in rows if _finite(row.get("accuracy_target"))]
    if targets:
        ax.axhline(100 * targets[0], color="grey", linestyle=":", linewidth=1.2, label="target f")
    _scale(ax, "x", rows, ("source_params",))
    _finish(
        ax,
        "source params (random network entries, count)",
        "accuracy on the labelled data (%)",
        "accuracy against source size",
    )
    return fig


def _conv_error_vs_n(plt: Any, rows: list[dict[str, Any]]) -> Any:
    return _one_column_vs_n(
        plt,
        rows,
        "max_rel_error_conv",
        "max relative error of a conv layer\nmax |pair - conv| / max |conv| (dimensionless)",
        "convolutional layers against n (each on f's own activations)",
    )
