"""The dispatcher: takes queued items from the store and runs each in an executor's worker process.

Place in the pipeline: jobs/service, between the store and the executors. :class:`JobRunner` is what a
service holds: :meth:`~JobRunner.submit` accepts a job (:func:`ticketsolver.jobs.intake.accept_job`),
:meth:`~JobRunner.cancel` cancels one, and a dispatcher thread keeps the workers busy:

* it starts a queued item while a worker is idle and the memory estimates of the running items plus the
  next one fit ``Limits.memory_budget_bytes`` (one item may always run alone);
* a cancelled item (here, or seen cancelled in the store) has its worker process terminated within
  seconds — a worker inside a long solver call would otherwise go on for minutes — and replaced;
* an item past its wall-clock limit (``JobSpec.time_limit_s``, else ``Limits.time_limit_s``) is killed
  and failed with "time limit of N s exceeded";
* an item whose worker died is retried once on a fresh worker, then failed with the exit code or signal;
* a failure the worker could not record (the store refused a write) is recorded as soon as the store
  accepts writes again, so no item stays "running" for ever.

The executor is used from the dispatcher thread only; other threads talk to it through the store, a
small queue of cancelled job ids and :meth:`Executor.wake`. Nothing here imports a web framework.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from ticketsolver.jobs.executors import Executor, LocalExecutor, Outcome
from ticketsolver.jobs.intake import accept_job
from ticketsolver.jobs.spec import Limits
from ticketsolver.jobs.store import ItemTask, JobStore, JobView
from ticketsolver.jobs.worker import ItemResult, run_item

__all__ = ["JobRunner"]

log = logging.getLogger("ticketsolver.jobs")

#: seconds between closings of finished jobs when nothing finished here (items finished by other processes)
_CLOSE_EVERY = 5.0


@dataclass
class _Run:
    """An item the dispatcher handed to a worker (or holds for its retry)."""

    task: ItemTask
    time_limit: float | None  # seconds of wall clock it may run
    started: float = 0.0  # monotonic time of the latest hand-over
    lost: str | None = None  # how its first worker died (it is then on its retry)

    @property
    def deadline(self) -> float | None:
        return None if self.time_limit is None else self.started + self.time_limit


class JobRunner:
    """Takes queued items from the store and runs them on an executor, off the caller's thread.

    On :meth:`start`, items left running by a previous process are re-queued (they resume from their
    finished layers); a dispatcher thread then keeps the executor's workers busy and closes jobs whose
    items have all finished.

    Args:
        store: the job store.
        executor: where items run (default: one local worker process).
        limits: what one job may ask for; also the memory budget and the default time limit of an item.
        poll_interval: seconds between looks at the store when nothing wakes the dispatcher (cancellations
            made by another process are seen within it).
        warm_up: start the worker processes at :meth:`start` (else on the first item).
        kill_grace: seconds between SIGTERM and SIGKILL when a worker is stopped.
    """

    def __init__(
        self,
        store: JobStore,
        executor: Executor | None = None,
        limits: Limits | None = None,
        poll_interval: float = 0.5,
        warm_up: bool = True,
        kill_grace: float = 2.0,
    ) -> None:
        self.store = store
        self.executor: Executor = executor if executor is not None else LocalExecutor()
        self.limits = limits or Limits()
        self.poll_interval = poll_interval
        self.warm_up = warm_up
        self.kill_grace = kill_grace
        self._running: dict[str, _Run] = {}  # item id -> its run, while a worker has it
        self._retries: deque[_Run] = deque()  # items whose worker died, to run again first
        self._cancelled: deque[str] = deque()  # job ids cancelled through this runner (any thread)
        self._next_close = 0.0  # monotonic time of the next unconditional finalize_jobs
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the calls a service makes ---------------------------------------------------------------------

    def submit(self, uploads: Sequence[tuple[str | None, IO[bytes]]], spec: Any) -> str:
        """Accept a job (see :func:`~ticketsolver.jobs.intake.accept_job`) and wake the dispatcher."""
        job_id = accept_job(self.store, uploads, spec, self.limits, self.executor.kind)
        self.executor.wake()
        return job_id

    def cancel(self, job_id: str) -> JobView | None:
        """Cancel a job in the store; the dispatcher then stops its running items within seconds."""
        view = self.store.cancel(job_id)
        self._cancelled.append(job_id)
        self.executor.wake()
        return view

    def start(self) -> None:
        """Re-queue items interrupted by a restart, start the workers (``warm_up``) and the dispatcher."""
        requeued = self.store.requeue_interrupted()
        if requeued:
            log.info("re-queued %d item(s) interrupted by a restart", requeued)
        self.store.finalize_jobs()
        if self.warm_up:
            self.executor.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="ticketsolver-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop dispatching and the workers; running items stay 'running' in the store and are re-queued
        by the next :meth:`start` (they resume from their finished layers)."""
        self._stop.set()
        self.executor.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.executor.shutdown(self.kill_grace)
        self._running.clear()
        self._retries.clear()

    @property
    def busy(self) -> int:
        """Items running in a worker now."""
        return len(self._running)

    # -- the loop --------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # noqa: BLE001 - e.g. a locked or unreachable database: log and go on
                log.exception("dispatcher step failed")
            self.executor.wait(self._next_wait())

    def _next_wait(self) -> float:
        deadlines = [run.deadline for run in self._running.values() if run.deadline is not None]
        until = min(deadlines, default=float("inf")) - time.monotonic()
        return max(0.0, min(self.poll_interval, until))

    def _step(self) -> None:
        outcomes = self.executor.poll()
        for outcome in outcomes:
            self._settle(outcome)
        overdue = self._stop_overdue()
        deferred = self.store.deferred_failures
        if deferred:
            self.store.flush_deferred()  # failures the store refused earlier
        self._stop_cancelled()
        self._dispatch()
        # Jobs close when their last item finishes: after an outcome or a failure written here (and now
        # and then for items finished elsewhere), not on every step, so that a close does not race a cancel
        now = time.monotonic()
        if outcomes or overdue or deferred or now >= self._next_close:
            self.store.finalize_jobs()
            self._next_close = now + _CLOSE_EVERY

    def _settle(self, outcome: Outcome) -> None:
        run = self._running.pop(outcome.key, None)
        if run is None:
            return
        if outcome.lost is not None:
            if run.lost is None:
                log.warning("item %s lost its worker (%s); retrying it on a fresh one", outcome.key, outcome.lost)
                run.lost = outcome.lost
                self._retries.append(run)
            else:
                self._fail(
                    run.task,
                    f"the worker process died while running this item ({outcome.lost}); it had died before "
                    f"({run.lost}) and the item was retried once on a fresh worker",
                )
        elif outcome.error is not None:
            self._fail(run.task, f"the worker failed: {outcome.error}")
        elif isinstance(outcome.value, ItemResult) and outcome.value.state == "store_unavailable":
            self._fail(run.task, outcome.value.error or "the job store refused a write")

    def _stop_cancelled(self) -> None:
        """Kill the workers of items cancelled here or in the store (e.g. by another process)."""
        jobs = set()
        while self._cancelled:
            jobs.add(self._cancelled.popleft())
        doomed = {key for key, run in self._running.items() if run.task.job_id in jobs}
        for job_id in {run.task.job_id for run in self._running.values()} - jobs:
            view = self.store.get_job(job_id)
            states = {} if view is None else {item.id: str(item.state) for item in view.items}
            # running: still its own; succeeded or failed: it is reporting that right now
            doomed |= {
                key
                for key, run in self._running.items()
                if run.task.job_id == job_id and states.get(key) not in ("running", "succeeded", "failed")
            }
        if doomed:
            log.info("stopping %d cancelled item(s)", len(doomed))
            self.executor.kill(doomed, self.kill_grace)
            for key in doomed:
                del self._running[key]
                self._drop_resume_files(key)
        self._retries = deque(run for run in self._retries if run.task.job_id not in jobs)

    def _stop_overdue(self) -> int:
        """Kill and fail the items past their time limit; returns how many."""
        now = time.monotonic()
        overdue = {key: run for key, run in self._running.items() if run.deadline is not None and now > run.deadline}
        if overdue:
            self.executor.kill(overdue, self.kill_grace)
        for key, run in overdue.items():
            del self._running[key]
            self._fail(run.task, f"time limit of {run.time_limit:g} s exceeded")
        return len(overdue)

    def _dispatch(self) -> None:
        while not self._stop.is_set() and self.executor.idle() > 0:
            if self._retries:
                run = self._retries.popleft()
            else:
                task = self._claim()
                if task is None:
                    return
                run = _Run(task, self._time_limit(task))
            run.started = time.monotonic()
            context, data_dir = self.executor.context(), str(self.store.data_dir)
            try:
                self.executor.submit(run.task.item_id, run_item, run.task, context, data_dir, self.store.url)
            except Exception as exc:  # noqa: BLE001 - never leave a claimed item running with no worker
                log.exception("could not hand item %s to a worker", run.task.item_id)
                self._fail(run.task, f"could not hand the item to a worker: {type(exc).__name__}: {exc}")
                continue
            self._running[run.task.item_id] = run

    def _claim(self) -> ItemTask | None:
        """The next queued item if its memory estimate fits beside the running ones (any, when none runs)."""
        in_use = sum(run.task.memory_bytes for run in self._running.values())
        return self.store.claim_next_item(self.limits.memory_budget_bytes, in_use)

    def _time_limit(self, task: ItemTask) -> float | None:
        limit = task.spec.get("time_limit_s")
        if limit is None:
            limit = self.limits.time_limit_s  # the service's default
        return None if limit is None else float(limit)

    def _fail(self, task: ItemTask, error: str) -> None:
        """Record an item failed (fenced by its attempt); kept in the store's deferred failures and written
        by a later step while the store refuses writes. Its resume files will never be used: removed."""
        self.store.record_failure(task.item_id, task.attempt, error)
        self._drop_resume_files(task.item_id)

    def _drop_resume_files(self, item_id: str) -> None:
        shutil.rmtree(self.store.resume_dir(item_id), ignore_errors=True)
