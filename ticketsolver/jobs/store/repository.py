"""The job store: what the service has accepted, how far it got, and where its files are.

Place in the pipeline: jobs/store. Every accepted job is a row in ``jobs``, its checkpoints rows in
``checkpoints`` (the upload itself a file named by a server-generated id), and every (checkpoint, n) pair
an ``items`` row with its state, progress, report and estimated peak memory; ``layers`` holds per-layer
progress. SQLite in WAL mode by default (the API process and its worker processes write concurrently);
any SQLAlchemy URL works. The schema is migrated to the newest revision when a store opens.

Files live under ``data_dir`` and are named only by ids the server generated (32 hex digits):
``uploads/<checkpoint id>``, ``tickets/<item id>-<attempt>.ticket``, ``resume/<item id>/`` (finished layers
of an interrupted build), ``sweeps/<item id>/`` (a sweep's table, figures and tickets, kept as its results).
No part of a request ever becomes a path, and no error shows a server path.

Concurrency contract: an item is *claimed* by the dispatcher (state running, ``attempt`` + 1); every
later write by the worker names that attempt and the ``running`` state, so a cancelled item or one
re-queued after a restart silently ignores a stale worker (the update matches no row).

Failure contract: a write that fails with an ``OperationalError`` (database locked, disk full, read-only)
is retried briefly, then raises :class:`StoreError`. A caller that must record an outcome whatever
happens (the dispatcher, when a worker failed) uses :meth:`JobStore.record_failure`, which keeps what it
could not write and writes it on :meth:`JobStore.flush_deferred` once the store is writable again, so no
item stays "running" for ever. :meth:`JobStore.health` tells a health check whether the store can be read
and written (a real write) and how much disk is free.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from ticketsolver.errors import JobError
from ticketsolver.jobs.memory import estimate_peak_bytes
from ticketsolver.jobs.spec import JobState
from ticketsolver.jobs.store import health, migrations, retention
from ticketsolver.jobs.store.errors import StoreError
from ticketsolver.jobs.store.tables import (
    ACTIVE_STATES,
    DATA_FOLDERS,
    JOB_STATES,
    TERMINAL_STATES,
    TICKET_NAME,
    UPLOAD_SUFFIXES,
    CheckpointRow,
    ItemRow,
    JobRow,
    LayerRow,
    checked_id,
    new_id,
)
from ticketsolver.jobs.store.views import CheckpointView, ItemTask, ItemView, JobView, LayerView, eta, utc

__all__ = ["JobStore"]

log = logging.getLogger("ticketsolver.jobs.store")
T = TypeVar("T")

#: pauses between the tries of a failed write (seconds): about 1.5 s in all, then StoreError
WRITE_RETRY_DELAYS: tuple[float, ...] = (0.05, 0.15, 0.3, 1.0)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (status requests) proceed while a worker writes; the busy timeout makes
    # concurrent writers from several processes wait instead of failing; FULL makes commits durable.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


@dataclass(frozen=True)
class _Failure:
    item_id: str
    attempt: int
    error: str


class JobStore:
    """Jobs, items and per-layer progress in a SQL database; their files under ``data_dir``.

    Args:
        data_dir: where uploads, tickets and resume files live (created if missing).
        url: a SQLAlchemy URL; default ``sqlite:///<data_dir>/jobs.sqlite``. It must be one database every
            process of the service reaches (an in-memory SQLite database is refused).
        retry_delays: pauses between the tries of a write that failed with an OperationalError.

    Raises:
        StoreError: the database cannot be opened or migrated (the message says why, without paths).

    Example:
        >>> import tempfile
        >>> store = JobStore(tempfile.mkdtemp())
        >>> store.list_jobs()
        ([], 0)
    """

    def __init__(
        self, data_dir: str | os.PathLike[str], url: str | None = None, retry_delays: Sequence[float] | None = None
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        for sub in DATA_FOLDERS:
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self.url = url or f"sqlite:///{self.data_dir / 'jobs.sqlite'}"
        if self.url.startswith("sqlite") and self.url.rstrip("/").split("?")[0] in ("sqlite:", "sqlite:/:memory:"):
            raise StoreError("an in-memory SQLite database cannot be shared by the service's processes: give a file")
        self.retry_delays = tuple(WRITE_RETRY_DELAYS if retry_delays is None else retry_delays)
        connect_args = self._connect_args(self.url)
        try:
            migrations.upgrade(self.url, lock_file=self.data_dir / "migrate.lock", connect_args=connect_args)
        except OperationalError as exc:
            raise StoreError(f"the job store could not be opened: {self._reason(exc)}") from None
        self.engine: Engine = create_engine(self.url, connect_args=connect_args)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._deferred: list[_Failure] = []
        self._deferred_lock = threading.Lock()
        self._estimate_unknown_memory()

    @staticmethod
    def _connect_args(url: str) -> dict[str, Any]:
        return {"timeout": 30, "check_same_thread": False} if url.startswith("sqlite") else {}

    def close(self) -> None:
        self.engine.dispose()

    # -- writes that retry, reads that say why they failed ---------------------------------------------

    def _reason(self, exc: BaseException) -> str:
        """The driver's message, without server paths."""
        text = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        return text.replace(str(self.data_dir), "<data dir>")

    def _write(self, work: Callable[[Session], T], what: str) -> T:
        """Run ``work`` in one transaction; an OperationalError is retried after each of ``retry_delays``,
        then becomes StoreError (the transaction of every try is rolled back)."""
        for delay in (*self.retry_delays, None):
            try:
                with self._session.begin() as session:
                    return work(session)
            except OperationalError as exc:
                if delay is None:
                    raise StoreError(f"the job store could not be written ({what}): {self._reason(exc)}") from None
                log.warning("job store write failed (%s), retrying: %s", what, self._reason(exc))
                time.sleep(delay)
            except DBAPIError as exc:
                raise StoreError(f"the job store could not be written ({what}): {self._reason(exc)}") from None
        raise AssertionError("unreachable")

    def _read(self, work: Callable[[Session], T]) -> T:
        try:
            with self._session() as session:
                return work(session)
        except DBAPIError as exc:
            raise StoreError(f"the job store could not be read: {self._reason(exc)}") from None

    # -- paths (server-generated ids only) -------------------------------------------------------------

    def upload_path(self, checkpoint_id: str, suffix: str | None = None) -> Path:
        """The stored upload of a checkpoint: ``uploads/<id><suffix>``, the suffix one of
        :data:`UPLOAD_SUFFIXES` chosen by intake from the content. Without ``suffix``: the file that exists
        (a path to load with :func:`ticketsolver.load_target`), else the bare ``uploads/<id>``."""
        base = self.data_dir / "uploads" / checked_id(checkpoint_id)
        if suffix is not None:
            if suffix not in UPLOAD_SUFFIXES:
                raise JobError(f"not an upload suffix: {suffix[:20]!r}")
            return base.with_name(base.name + suffix)
        for known in UPLOAD_SUFFIXES[1:]:
            path = base.with_name(base.name + known)
            if path.exists():
                return path
        return base

    def ticket_path(self, item_id: str, attempt: int) -> Path:
        """Where attempt ``attempt`` of an item writes its ticket (one file per attempt, so that a stale
        worker never touches the file of the attempt that won)."""
        return self.data_dir / "tickets" / f"{checked_id(item_id)}-{int(attempt)}.ticket"

    def ticket_of(self, item_id: str) -> Path | None:
        """The ticket file of a finished item, or None."""
        name = self._read(lambda s: s.scalar(select(ItemRow.ticket_file).where(ItemRow.id == item_id)))
        if name is None or not TICKET_NAME.fullmatch(name):
            return None
        path = self.data_dir / "tickets" / name
        return path if path.is_file() else None

    def resume_dir(self, item_id: str) -> Path:
        return self.data_dir / "resume" / checked_id(item_id)

    def sweep_dir(self, item_id: str) -> Path:
        """Where a sweep item's :func:`~ticketsolver.sweep.run_sweep` writes (``results.csv``, figures, tickets):
        every attempt writes to the same folder, so a sweep interrupted by a restart resumes from its finished
        rows. It stays after the item finishes (its results) until the job is purged."""
        return self.data_dir / "sweeps" / checked_id(item_id)

    # -- creating and reading jobs ---------------------------------------------------------------------

    def create_job(
        self,
        spec: dict[str, Any],
        checkpoints: Sequence[Mapping[str, Any]],
        ns: Sequence[int],
        executor: str,
    ) -> str:
        """Insert a job with its checkpoints and one item per (checkpoint, n), in one transaction.

        Args:
            spec: ``JobSpec.to_dict()``.
            checkpoints: per checkpoint a dict of the :class:`CheckpointRow` columns (id, name, size, sha256,
                arch, target_params) and optionally ``memory_bytes``: {n: estimated peak bytes of its item}.
            ns: the values of n.
            executor: the executor's name, recorded with the job.

        Returns:
            The job id.
        """
        job_id, now = new_id(), time.time()

        def insert(session: Session) -> str:
            session.add(JobRow(id=job_id, state=JobState.QUEUED, spec=spec, executor=executor, created_at=now))
            session.flush()
            position = 0
            for index, given in enumerate(checkpoints):
                ckpt = dict(given)
                memory = ckpt.pop("memory_bytes", None) or {}
                session.add(CheckpointRow(job_id=job_id, position=index, **ckpt))
                session.flush()
                for n in ns:
                    session.add(
                        ItemRow(
                            id=new_id(),
                            job_id=job_id,
                            position=position,
                            checkpoint_id=ckpt["id"],
                            n=int(n),
                            weight=float(max(1, ckpt["target_params"]) * n),
                            state=JobState.QUEUED,
                            memory_bytes=int(memory.get(n, 0)),
                        )
                    )
                    position += 1
            return job_id

        return self._write(insert, "create a job")

    def get_job(self, job_id: str) -> JobView | None:
        def read(session: Session) -> JobView | None:
            job = session.get(JobRow, job_id)
            return None if job is None else self._views(session, [job])[0]

        return self._read(read)

    def list_jobs(
        self, offset: int = 0, limit: int = 100, state: str | JobState | None = None
    ) -> tuple[list[JobView], int]:
        """Newest first; returns (views, total count matching)."""

        def read(session: Session) -> tuple[list[JobView], int]:
            query = select(JobRow)
            count_query = select(func.count()).select_from(JobRow)
            if state is not None:
                query = query.where(JobRow.state == str(state))
                count_query = count_query.where(JobRow.state == str(state))
            jobs = session.scalars(query.order_by(JobRow.created_at.desc()).offset(offset).limit(limit)).all()
            return self._views(session, list(jobs)), int(session.scalar(count_query) or 0)

        return self._read(read)

    def item_files(self, job_id: str, position: int) -> tuple[ItemView, Path | None] | None:
        """The item ``position`` of a job and its ticket path (None while it has no ticket)."""
        job = self.get_job(job_id)
        if job is None or not 0 <= position < len(job.items):
            return None
        item = job.items[position]
        return item, self.ticket_of(item.id) if item.has_ticket else None

    def item_checkpoint(self, job_id: str, position: int) -> Path | None:
        """The stored upload item ``position`` of a job was built from, or None when there is no such item."""
        with self._session() as session:
            checkpoint_id = session.scalar(
                select(ItemRow.checkpoint_id).where(ItemRow.job_id == job_id, ItemRow.position == position)
            )
        return None if checkpoint_id is None else self.upload_path(checkpoint_id)

    def item_reports(self, job_id: str) -> list[dict[str, Any] | None] | None:
        """Per item (in position order) the stored report, or None when the job does not exist."""

        def read(session: Session) -> list[dict[str, Any] | None] | None:
            if session.get(JobRow, job_id) is None:
                return None
            rows = session.scalars(select(ItemRow).where(ItemRow.job_id == job_id).order_by(ItemRow.position))
            return [row.report for row in rows]

        return self._read(read)

    def _views(self, session: Session, jobs: list[JobRow]) -> list[JobView]:
        if not jobs:
            return []
        ids = [job.id for job in jobs]
        items = session.scalars(select(ItemRow).where(ItemRow.job_id.in_(ids)).order_by(ItemRow.position)).all()
        ckpts = session.scalars(
            select(CheckpointRow).where(CheckpointRow.job_id.in_(ids)).order_by(CheckpointRow.position)
        ).all()
        layers = session.scalars(
            select(LayerRow).where(LayerRow.item_id.in_([i.id for i in items])).order_by(LayerRow.pair)
        ).all()
        by_item: dict[str, list[LayerView]] = {}
        for layer in layers:
            by_item.setdefault(layer.item_id, []).append(LayerView.model_validate(layer))
        ckpt_by_id = {c.id: c for c in ckpts}
        now = time.time()
        views = []
        for job in jobs:
            job_items = [i for i in items if i.job_id == job.id]
            spec = dict(job.spec)
            no_n = bool(spec.get("learn") or spec.get("sweep"))  # a learned-mask or sweep item has no one n
            item_views = [
                ItemView(
                    id=i.id,
                    position=i.position,
                    checkpoint=ckpt_by_id[i.checkpoint_id].name,
                    checkpoint_position=ckpt_by_id[i.checkpoint_id].position,
                    n=None if no_n else i.n,
                    state=JobState(i.state),
                    progress=min(1.0, max(0.0, i.progress)),
                    message=i.message,
                    error=i.error,
                    eta_seconds=eta(i.progress, i.started_at, i.state, now),
                    started_at=utc(i.started_at),
                    finished_at=utc(i.finished_at),
                    has_ticket=i.ticket_file is not None,
                    problems_solved=i.problems_solved,
                    memory_bytes=i.memory_bytes,
                    layers=by_item.get(i.id, []),
                )
                for i in job_items
            ]
            total = sum(i.weight for i in job_items) or 1.0
            progress = 1.0 if job.state == JobState.SUCCEEDED else sum(i.weight * i.progress for i in job_items) / total
            views.append(
                JobView(
                    id=job.id,
                    state=JobState(job.state),
                    progress=min(1.0, max(0.0, progress)),
                    eta_seconds=eta(progress, job.started_at, job.state, now),
                    error=job.error,
                    executor=job.executor,
                    params=dict(job.spec),
                    created_at=utc(job.created_at),  # type: ignore[arg-type]
                    started_at=utc(job.started_at),
                    finished_at=utc(job.finished_at),
                    purged_at=utc(job.purged_at),
                    checkpoints=[CheckpointView.model_validate(c) for c in ckpts if c.job_id == job.id],
                    items=item_views,
                )
            )
        return views

    # -- state changes ---------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobView | None:
        """Cancel a queued or running job and its unfinished items; finished jobs are left as they are."""
        now = time.time()

        def cancel(session: Session) -> bool:
            job = session.get(JobRow, job_id)
            if job is None:
                return False
            if job.state in ACTIVE_STATES:
                job.state, job.finished_at = JobState.CANCELLED, now
                session.execute(
                    update(ItemRow)
                    .where(ItemRow.job_id == job_id, ItemRow.state.in_(ACTIVE_STATES))
                    .values(state=JobState.CANCELLED, finished_at=now, message="cancelled")
                )
            return True

        return self.get_job(job_id) if self._write(cancel, "cancel a job") else None

    def requeue_interrupted(self) -> int:
        """After a restart: items left running go back to the queue (a new attempt fences off any stale
        worker); their resume directories keep the layers already finished. Returns how many."""

        def requeue(session: Session) -> int:
            result = session.execute(
                update(ItemRow)
                .where(ItemRow.state == JobState.RUNNING)
                .values(state=JobState.QUEUED, attempt=ItemRow.attempt + 1, message="re-queued after a restart")
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

        return self._write(requeue, "re-queue interrupted items")

    def claim_next_item(self, memory_budget: int | None = None, memory_in_use: int = 0) -> ItemTask | None:
        """Mark the oldest queued item of an active job running (new attempt) and return it.

        Memory admission: with ``memory_budget`` (bytes; ``Limits.memory_budget_bytes``) and
        ``memory_in_use`` (the sum of ``ItemTask.memory_bytes`` of the items running now), the oldest item
        is claimed only if its estimate fits what is left, or if nothing runs (an item always may run
        alone: intake refused any whose estimate alone exceeds the budget). Otherwise None: the queue
        waits in order (a large item is not overtaken for ever by small ones).
        """
        now = time.time()

        def claim(session: Session) -> ItemTask | None:
            row = session.execute(
                select(ItemRow, JobRow, CheckpointRow)
                .join(JobRow, ItemRow.job_id == JobRow.id)
                .join(CheckpointRow, ItemRow.checkpoint_id == CheckpointRow.id)
                .where(ItemRow.state == JobState.QUEUED, JobRow.state.in_(ACTIVE_STATES))
                .order_by(JobRow.created_at, ItemRow.position)
                .limit(1)
            ).first()
            if row is None:
                return None
            item, job, ckpt = row
            if memory_budget is not None and memory_in_use > 0 and memory_in_use + item.memory_bytes > memory_budget:
                return None
            attempt = item.attempt + 1
            claimed = session.execute(
                update(ItemRow)
                .where(ItemRow.id == item.id, ItemRow.state == JobState.QUEUED, ItemRow.attempt == item.attempt)
                .values(state=JobState.RUNNING, attempt=attempt, started_at=now, message="starting", error=None)
            )
            if not claimed.rowcount:  # type: ignore[attr-defined]
                return None
            if job.state == JobState.QUEUED:
                job.state, job.started_at = JobState.RUNNING, now
            return ItemTask(
                item.id, attempt, job.id, item.n, dict(job.spec), ckpt.id, ckpt.name, memory_bytes=item.memory_bytes
            )

        return self._write(claim, "claim an item")

    def running_memory_bytes(self) -> int:
        """Sum of the estimated peak memory of the items running now (all dispatchers of this store)."""
        return int(
            self._read(
                lambda s: s.scalar(
                    select(func.coalesce(func.sum(ItemRow.memory_bytes), 0)).where(ItemRow.state == JobState.RUNNING)
                )
            )
            or 0
        )

    def _fenced(self, item_id: str, attempt: int) -> Any:
        return update(ItemRow).where(
            ItemRow.id == item_id, ItemRow.attempt == attempt, ItemRow.state == JobState.RUNNING
        )

    def report_progress(
        self, item_id: str, attempt: int, progress: float, message: str, layer: tuple[int, float] | None = None
    ) -> bool:
        """Record an item's progress (and one layer's); False when the item is no longer this worker's
        (cancelled, or re-queued after a restart): the worker must stop."""
        now = time.time()

        def report(session: Session) -> bool:
            result = session.execute(
                self._fenced(item_id, attempt).values(progress=min(1.0, max(0.0, progress)), message=message[:200])
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                return False
            if layer is not None:
                pair, fraction = layer
                row = session.get(LayerRow, (item_id, pair))
                if row is None:
                    session.add(
                        LayerRow(item_id=item_id, pair=pair, fraction=fraction, message=message[:200], updated_at=now)
                    )
                else:
                    row.fraction, row.message, row.updated_at = fraction, message[:200], now
            return True

        return self._write(report, "record progress")

    def init_layers(self, item_id: str, attempt: int, pairs: int) -> bool:
        """Create (or reset) the per-layer rows of an item at the start of an attempt."""
        now = time.time()

        def init(session: Session) -> bool:
            if not session.execute(self._fenced(item_id, attempt).values(message="solving")).rowcount:  # type: ignore[attr-defined]
                return False
            for pair in range(pairs):
                if session.get(LayerRow, (item_id, pair)) is None:
                    session.add(LayerRow(item_id=item_id, pair=pair, fraction=0.0, message="queued", updated_at=now))
            return True

        return self._write(init, "start an item")

    def finish_item(
        self, item_id: str, attempt: int, report: dict[str, Any], problems_solved: int, ticket: bool = True
    ) -> bool:
        """The item succeeded: its ticket is at ``ticket_path(item_id, attempt)`` (``ticket=False``: it made
        none, a sweep's results are in its :meth:`sweep_dir`)."""
        ticket_file = self.ticket_path(item_id, attempt).name if ticket else None

        def finish(session: Session) -> bool:
            result = session.execute(
                self._fenced(item_id, attempt).values(
                    state=JobState.SUCCEEDED,
                    progress=1.0,
                    message="done",
                    report=report,
                    problems_solved=problems_solved,
                    ticket_file=ticket_file,
                    finished_at=time.time(),
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

        return self._write(finish, "record a finished item")

    def fail_item(self, item_id: str, attempt: int, error: str) -> bool:
        """The item failed with ``error`` (False: it was no longer this attempt's). StoreError when the store
        cannot be written; see :meth:`record_failure` for a caller that must not lose the outcome."""

        def fail(session: Session) -> bool:
            result = session.execute(
                self._fenced(item_id, attempt).values(
                    state=JobState.FAILED, error=error[:4000], message="failed", finished_at=time.time()
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

        return self._write(fail, "record a failed item")

    def record_failure(self, item_id: str, attempt: int, error: str) -> bool | None:
        """:meth:`fail_item` that never raises StoreError: what cannot be written now is kept (in this
        process) and written by :meth:`flush_deferred`. Returns fail_item's answer, or None when deferred.

        The dispatcher calls this when a worker reports a failure or dies, and :meth:`flush_deferred` on
        every step, so an item is never left "running" because the store was briefly unwritable.
        """
        try:
            return self.fail_item(item_id, attempt, error)
        except StoreError as exc:
            log.error("item %s: failure kept until the store is writable again: %s", item_id, exc)
            with self._deferred_lock:
                self._deferred.append(_Failure(item_id, attempt, error))
            return None

    def flush_deferred(self) -> int:
        """Write the failures :meth:`record_failure` kept; returns how many are still waiting (0: none)."""
        with self._deferred_lock:
            waiting, self._deferred = self._deferred, []
        for index, failure in enumerate(waiting):
            try:
                self.fail_item(failure.item_id, failure.attempt, failure.error)
            except StoreError:
                with self._deferred_lock:
                    self._deferred[:0] = waiting[index:]
                break
        with self._deferred_lock:
            return len(self._deferred)

    @property
    def deferred_failures(self) -> int:
        """Failures waiting for the store to be writable again."""
        with self._deferred_lock:
            return len(self._deferred)

    def finalize_jobs(self) -> list[str]:
        """Close active jobs whose items are all finished: failed if any item failed (the error names
        each failed item), else succeeded. Returns the ids closed."""
        now = time.time()

        def finalize(session: Session) -> list[str]:
            closed = []
            active = session.scalars(select(JobRow).where(JobRow.state.in_(ACTIVE_STATES))).all()
            for job in active:
                items = session.scalars(
                    select(ItemRow).where(ItemRow.job_id == job.id).order_by(ItemRow.position)
                ).all()
                if any(i.state not in TERMINAL_STATES for i in items):
                    continue
                failed = [i for i in items if i.state == JobState.FAILED]
                values: dict[str, Any] = {"state": JobState.SUCCEEDED, "finished_at": now}
                if failed:
                    names = {
                        c.id: c.name
                        for c in session.scalars(select(CheckpointRow).where(CheckpointRow.job_id == job.id))
                    }
                    values["state"] = JobState.FAILED
                    values["error"] = "; ".join(
                        f"item {i.position} ({names.get(i.checkpoint_id, '?')}, n={i.n}): {i.error}" for i in failed
                    )[:4000]
                # The reads above ran before this transaction's first write (pysqlite begins lazily), so a cancel
                # may have committed since: close the job only if it is still active (compare-and-set).
                result = session.execute(
                    update(JobRow).where(JobRow.id == job.id, JobRow.state.in_(ACTIVE_STATES)).values(**values)
                )
                if result.rowcount:  # type: ignore[attr-defined]
                    closed.append(job.id)
            return closed

        return self._write(finalize, "close finished jobs")

    # -- memory estimates of items stored before they were estimated -----------------------------------

    def _estimate_unknown_memory(self) -> None:
        def fill(session: Session) -> None:
            rows = session.execute(
                select(ItemRow, CheckpointRow.target_params)
                .join(CheckpointRow, ItemRow.checkpoint_id == CheckpointRow.id)
                .where(ItemRow.memory_bytes == 0, ItemRow.state.in_(ACTIVE_STATES))
            ).all()
            for item, params in rows:
                item.memory_bytes = estimate_peak_bytes(params, item.n)

        try:
            self._write(fill, "estimate memory")
        except StoreError as exc:  # a read-only store still serves reads; items keep "not estimated" (0)
            log.warning("%s", exc)

    # -- retention and health (ticketsolver.jobs.store.retention, .health) ---------------------------------

    def purge(self, job_id: str) -> int | None:
        """Remove the uploads, tickets, resume files and sweep results of a finished or cancelled job (see
        :func:`ticketsolver.jobs.store.retention.purge`); returns the files removed, None: no such job."""
        return retention.purge(self, job_id)

    def purge_older_than(self, seconds: float) -> list[str]:
        """:meth:`purge` every job that finished more than ``seconds`` ago (the retention setting)."""
        return retention.purge_older_than(self, seconds)

    def collect_orphan_uploads(self, older_than: float) -> int:
        """Remove uploads older than ``older_than`` seconds that belong to no checkpoint row."""
        return retention.collect_orphan_uploads(self, older_than)

    def health(self, min_free_bytes: int = health.MIN_FREE_BYTES) -> dict[str, Any]:
        """Whether the store can be read and written (a real write) and how much disk is free, for
        ``/healthz`` (see :func:`ticketsolver.jobs.store.health.probe`)."""
        return health.probe(self, min_free_bytes)

    def counts(self) -> dict[str, Any]:
        """Jobs and items by state, and subset-sum problems solved by finished items."""

        def read(session: Session) -> tuple[dict[str, int], dict[str, int], int]:
            jobs = dict(session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all())
            items = dict(session.execute(select(ItemRow.state, func.count()).group_by(ItemRow.state)).all())
            problems = session.scalar(select(func.coalesce(func.sum(ItemRow.problems_solved), 0)))
            return jobs, items, int(problems or 0)

        jobs, items, problems = self._read(read)
        return {
            "jobs": {state: int(jobs.get(state, 0)) for state in JOB_STATES},
            "items": {state: int(items.get(state, 0)) for state in JOB_STATES},
            "problems_solved": problems,
        }

    def ping(self) -> bool:
        return self._read(lambda s: s.scalar(select(1))) == 1
