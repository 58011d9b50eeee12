"""Batch jobs: what a job asks for, accepting one, and the loop that runs its items off the service.

Place in the pipeline: jobs/service, the last stage. A job is one or more checkpoints times one or more n;
each (checkpoint, n) is an *item* that yields one ticket and one report. :func:`accept_job` stores the
uploads (server-generated names, loaded with the safe :func:`ticketsolver.load_target`), checks the
limits and records the job; :class:`JobRunner` is a dispatcher thread that claims queued items and runs
:func:`run_item` in an executor's worker processes (:mod:`ticketsolver.jobs.executors`).

A worker reports progress through the store after solved chunks; the same write tells it whether the
item is still its own, so cancelling (or a restart that re-queued the item) stops it at the next chunk.
Each finished layer is kept in a per-item resume directory, so a build interrupted by a restart resumes
from its finished layers. Nothing here imports a web framework.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import shutil
import threading
import time
import unicodedata
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ticketsolver.construction.builder import BuildConfig, solver_options
from ticketsolver.errors import JobError, TicketSolverError
from ticketsolver.jobs.executors import LocalExecutor, parent_alive, solver_for, verify_on_cluster, verify_remotely
from ticketsolver.jobs.store import ItemTask, JobStore, JobView, new_id
from ticketsolver.solvers import SOLVERS

__all__ = ["JobRunner", "JobSpec", "Limits", "accept_job", "run_item", "verify_ticket"]

log = logging.getLogger("ticketsolver.jobs")

_ARCHS = (None, "lenet5", "mlp", "export")
_DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class JobSpec:
    """The parameters of a job: how each ticket is built (defaults: the library's) and how it is verified."""

    n: tuple[int, ...] = (BuildConfig.n,)  # one item per n and checkpoint
    seed: int = BuildConfig.seed  # seed of the random source (same seed -> identical tickets on any executor)
    solver: str = BuildConfig.solver  # subset-sum backend
    input_domain: tuple[float, float] | None = None  # box of the model's inputs; lo >= 0 allows construction O
    resample: int = BuildConfig.resample  # opt-in IteRand redraw rounds (0: a pure source)
    tolerance: float | None = BuildConfig.tolerance  # None: the default of the build's kind
    arch: str | None = None  # built-in architecture of a state_dict; None infers it
    verify: bool = True  # verify each ticket after building it
    verify_box: tuple[float, float] | None = None  # verification box; default: the ticket's build box
    n_random: int = 256  # random inputs in the box (the service's light default; the library's is 512)
    worst_case_starts: int = 2  # gradient-ascent starts of the worst-case search (0: none)
    worst_case_steps: int = 10  # steps per start
    dtypes: tuple[str, ...] = _DTYPES  # forward-pass dtypes of the verification
    certify: bool = True  # compute the certified bound

    def __post_init__(self) -> None:
        if not self.n or len(set(self.n)) != len(self.n):
            raise JobError(f"n must be one or more distinct integers, got {list(self.n)}")
        if self.solver not in SOLVERS:
            raise JobError(f"unknown solver {self.solver!r}; choose one of {', '.join(sorted(SOLVERS))}")
        if self.arch not in _ARCHS:
            raise JobError(f"unknown arch {self.arch!r}; choose lenet5, mlp or export, or leave it out")
        for n in self.n:  # BuildConfig owns the rules of the build parameters
            BuildConfig(n=n, **self.build_options())
        if self.verify_box is not None:
            lo, hi = self.verify_box
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise JobError(f"verify_box must be finite with lo < hi, got {list(self.verify_box)}")
        counts = (
            ("n_random", self.n_random, 100_000),
            ("worst_case_starts", self.worst_case_starts, 64),
            ("worst_case_steps", self.worst_case_steps, 1_000),
        )
        for name, value, top in counts:
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise JobError(f"{name} must be an integer in [0, {top}], got {value!r}")
        if not self.dtypes or any(d not in _DTYPES for d in self.dtypes):
            raise JobError(f"dtypes must be a non-empty subset of {list(_DTYPES)}, got {list(self.dtypes)}")

    def build_options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`ticketsolver.build_ticket` (besides n)."""
        return {
            "seed": self.seed,
            "solver": self.solver,
            "input_domain": self.input_domain,
            "resample": self.resample,
            "tolerance": self.tolerance,
        }

    def verify_options(self) -> dict[str, Any]:
        return {
            "n_random": self.n_random,
            "worst_case_starts": self.worst_case_starts,
            "worst_case_steps": self.worst_case_steps,
            "dtypes": tuple(self.dtypes),
            "certify": self.certify,
        }

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise JobError(f"unknown parameters: {', '.join(unknown)}")
        values = dict(data)
        n = values.get("n", cls.n)
        values["n"] = tuple(n) if isinstance(n, list | tuple) else (n,)
        for key in ("input_domain", "verify_box", "dtypes"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class Limits:
    """What one job may ask for; beyond it the job is refused with a message."""

    max_n: int = 64  # largest n
    max_batch_items: int = 32  # checkpoints x n values
    max_weights_per_job: int = 20_000_000  # target weights summed over the items
    max_checkpoint_bytes: int = 64 * 1024**2  # one checkpoint file


def target_params(target: Any) -> int:
    """Trained weights and biases of the target's Linear and Conv2d layers."""
    from torch import nn

    return int(sum(p.numel() for m in target.module if isinstance(m, nn.Linear | nn.Conv2d) for p in m.parameters()))


def check_limits(spec: JobSpec, params: Sequence[int], limits: Limits) -> None:
    """Refuse (JobError) a job beyond ``limits``; ``params`` are the target sizes of its checkpoints."""
    too_big = [n for n in spec.n if n > limits.max_n]
    if too_big:
        raise JobError(f"n = {too_big[0]} is above this service's limit of {limits.max_n}")
    items = len(params) * len(spec.n)
    if items > limits.max_batch_items:
        raise JobError(
            f"{len(params)} checkpoint(s) x {len(spec.n)} value(s) of n = {items} items; the limit is "
            f"{limits.max_batch_items} per job"
        )
    weights = sum(params) * len(spec.n)
    if weights > limits.max_weights_per_job:
        raise JobError(
            f"the job would approximate {weights:,} weights ({items} items); the limit is "
            f"{limits.max_weights_per_job:,} per job"
        )


def display_name(name: str | None) -> str:
    """The client's file name reduced to something safe to *show* (it is never used as a path)."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(c for c in base if unicodedata.category(c)[0] not in "CZ" or c == " ").strip()
    return clean[:200] or "checkpoint"


def _store_upload(stream: IO[bytes], path: Path, max_bytes: int) -> tuple[int, str]:
    """Copy an upload to ``path`` in chunks, refusing it past ``max_bytes``; returns (size, sha256)."""
    digest, size = hashlib.sha256(), 0
    with path.open("xb") as out:
        while chunk := stream.read(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise JobError(f"a checkpoint is larger than the limit of {max_bytes} bytes")
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest()


def accept_job(
    store: JobStore, uploads: Sequence[tuple[str | None, IO[bytes]]], spec: JobSpec, limits: Limits, executor: str
) -> str:
    """Store the uploads, load each safely (never unpickled), check the limits and record the job.

    Args:
        store: the job store.
        uploads: (client file name, binary stream) per checkpoint; the name is kept for display only.
        spec: the job's parameters.
        limits: the service's limits.
        executor: name of the executor, recorded with the job.

    Returns:
        The new job's id.

    Raises:
        JobError: no checkpoint, or a limit exceeded (the message says which).
        CheckpointError: a checkpoint is unreadable, hostile or of an unknown architecture.
        ConstructionError: a checkpoint holds NaN/inf weights.
    """
    from ticketsolver.models import load_target

    if not uploads:
        raise JobError("no checkpoint: send one or more files in the field 'checkpoint'")
    if len(uploads) > limits.max_batch_items:
        raise JobError(f"{len(uploads)} checkpoints; the limit is {limits.max_batch_items} items per job")
    written: list[Path] = []
    try:
        checkpoints: list[dict[str, Any]] = []
        for name, stream in uploads:
            checkpoint_id = new_id()
            path = store.upload_path(checkpoint_id)
            written.append(path)
            shown = display_name(name)
            size, sha256 = _store_upload(stream, path, limits.max_checkpoint_bytes)
            try:
                target = load_target(path, arch=spec.arch, max_bytes=limits.max_checkpoint_bytes)
            except TicketSolverError as exc:  # name the client's file, not the server's id
                raise type(exc)(str(exc).replace(checkpoint_id, shown)) from exc
            checkpoints.append(
                {
                    "id": checkpoint_id,
                    "name": shown,
                    "size": size,
                    "sha256": sha256,
                    "arch": target.arch,
                    "target_params": target_params(target),
                }
            )
        check_limits(spec, [c["target_params"] for c in checkpoints], limits)
        return store.create_job(spec.to_dict(), checkpoints, spec.n, executor)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------------
# One item, in a worker process
# ---------------------------------------------------------------------------------------------------


class _Stopped(Exception):
    """The item is no longer this worker's (cancelled, re-queued, or the service died)."""


def verify_ticket(target: Any, ticket: Any, spec: JobSpec, device: Any = None) -> Any:
    """Verify on ``spec.verify_box``, else the box the ticket was built for, else the documented default
    (:func:`ticketsolver.verification.against.choose_input_box`); the report states which."""
    from ticketsolver.verification.against import verify

    return verify(target, ticket, input_box=spec.verify_box, device=device, **spec.verify_options())


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
        # the builder restarts its fraction for a layer's bias problems; progress shown never goes back
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


_STORES: dict[tuple[str, str], JobStore] = {}


def _worker_store(data_dir: str, url: str) -> JobStore:
    key = (data_dir, url)
    if key not in _STORES:
        _STORES[key] = JobStore(data_dir, url)
    return _STORES[key]


def run_item(task: ItemTask, context: dict[str, Any], data_dir: str, url: str) -> str:
    """Build, save and verify the ticket of one item; the outcome goes to the store.

    Runs in a worker process. Returns ``"succeeded"``, ``"failed"`` or ``"stopped"`` (cancelled,
    re-queued, or the service went away; the store then already says what happens next).
    """
    store = _worker_store(data_dir, url)
    try:
        return _run_item(store, task, context)
    except _Stopped:
        return "stopped"
    except TicketSolverError as exc:
        store.fail_item(task.item_id, task.attempt, str(exc))
        return "failed"
    except Exception as exc:  # noqa: BLE001 - a job must say why it failed, whatever the cause
        log.exception("item %s failed", task.item_id)
        store.fail_item(task.item_id, task.attempt, f"internal error: {type(exc).__name__}: {exc}")
        return "failed"


def _run_item(store: JobStore, task: ItemTask, context: dict[str, Any]) -> str:
    from torch import nn

    from ticketsolver import build_ticket, load_target
    from ticketsolver.ticket.summary import ticket_summary

    spec = JobSpec.from_dict(task.spec)
    path = store.upload_path(task.checkpoint_id)
    target = dataclasses.replace(load_target(path, arch=spec.arch), source=task.checkpoint_name)
    sizes = [m.weight.numel() for m in target.module if isinstance(m, nn.Linear | nn.Conv2d)]
    progress = _Progress(store, task, sizes, share=0.9 if spec.verify else 1.0)
    if not store.init_layers(task.item_id, task.attempt, len(sizes)):
        raise _Stopped("cancelled")
    resume = store.resume_dir(task.item_id)
    ticket = build_ticket(
        target,
        task.n,
        progress=progress,
        solve_with=solver_for(
            context,
            spec.solver,
            **solver_options(BuildConfig(n=task.n, **spec.build_options())),
        ),
        resume_dir=resume,
        **spec.build_options(),
    )
    progress.stage(progress.share, "saving the ticket")
    out = store.ticket_path(task.item_id, task.attempt)
    ticket.save(out)
    report: dict[str, Any] = {
        "item": {"checkpoint": task.checkpoint_name, "n": task.n},
        "ticket": ticket_summary(ticket, out.stat().st_size),
        "kept_values_sha256": ticket.kept_hash(),
        "verification": None,
    }
    if spec.verify:
        progress.stage(progress.share, "verifying")
        gpus = verify_on_cluster(context)
        if gpus is None:
            report["verification"] = verify_ticket(target, ticket, spec).to_dict()
        else:
            report["verification"] = verify_remotely(context, gpus, path, spec.arch, out, task.spec)
    problems = sum(int(p.get("problems_solved", 0)) for p in ticket.build.get("pairs", []))
    if not store.finish_item(task.item_id, task.attempt, report, problems):
        out.unlink(missing_ok=True)  # this attempt lost (cancelled or re-queued): its file is nobody's
        raise _Stopped("cancelled")
    shutil.rmtree(resume, ignore_errors=True)
    return "succeeded"


# ---------------------------------------------------------------------------------------------------
# The dispatcher
# ---------------------------------------------------------------------------------------------------


class JobRunner:
    """Takes queued items from the store and runs them on an executor, off the caller's thread.

    On :meth:`start`, items left running by a previous process are re-queued (they resume from their
    finished layers); a dispatcher thread then keeps ``executor.capacity`` items running and closes
    jobs whose items have all finished.

    Args:
        store: the job store.
        executor: a :class:`~ticketsolver.jobs.executors.LocalExecutor` or ``RayExecutor``.
        limits: what one job may ask for.
        poll_interval: seconds between looks at the store when nothing wakes the dispatcher.
        warm_up: start the worker processes at :meth:`start` (else on the first item).
    """

    def __init__(
        self,
        store: JobStore,
        executor: LocalExecutor | None = None,
        limits: Limits | None = None,
        poll_interval: float = 0.5,
        warm_up: bool = True,
    ) -> None:
        self.store = store
        self.executor = executor or LocalExecutor()
        self.limits = limits or Limits()
        self.poll_interval = poll_interval
        self.warm_up = warm_up
        self._running: dict[Future, ItemTask] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the calls a service makes ---------------------------------------------------------------------

    def submit(self, uploads: Sequence[tuple[str | None, IO[bytes]]], spec: JobSpec) -> str:
        """Accept a job (see :func:`accept_job`) and wake the dispatcher; returns its id."""
        job_id = accept_job(self.store, uploads, spec, self.limits, self.executor.kind)
        self._wake.set()
        return job_id

    def cancel(self, job_id: str) -> JobView | None:
        """Cancel a job; its running items stop at their next solved chunk."""
        view = self.store.cancel(job_id)
        self._wake.set()
        return view

    def start(self) -> None:
        requeued = self.store.requeue_interrupted()
        if requeued:
            log.info("re-queued %d item(s) interrupted by a restart", requeued)
        self.store.finalize_jobs()
        if self.warm_up:
            self.executor.warm()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ticketsolver-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop dispatching and terminate the workers; running items stay 'running' in the store and
        are re-queued by the next :meth:`start`."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.executor.shutdown()
        self._running.clear()

    @property
    def busy(self) -> int:
        return len(self._running)

    # -- the loop --------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # noqa: BLE001 - e.g. a locked database: log and try again
                log.exception("dispatcher step failed")
            self._wake.wait(self.poll_interval)
            self._wake.clear()

    def _step(self) -> None:
        for future in [f for f in self._running if f.done()]:
            done = self._running.pop(future)
            error = future.exception()
            if error is not None:
                self.store.fail_item(
                    done.item_id, done.attempt, f"the worker process failed: {type(error).__name__}: {error}"
                )
                if isinstance(error, BrokenProcessPool):
                    self.executor.reset()
        while len(self._running) < self.executor.capacity and not self._stop.is_set():
            task = self.store.claim_next_item()
            if task is None:
                break
            try:
                future = self.executor.submit(
                    run_item, task, self.executor.context(), str(self.store.data_dir), self.store.url
                )
            except Exception as exc:  # noqa: BLE001 - a broken pool: fail this attempt, start a fresh pool
                self.executor.reset()
                self.store.fail_item(task.item_id, task.attempt, f"could not start a worker: {exc}")
                continue
            future.add_done_callback(lambda _: self._wake.set())
            self._running[future] = task
        self.store.finalize_jobs()
