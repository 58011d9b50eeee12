"""One item in a worker process: build, save and verify its ticket; the outcome goes to the store.

Place in the pipeline: jobs/service. :func:`run_item` is the function the dispatcher
(:mod:`ticketsolver.jobs.dispatcher`) hands an executor's worker for each item (checkpoint, n). The
worker reports progress through the store at most every 0.25 s; the same write tells it whether the
item is still its own, so an item cancelled or re-queued stops at its next progress report (the
dispatcher also kills the process, which is what stops a long solver call). Each finished layer is kept
in a per-item resume directory, so a build interrupted by a restart or a dead worker resumes from its
finished layers.

An item of a job with a ``learn`` section learns a mask instead (:func:`ticketsolver.learning.learn_mask`
over a random network of the checkpoint's architecture, progress per epoch) and is measured on its task
(:func:`ticketsolver.verification.evaluate_task`): a learned ticket has no target to be verified against.
A learning run has no resume: an interrupted one starts again.

An item of a job with a ``sweep`` section runs :func:`ticketsolver.sweep.run_sweep` on its checkpoint into the
item's own folder (``JobStore.sweep_dir``), progress per row (rows done / total); the library appends each row
to ``results.csv`` as it finishes, so an attempt after a restart or a dead worker redoes no finished row. The
item's report lists the table, the figures and the settings skipped; it has no ticket of its own.

When the store refuses a write, the worker stops and says so in its :class:`ItemResult`; the dispatcher
then records the failure once the store accepts writes again, so no item stays "running" for ever.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ticketsolver.errors import JobError, TicketSolverError, VerificationError
from ticketsolver.jobs.executors import parent_alive, run_on_cluster, solver_for, verify_on_cluster
from ticketsolver.jobs.intake import UploadRejectedError, without_server_names
from ticketsolver.jobs.spec import JobSpec, LearnSpec, SweepSection
from ticketsolver.jobs.store import ItemTask, JobStore, StoreError

__all__ = [
    "NOT_VERIFIED_LEARNED",
    "ItemResult",
    "nonfinite_errors",
    "run_item",
    "verify_files",
    "verify_ticket",
]

log = logging.getLogger("ticketsolver.jobs")

#: what a learned item's report says in place of a verification
NOT_VERIFIED_LEARNED = (
    "not verified against a target: a learned-mask ticket approximates no trained network; it is measured on "
    "its task instead (see 'task')"
)


@dataclass(frozen=True)
class ItemResult:
    """What a worker tells the dispatcher about one item (the store already says the rest).

    Attributes:
        state: ``succeeded`` / ``failed`` (recorded in the store), ``stopped`` (the item is no longer this
            worker's: cancelled, re-queued, or the service went away) or ``store_unavailable`` (the store
            refused a write: the dispatcher records the item failed with ``error`` once it can).
        error: why the item failed.
    """

    state: Literal["succeeded", "failed", "stopped", "store_unavailable"]
    error: str | None = None


class _Stopped(Exception):
    """The item is no longer this worker's (cancelled, re-queued, or the service died)."""


def run_item(task: ItemTask, context: dict[str, Any], data_dir: str, url: str) -> ItemResult:
    """Build, save and verify the ticket of one item; its outcome goes to the store.

    Args:
        task: the claimed item (its attempt fences every write).
        context: the executor's :meth:`~ticketsolver.jobs.executors.Executor.context` (how to solve).
        data_dir: the store's data directory.
        url: the store's database URL.

    Returns:
        The :class:`ItemResult`. Never raises for a failure of the item itself.
    """
    try:
        store = _worker_store(data_dir, url)
    except StoreError as exc:
        return ItemResult("store_unavailable", f"the job store cannot be opened: {exc}")
    try:
        return _run_item(store, task, context)
    except _Stopped:
        return ItemResult("stopped")
    except StoreError as exc:
        return ItemResult("store_unavailable", f"the job store refused a write: {exc}")
    except TicketSolverError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - a job must say why it failed, whatever the cause
        log.exception("item %s failed", task.item_id)
        error = f"internal error: {type(exc).__name__}: {exc}"
    try:
        if not store.fail_item(task.item_id, task.attempt, error):
            return ItemResult("stopped")
    except StoreError:
        return ItemResult("store_unavailable", error)
    return ItemResult("failed", error)


_STORES: dict[tuple[str, str], JobStore] = {}


def _worker_store(data_dir: str, url: str) -> JobStore:
    """One store (one connection pool) per worker process and database."""
    key = (data_dir, url)
    if key not in _STORES:
        _STORES[key] = JobStore(data_dir, url)
    return _STORES[key]


@dataclass
class _Progress:
    """The builder's progress callback: item progress weighted by layer size, written at most every
    ``interval`` seconds (and whenever a layer finishes); raises _Stopped when the item is not ours."""

    store: JobStore
    task: ItemTask
    sizes: list[int]
    share: float  # part of the item's progress that the build represents
    interval: float = 0.25
    fractions: dict[int, float] = field(default_factory=dict)
    last: float = 0.0

    def __call__(self, pair: int, fraction: float, message: str) -> None:
        if not parent_alive():
            raise _Stopped("the service process is gone")
        # progress shown never goes back, whatever order the solver's reports arrive in
        fraction = self.fractions[pair] = max(self.fractions.get(pair, 0.0), fraction)
        now = time.monotonic()
        if fraction < 1.0 and now - self.last < self.interval:
            return
        self.last = now
        done = sum(size * self.fractions.get(k, 0.0) for k, size in enumerate(self.sizes))
        progress = self.share * done / max(1, sum(self.sizes))
        if not self.store.report_progress(
            self.task.item_id, self.task.attempt, progress, f"layer {pair}: {message}", (pair, fraction)
        ):
            raise _Stopped("cancelled or re-queued")

    def stage(self, progress: float, message: str) -> None:
        if not self.store.report_progress(self.task.item_id, self.task.attempt, progress, message):
            raise _Stopped("cancelled or re-queued")

    def epoch(self, done: int, epochs: int, stats: dict[str, float]) -> None:
        """``learn_mask``'s callback: the item's progress is the epochs done (no per-layer rows: every layer
        learns at once), written at most every ``interval`` seconds and after the last epoch."""
        if not parent_alive():
            raise _Stopped("the service process is gone")
        now = time.monotonic()
        if done < epochs and now - self.last < self.interval:
            return
        self.last = now
        loss, accuracy = stats.get("loss", math.nan), stats.get("test_accuracy", math.nan)
        self.stage(self.share * done / epochs, f"epoch {done}/{epochs}: loss {loss:.4f}, test accuracy {accuracy:.1%}")

    def row(self, done: int, total: int, label: str) -> None:
        """``run_sweep``'s callback before each row it builds (``label`` names it) and once at the end: the
        item's progress is the rows done, each report written (a row is a whole build and verification)."""
        if not parent_alive():
            raise _Stopped("the service process is gone")
        doing = "drawing the figures" if done >= total else f"building {label}"
        self.stage(self.share * done / max(1, total), f"{done}/{total} rows done; {doing}")


def _run_item(store: JobStore, task: ItemTask, context: dict[str, Any]) -> ItemResult:

    from ticketsolver import build_ticket, load_target
    from ticketsolver.construction import solver_options
    from ticketsolver.ticket.summary import ticket_summary

    spec = JobSpec.from_dict(task.spec)
    path = store.upload_path(task.checkpoint_id)
    try:
        target = dataclasses.replace(load_target(path, arch=spec.arch), source=task.checkpoint_name)
    except TicketSolverError as exc:  # name the client's file, not the server's id
        raise UploadRejectedError(task.checkpoint_name, without_server_names(str(exc), path)) from exc
    if spec.learn is not None:
        return _learn_item(store, task, spec.learn, target)
    if spec.sweep is not None:
        return _sweep_item(store, task, spec.sweep, target)
    config = spec.build_config(task.n)
    sizes = [count for _, count in target.layers()]
    progress = _Progress(store, task, sizes, share=1.0 if spec.verify is None else 0.9)
    if not store.init_layers(task.item_id, task.attempt, len(sizes)):
        raise _Stopped("cancelled")
    resume = store.resume_dir(task.item_id)
    solve_with = solver_for(context, config.solver, **solver_options(config))
    ticket = build_ticket(target, config, progress=progress, solve_with=solve_with, resume_dir=resume)

    def report_of(out: Path) -> dict[str, Any]:
        report: dict[str, Any] = {
            "item": {"checkpoint": task.checkpoint_name, "n": task.n},
            "ticket": ticket_summary(ticket, out.stat().st_size),
            "kept_values_sha256": ticket.kept_hash(),
            "verification": None,
        }
        if spec.verify is not None:
            progress.stage(progress.share, "verifying")
            gpus = verify_on_cluster(context)
            if gpus is None:
                verification = verify_ticket(target, ticket, spec.verify.to_dict())
            else:
                payload = (path.read_bytes(), spec.arch, out.read_bytes(), spec.verify.to_dict())
                verification = run_on_cluster(context, gpus, verify_files, *payload)
            bad = nonfinite_errors(verification)
            if bad:
                raise VerificationError(
                    "verification measured non-finite errors (" + ", ".join(bad[:4]) + "): the pruned network "
                    "overflows or breaks down on this input box; the ticket is not reported as a success"
                )
            report["verification"] = verification
        return report

    problems = sum(int(p.get("problems_solved", 0)) for p in ticket.build.get("pairs", []))
    result = _save_and_finish(store, task, ticket, progress, report_of, problems)
    shutil.rmtree(resume, ignore_errors=True)
    return result


def _learn_item(store: JobStore, task: ItemTask, learn: LearnSpec, target: Any) -> ItemResult:
    """Learn the item's mask over a random network of the checkpoint's architecture on the bundled data,
    save the ticket, and measure its network on the data's test split."""
    from ticketsolver.learning import learn_mask, network_for
    from ticketsolver.ticket.summary import ticket_summary
    from ticketsolver.verification import evaluate_task

    config = learn.config()
    network = network_for(target, config)
    dataset = _bundled(learn.data, "learning", learn.load_data)
    if not store.init_layers(task.item_id, task.attempt, 0):
        raise _Stopped("cancelled")
    progress = _Progress(store, task, [], share=0.95)
    progress.stage(0.0, f"learning a mask ({config.method}) on {learn.data}")
    ticket = learn_mask(network, dataset, config, progress=progress.epoch)

    def report_of(out: Path) -> dict[str, Any]:
        progress.stage(progress.share, f"measuring the ticket on {learn.data}")
        return {
            "item": {"checkpoint": task.checkpoint_name, "method": config.method, "data": learn.data},
            "ticket": ticket_summary(ticket, out.stat().st_size),
            "kept_values_sha256": ticket.kept_hash(),
            "task": evaluate_task(ticket, dataset, device="cpu").to_dict(),
            "verification": None,
            "verification_note": NOT_VERIFIED_LEARNED,
        }

    return _save_and_finish(store, task, ticket, progress, report_of)


def _bundled(name: str | None, doing: str, load: Callable[[], Any]) -> Any:
    """A bundled dataset, or a :class:`JobError` saying what needs scikit-learn, which holds them."""
    try:
        return load()
    except ImportError as exc:
        raise JobError(f"{doing} on {name!r} needs scikit-learn, which this service lacks: {exc}") from None


def _sweep_item(store: JobStore, task: ItemTask, sweep: SweepSection, target: Any) -> ItemResult:
    """Build and verify the checkpoint at every setting of the sweep into the item's folder (resuming from the
    rows it already holds), then finish the item with the report of its results."""
    from ticketsolver.sweep import run_sweep

    dataset = _bundled(sweep.data, "measuring", sweep.load_data)
    if not store.init_layers(task.item_id, task.attempt, 0):
        raise _Stopped("cancelled")
    out = store.sweep_dir(task.item_id)
    out.mkdir(parents=True, exist_ok=True)
    progress = _Progress(store, task, [], share=1.0)
    try:
        result = run_sweep(target, sweep.sweep_spec(), out, data=dataset, progress=progress.row)
    except TicketSolverError as exc:  # the item's error is shown to clients: no server path in it
        message = str(exc).replace(str(out), "the sweep's folder").replace(str(store.data_dir), "the data dir")
        if message == str(exc):
            raise
        raise JobError(message) from exc
    report = {
        "item": {"checkpoint": task.checkpoint_name, "data": sweep.data},
        "sweep": {
            "rows": len(result.rows),
            "reused": result.reused,  # rows an earlier attempt had built (resumed after a restart)
            "results": Path(result.csv_path).relative_to(out).as_posix(),
            "figures": [Path(figure).relative_to(out).as_posix() for figure in result.figures],
            "skipped": [{"setting": dict(setting), "reason": str(reason)} for setting, reason in result.skipped],
        },
    }
    if not store.finish_item(task.item_id, task.attempt, report, 0, ticket=False):
        raise _Stopped("cancelled")
    return ItemResult("succeeded")


def _save_and_finish(
    store: JobStore,
    task: ItemTask,
    ticket: Any,
    progress: _Progress,
    report_of: Callable[[Path], dict[str, Any]],
    problems: int = 0,
) -> ItemResult:
    """Save the ticket as this attempt's file, make its report and finish the item; the file is removed
    when the report fails or the item is no longer this attempt's."""
    progress.stage(progress.share, "saving the ticket")
    out = store.ticket_path(task.item_id, task.attempt)
    ticket.save(out)
    try:
        if not store.finish_item(task.item_id, task.attempt, report_of(out), problems):
            raise _Stopped("cancelled")
    except BaseException:
        out.unlink(missing_ok=True)  # this attempt failed or lost (cancelled, re-queued): its file is nobody's
        raise
    return ItemResult("succeeded")


def verify_ticket(target: Any, ticket: Any, verify_config: dict[str, Any], device: Any = None) -> dict[str, Any]:
    """Verify a ticket against its target with a job's :class:`~ticketsolver.config.VerifyConfig` (as its
    ``to_dict()``); returns the report as plain data. The box is the config's, else the ticket's build
    box, else the documented default; the report states which."""
    from ticketsolver import VerifyConfig, verify

    return verify(target, ticket, VerifyConfig(**verify_config), device=device).to_dict()


def verify_files(checkpoint: bytes, arch: str | None, ticket: bytes, verify_config: dict[str, Any]) -> dict[str, Any]:
    """Verify from bytes (a Ray task on another node): load the vetted checkpoint and the ticket, then
    :func:`verify_ticket` on this node's device."""
    from ticketsolver.models import load_target
    from ticketsolver.ticket import Ticket

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "checkpoint").write_bytes(checkpoint)
        (Path(tmp) / "t.ticket").write_bytes(ticket)
        target = load_target(Path(tmp) / "checkpoint", arch=arch)
        return verify_ticket(target, Ticket.load(Path(tmp) / "t.ticket"), verify_config)


#: how a report's plain data writes a non-finite float (see ticketsolver.verification.report)
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def nonfinite_errors(report: Any, path: str = "") -> list[str]:
    """Where a verification report (plain data, non-finite floats written ``"nan"``, ``"inf"``) holds an
    error that is not a number: every NaN under a key naming an error, and every NaN or infinite
    ``max_abs_error`` (an output error is finite whenever both networks compute finite values; a relative
    error over a zero target may be infinite). Returns ``"path = value"`` strings.

    >>> nonfinite_errors({"sections": {"random": {"float32": {"max_abs_error": "nan"}}}})
    ['sections.random.float32.max_abs_error = nan']
    >>> nonfinite_errors({"worst_case": {"float64": {"max_abs_error": 1e-6}}})
    []
    """
    found: list[str] = []
    if isinstance(report, dict):
        for key, value in report.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(value, dict | list):
                found += nonfinite_errors(value, where)
                continue
            number = _NONFINITE.get(value) if isinstance(value, str) else value
            if not isinstance(number, float) or math.isfinite(number):
                continue
            if (math.isnan(number) and "error" in str(key)) or key == "max_abs_error":
                found.append(f"{where} = {value}")
    elif isinstance(report, list):
        for index, value in enumerate(report):
            found += nonfinite_errors(value, f"{path}[{index}]")
    return found
