"""A sweep's rows: one per ticket, what the build and the verification measured, as a CSV.

:data:`RESULT_COLUMNS` is the CSV header, in order; :data:`COLUMNS` says what each column means and holds.
:func:`make_row` reads a row off the ticket (sizes, the build's per-pair record) and the verification
:class:`~ticketsolver.verification.Report`; :func:`write_rows` writes the CSV atomically (a reader never sees
half a file, an interrupted sweep leaves the last complete one) and :func:`read_rows` reads it back with each
column's type, so that a resumed sweep writes the rows it kept byte for byte as they were.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ticketsolver.config import BuildConfig
from ticketsolver.errors import ConfigError
from ticketsolver.sweep.spec import setting_label
from ticketsolver.ticket.flops import multiply_adds

if TYPE_CHECKING:
    from rich.table import Table

    from ticketsolver.ticket import Ticket
    from ticketsolver.verification import Report

__all__ = ["COLUMNS", "RESULT_COLUMNS", "VARYING_COLUMNS", "make_row", "read_rows", "summary_table", "write_rows"]

#: column -> (type, meaning). Errors are relative (dimensionless) unless said otherwise; empty cells are None.
COLUMNS: dict[str, tuple[type, str]] = {
    "label": (str, "the row's name in its sweep, also its ticket's file name (tickets/<label>.ticket)"),
    "n": (int, "random hidden units per block"),
    "depth": (str, "2L (a pair per target layer) or L+1"),
    "density": (float, "overall density of the random source (1: dense)"),
    "density_policy": (str, "how a sparse source's layers share the density"),
    "resample": (int, "re-randomisation rounds (0: a pure source)"),
    "seed": (int, "seed of the random source"),
    "source_kind": (str, "iid (a pruning of one i.i.d. network) or rerandomized"),
    "target_params": (int, "weights and biases of the target's Linear/Conv2d layers"),
    "source_params": (int, "entries of the random network (of a sparse source: its nonzeros)"),
    "examined_values": (int, "random values the build drew and compared (= source_params for iid)"),
    "kept_params": (int, "entries the masks keep"),
    "kept_fraction": (float, "kept_params / source_params"),
    "random_layers": (int, "weight layers of the random network g (2L: two per target layer; L+1: one more than L)"),
    "macs_dense": (int, "multiply-adds per input of g's weight layers as materialised (pruned entries as zeros)"),
    "macs_kept": (int, "multiply-adds per input over g's kept weights only (what a sparse kernel would do)"),
    "max_weight_error": (float, "max |w - subset sum| over the target's weights (absolute)"),
    "mean_weight_error": (float, "mean |w - subset sum| over the target's weights (absolute)"),
    "max_rel_error_data": (float, "max over the data of max_c|f - g| / max_c|f| (da Cunha et al.)"),
    "mean_rel_error_data": (float, "mean over the data of the same"),
    "max_rel_error_random": (float, "max over random inputs of the box of max_c|f - g| / max_c|f|"),
    "mean_rel_error_random": (float, "mean over random inputs of the same"),
    "max_rel_error_conv": (float, "max over Conv2d layers of max|pair - target layer| / max|target layer|"),
    "agreement_data": (float, "fraction of the data where argmax f == argmax g"),
    "accuracy_target": (float, "accuracy of f on the labelled data"),
    "accuracy_ticket": (float, "accuracy of g on the labelled data"),
    "verify_dtype": (str, "dtype of the forward passes the errors come from"),
    "build_seconds": (float, "wall-clock seconds of the build"),
    "verify_seconds": (float, "wall-clock seconds of the verification"),
    "ticket_bytes": (int, "size of the ticket file"),
}
RESULT_COLUMNS: tuple[str, ...] = tuple(COLUMNS)
#: columns that differ between two runs of the same sweep: the timings, and the ticket's size (its manifest
#: records the build's seconds, a number of varying length). Everything else is reproducible, bit for bit.
VARYING_COLUMNS: tuple[str, ...] = ("build_seconds", "verify_seconds", "ticket_bytes")


def make_row(
    label: str,
    config: BuildConfig,
    ticket: Ticket,
    report: Report,
    *,
    build_seconds: float,
    verify_seconds: float,
    ticket_bytes: int,
) -> dict[str, Any]:
    """The row of one ticket: its setting, sizes, weight errors (the build's record) and output errors.

    Output errors come from float64 when the report has it (the approximation itself, rounding aside), else
    from its first dtype; ``verify_dtype`` says which. A section the verification did not run (no data: no
    ``*_data`` columns; no labels: no accuracies; no Conv2d layer: no ``max_rel_error_conv``) leaves None.
    """
    sizes = ticket.sizes()
    dtype = "float64" if "float64" in report.dtypes else report.dtypes[0]
    data = report.sections.get("data", {}).get(dtype)
    random = report.sections.get("random", {}).get(dtype)
    pairs = [p for p in ticket.build.get("pairs", []) if isinstance(p, dict) and "weights" in p]
    weights = sum(int(p["weights"]) for p in pairs)
    conv = [c.pair_vs_target_relative for c in report.layers.get(dtype, []) if c.module.startswith("Conv2d")]
    macs = multiply_adds(ticket.to_module(), tuple(ticket.input_shape))
    row: dict[str, Any] = {
        "label": label,
        "n": config.n,
        "depth": config.depth,
        "density": config.source_density,
        "density_policy": config.density_policy,
        "resample": config.resample,
        "seed": config.seed,
        "source_kind": sizes["source_kind"],
        "target_params": sizes["target_params"],
        "source_params": sizes["source_params"],
        "examined_values": sizes["examined_values"],
        "kept_params": sizes["kept_params"],
        "kept_fraction": sizes["kept_params"] / sizes["source_params"] if sizes["source_params"] else None,
        "random_layers": ticket.random_layers(),
        "macs_dense": macs.dense,
        "macs_kept": macs.kept,
        "max_weight_error": max((float(p["weight_error_max"]) for p in pairs), default=None),
        "mean_weight_error": (
            sum(float(p["weight_error_mean"]) * int(p["weights"]) for p in pairs) / weights if weights else None
        ),
        "max_rel_error_data": data.relative_error_max if data else None,
        "mean_rel_error_data": data.relative_error_mean if data else None,
        "max_rel_error_random": random.relative_error_max if random else None,
        "mean_rel_error_random": random.relative_error_mean if random else None,
        "max_rel_error_conv": max(conv) if conv else None,
        "agreement_data": data.top1_agreement if data else None,
        "accuracy_target": data.accuracy_target if data else None,
        "accuracy_ticket": data.accuracy_pruned if data else None,
        "verify_dtype": dtype,
        "build_seconds": build_seconds,
        "verify_seconds": verify_seconds,
        "ticket_bytes": ticket_bytes,
    }
    return row


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # repr: read back to the same float
    return str(value)


def _parse(column: str, text: str) -> Any:
    if text == "":
        return None
    kind = COLUMNS[column][0]
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"results.csv: column {column} holds {text!r}, not a {kind.__name__}") from None


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` as a CSV with :data:`RESULT_COLUMNS`, atomically (a temporary file, then ``os.replace``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in RESULT_COLUMNS])
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8", newline="") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    return path


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a results CSV, each cell of its column's type (empty: None); no file: no rows.

    Raises:
        ConfigError: the header is not :data:`RESULT_COLUMNS` (another version wrote it) or a cell is malformed.
    """
    if not path.is_file():
        return []
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return []
        if tuple(header) != RESULT_COLUMNS:
            raise ConfigError(
                f"{path} has other columns than this version writes: start the sweep in another directory"
            )
        return [{column: _parse(column, cell) for column, cell in zip(header, cells, strict=True)} for cells in reader]


def row_setting(row: dict[str, Any]) -> str:
    """The setting of a row, as figures and tables name it (:func:`~ticketsolver.sweep.spec.setting_label`)."""
    return setting_label(row["depth"], row["resample"], row["density"], row["density_policy"])


def summary_table(rows: list[dict[str, Any]]) -> Table:
    """A rich table of the rows: setting, n, sizes, errors, agreement, accuracy, seconds (build + verify). A
    column no row has a value for (no data: no data errors; no conv layer: no conv error) is left out."""
    from rich import box
    from rich.table import Table

    columns: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("n", lambda r: str(r["n"])),
        ("source", lambda r: _count(r["source_params"])),
        ("kept", lambda r: _percent(r["kept_fraction"], 1)),
        ("|w err|", lambda r: _sci(r["max_weight_error"])),
        ("err data", lambda r: _sci(r["max_rel_error_data"])),
        ("err rand", lambda r: _sci(r["max_rel_error_random"])),
        ("err conv", lambda r: _sci(r["max_rel_error_conv"])),
        ("agree", lambda r: _percent(r["agreement_data"], 1)),
        ("acc g", lambda r: _percent(r["accuracy_ticket"], 2)),
        ("s", lambda r: f"{r['build_seconds']:.0f}+{r['verify_seconds']:.0f}"),
    ]
    shown = [(header, cell) for header, cell in columns if any(cell(row) not in ("-", "") for row in rows)]
    table = Table(
        title="sweep: max relative output errors (float64), kept = kept/source params, s = build+verify seconds",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("setting", no_wrap=True)
    for header, _ in shown:
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(row_setting(row), *[cell(row) for _, cell in shown])
    return table


def _count(value: Any) -> str:
    return "-" if value is None else f"{value:,}"


def _sci(value: Any) -> str:
    return "-" if value is None else f"{value:.1e}"


def _percent(value: Any, digits: int) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"
