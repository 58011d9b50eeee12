"""Run a sweep: build and verify every setting of a :class:`SweepSpec`, one CSV row per ticket, resumable.

The output directory holds::

    sweep.json          the spec (input domain resolved), the target's and the data's SHA-256, the fingerprint
    results.csv         one row per finished ticket (ticketsolver.sweep.results), rewritten atomically per row
    tickets/<label>.ticket
    figures/<name>.png, .svg   drawn at the end (ticketsolver.sweep.figures)

A sweep stopped anywhere (Ctrl-C, a cancelled job, a crash) resumes when run again into the same directory:
the rows already in results.csv are kept as they are and only the missing ones are built. A directory that
holds another sweep (another spec, target or data) is refused rather than mixed.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ticketsolver.config import BuildConfig
from ticketsolver.errors import ConfigError, VerificationError
from ticketsolver.graph import GraphTarget
from ticketsolver.models import Target
from ticketsolver.pipeline import build_ticket
from ticketsolver.sweep.figures import write_figures
from ticketsolver.sweep.results import make_row, read_rows, write_rows
from ticketsolver.sweep.spec import SweepSpec, data_sha256, row_label, setting_label, target_sha256
from ticketsolver.verification.against import verify

__all__ = ["SweepProgress", "SweepResult", "describe", "run_sweep"]

#: progress(done, total, label): done rows of total; label names the row about to run (or the last one)
SweepProgress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SweepResult:
    """What a sweep wrote.

    Attributes:
        rows: every row, in grid order (:data:`~ticketsolver.sweep.results.RESULT_COLUMNS` keys).
        csv_path: ``out_dir/results.csv``.
        figures: the figure files written (PNG and SVG of each).
        skipped: settings not run, each with the reason (:meth:`SweepSpec.settings`).
        reused: rows taken from an earlier run's results.csv instead of being built again.
    """

    rows: list[dict[str, Any]]
    csv_path: Path
    figures: list[Path]
    skipped: list[tuple[dict[str, Any], str]]
    reused: int = 0


def describe(config: BuildConfig) -> str:
    """How progress names a row: its setting and n, e.g. ``2L, R = 16, n = 30``."""
    setting = setting_label(config.depth, config.resample, config.source_density, config.density_policy)
    return f"{setting}, n = {config.n}"


def run_sweep(
    target: Any,
    spec: SweepSpec,
    out_dir: str | os.PathLike[str],
    *,
    data: Any = None,
    progress: SweepProgress | None = None,
) -> SweepResult:
    """Build and verify every setting of ``spec`` into ``out_dir``; resume what an earlier run left.

    Each row: :func:`ticketsolver.build_ticket` with the setting's :class:`BuildConfig`, the ticket saved as
    ``tickets/<label>.ticket``, :func:`ticketsolver.verify` with ``spec.verify`` on ``data`` and random
    inputs, then the row appended and results.csv rewritten atomically. Without ``spec.input_domain`` the
    data's own domain (a bundled :class:`~ticketsolver.data.Dataset`'s, e.g. [0, 1] for digits) is the
    builds' domain, as ``ticketsolver build`` does; sweep.json records the spec so resolved.

    Args:
        target: the :class:`~ticketsolver.models.Target`.
        spec: the grid and the verification settings.
        out_dir: the sweep's directory (created; an earlier run of the same sweep there is resumed).
        data: a :class:`~ticketsolver.data.Dataset` (its test split), ``(x, y)`` / ``(x, None)``, or None.
        progress: called as ``progress(done, total, label)`` before each row with the row's description
            (:func:`describe`), and once at the end with ``done == total``; an exception it raises stops the
            sweep there (how a service cancels one), the rows finished so far stay in results.csv.

    Returns:
        The :class:`SweepResult`; figures are drawn into ``out_dir/figures``.

    Raises:
        ConfigError: ``spec`` is not a SweepSpec, ``target`` not a Target, or ``out_dir`` holds a sweep of
            another spec, target or data.
        ConstructionError, SolverError, VerificationError: from a build or a verification (the rows before it stay).
    """
    if not isinstance(spec, SweepSpec):
        raise ConfigError(f"spec must be a SweepSpec, got {type(spec).__name__}")
    if isinstance(target, GraphTarget):
        raise ConfigError(
            f"sweeps are run on chains of Linear/Conv2d layers; {target.source} is a graph "
            "(build it with 'ticketsolver build' at each n instead)"
        )
    if not isinstance(target, Target):
        raise ConfigError(
            f"target must be a ticketsolver.models.Target, got {type(target).__name__}; "
            "use Target.from_module(module, input_shape) or load_target(path)"
        )
    domain = getattr(data, "input_domain", None)
    if spec.input_domain is None and domain is not None:
        spec = spec.replace(input_domain=domain)
    _check_data(target, data)
    out = Path(out_dir)
    (out / "tickets").mkdir(parents=True, exist_ok=True)
    _claim(out, spec, target_sha256(target), data_sha256(data))

    configs, skipped = spec.settings()
    csv_path = out / "results.csv"
    earlier = {row["label"]: row for row in read_rows(csv_path)}
    rows: list[dict[str, Any]] = []
    reused = 0
    total = len(configs)
    for config in configs:
        label = row_label(config)
        if label in earlier:
            rows.append(earlier[label])
            reused += 1
            continue
        if progress is not None:
            progress(len(rows), total, describe(config))
        t0 = time.perf_counter()
        ticket = build_ticket(target, config)
        build_seconds = time.perf_counter() - t0
        ticket_path = ticket.save(out / "tickets" / f"{label}.ticket")
        t1 = time.perf_counter()
        report = verify(target, ticket, spec.verify, data=data)
        verify_seconds = time.perf_counter() - t1
        rows.append(
            make_row(
                label,
                config,
                ticket,
                report,
                build_seconds=build_seconds,
                verify_seconds=verify_seconds,
                ticket_bytes=ticket_path.stat().st_size,
            )
        )
        write_rows(csv_path, rows)
    write_rows(csv_path, rows)  # also when every row was reused: the file holds exactly this grid
    if progress is not None:
        progress(total, total, describe(configs[-1]) if configs else "nothing to run")
    figures = write_figures(rows, out / "figures")
    return SweepResult(rows, csv_path, figures, skipped, reused)


def _check_data(target: Any, data: Any) -> None:
    """Refuse data of the wrong input shape before the first build rather than after it."""
    if data is None:
        return
    x = data.x_test if hasattr(data, "x_test") else data[0]
    if tuple(x.shape[1:]) != tuple(target.input_shape):
        raise VerificationError(
            f"data inputs must have shape (N, {', '.join(map(str, target.input_shape))}) for this target, "
            f"got {tuple(x.shape)}"
        )


def _claim(out: Path, spec: SweepSpec, target_hash: str, data_hash: str | None) -> None:
    """Record this sweep in ``out/sweep.json``, or check that the sweep already there is this one."""
    record: dict[str, Any] = {
        "fingerprint": spec.fingerprint(target_hash),
        "target_sha256": target_hash,
        "data_sha256": data_hash,
        "spec": spec.to_dict(),
    }
    path = out / "sweep.json"
    if path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = {}
        if not isinstance(before, dict):
            before = {}
        different = [
            what
            for what, key in (("target", "target_sha256"), ("data", "data_sha256"), ("spec", "fingerprint"))
            if before.get(key) != record[key]
        ]
        if different:
            changes = _spec_changes(before.get("spec"), record["spec"]) if "spec" in different else ""
            raise ConfigError(
                f"{out} holds another sweep (different {' and '.join(different)}{changes}): "
                "resume it with the same settings, or give another directory"
            )
        return
    if (out / "results.csv").is_file():
        raise ConfigError(f"{out} has a results.csv but no sweep.json: give another directory")
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _spec_changes(before: Any, now: dict[str, Any]) -> str:
    if not isinstance(before, dict):
        return ""
    changed = sorted(key for key in now.keys() | before.keys() if before.get(key) != now.get(key))
    return f": {', '.join(changed)}" if changed else ""
