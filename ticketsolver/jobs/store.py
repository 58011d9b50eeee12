"""The job store: what the service has accepted, how far it got, and where its files are.

Place in the pipeline: the last stage (jobs/service). Every accepted job is a row in ``jobs``, its
checkpoints rows in ``checkpoints`` (the upload itself a file named by a server-generated id), and every
(checkpoint, n) pair an ``items`` row with its state, progress and report; ``layers`` holds per-layer
progress. SQLite in WAL mode by default (the API process and its worker processes write concurrently);
any SQLAlchemy URL works.

Files live under ``data_dir`` and are named only by ids the server generated (32 hex digits):
``uploads/<checkpoint id>``, ``tickets/<item id>.ticket``, ``resume/<item id>/`` (finished layers of an
interrupted build). No part of a request ever becomes a path.

Concurrency contract: an item is *claimed* by the dispatcher (state running, ``attempt`` + 1); every
later write by the worker names that attempt and the ``running`` state, so a cancelled item or one
re-queued after a restart silently ignores a stale worker (the update matches no row).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text, create_engine, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

__all__ = [
    "ACTIVE_STATES",
    "JOB_STATES",
    "TERMINAL_STATES",
    "CheckpointView",
    "ItemTask",
    "ItemView",
    "JobStore",
    "JobView",
    "LayerView",
    "new_id",
    "remove_files",
]

#: a job's (and an item's) life: queued -> running -> succeeded | failed | cancelled
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE_STATES = ("queued", "running")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
_ID = re.compile(r"[0-9a-f]{32}")
_TICKET = re.compile(r"[0-9a-f]{32}-\d+\.ticket")


def new_id() -> str:
    """A fresh server-generated id (32 lowercase hex digits): the only thing file names are made of."""
    return uuid.uuid4().hex


def _checked_id(value: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise ValueError(f"not a server-generated id: {value!r}")
    return value


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # the validated parameters (JobSpec.to_dict())
    executor: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[float] = mapped_column(Float, index=True)  # unix seconds
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # also the upload's file name
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(255))  # the client's file name: display only, never a path
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    arch: Mapped[str] = mapped_column(String(32))
    target_params: Mapped[int] = mapped_column(Integer)


class ItemRow(Base):
    __tablename__ = "items"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # k in /jobs/{id}/tickets/{k}
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id"))
    n: Mapped[int] = mapped_column(Integer)
    weight: Mapped[float] = mapped_column(Float)  # expected work (target params x n), weights job progress
    state: Mapped[str] = mapped_column(String(16), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(200), default="")
    error: Mapped[str | None] = mapped_column(Text, default=None)
    ticket_file: Mapped[str | None] = mapped_column(String(64), default=None)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    problems_solved: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[float | None] = mapped_column(Float, default=None)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)


class LayerRow(Base):
    __tablename__ = "layers"

    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), primary_key=True)
    pair: Mapped[int] = mapped_column(Integer, primary_key=True)
    fraction: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(200), default="")
    updated_at: Mapped[float] = mapped_column(Float)


# ---------------------------------------------------------------------------------------------------
# Read-only views handed to callers (the API turns them into its schemas)
# ---------------------------------------------------------------------------------------------------


def _utc(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


def _eta(progress: float, started: float | None, state: str, now: float) -> float | None:
    """Seconds left by linear extrapolation of the elapsed time; None until there is progress."""
    if state != "running" or started is None or progress <= 0.0:
        return None
    return max(0.0, (now - started) * (1.0 - progress) / progress)


@dataclass(frozen=True)
class LayerView:
    pair: int
    fraction: float
    message: str


@dataclass(frozen=True)
class CheckpointView:
    position: int
    name: str
    size: int
    sha256: str
    arch: str
    target_params: int


@dataclass(frozen=True)
class ItemView:
    id: str
    position: int
    checkpoint: str  # display name
    checkpoint_position: int
    n: int
    state: str
    progress: float
    message: str
    error: str | None
    eta_seconds: float | None
    started_at: datetime | None
    finished_at: datetime | None
    has_ticket: bool
    problems_solved: int
    layers: list[LayerView] = field(default_factory=list)


@dataclass(frozen=True)
class JobView:
    id: str
    state: str
    progress: float
    eta_seconds: float | None
    error: str | None
    executor: str
    params: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    checkpoints: list[CheckpointView]
    items: list[ItemView]


@dataclass(frozen=True)
class ItemTask:
    """What a worker needs to run one item (plain data: it crosses process boundaries)."""

    item_id: str
    attempt: int
    job_id: str
    n: int
    spec: dict[str, Any]
    checkpoint_id: str
    checkpoint_name: str


# ---------------------------------------------------------------------------------------------------
# The repository
# ---------------------------------------------------------------------------------------------------


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (status requests) proceed while a worker writes; the busy timeout makes
    # concurrent writers from several processes wait instead of failing; FULL makes commits durable.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class JobStore:
    """Jobs, items and per-layer progress in a SQL database; their files under ``data_dir``.

    Args:
        data_dir: where uploads, tickets and resume files live (created if missing).
        url: a SQLAlchemy URL; default ``sqlite:///<data_dir>/jobs.sqlite``.

    Example:
        >>> import tempfile
        >>> store = JobStore(tempfile.mkdtemp())
        >>> store.list_jobs()
        ([], 0)
    """

    def __init__(self, data_dir: str | Path, url: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        for sub in ("uploads", "tickets", "resume"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self.url = url or f"sqlite:///{self.data_dir / 'jobs.sqlite'}"
        self.engine: Engine = create_engine(self.url, connect_args=self._connect_args(self.url))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    @staticmethod
    def _connect_args(url: str) -> dict[str, Any]:
        return {"timeout": 30, "check_same_thread": False} if url.startswith("sqlite") else {}

    def close(self) -> None:
        self.engine.dispose()

    # -- paths (server-generated ids only) -------------------------------------------------------------

    def upload_path(self, checkpoint_id: str) -> Path:
        return self.data_dir / "uploads" / _checked_id(checkpoint_id)

    def ticket_path(self, item_id: str, attempt: int) -> Path:
        """Where attempt ``attempt`` of an item writes its ticket (one file per attempt, so that a stale
        worker never touches the file of the attempt that won)."""
        return self.data_dir / "tickets" / f"{_checked_id(item_id)}-{int(attempt)}.ticket"

    def ticket_of(self, item_id: str) -> Path | None:
        """The ticket file of a finished item, or None."""
        with self._session() as session:
            name = session.scalar(select(ItemRow.ticket_file).where(ItemRow.id == item_id))
        if name is None or not _TICKET.fullmatch(name):
            return None
        path = self.data_dir / "tickets" / name
        return path if path.is_file() else None

    def resume_dir(self, item_id: str) -> Path:
        return self.data_dir / "resume" / _checked_id(item_id)

    # -- creating and reading jobs ---------------------------------------------------------------------

    def create_job(
        self, spec: dict[str, Any], checkpoints: Sequence[dict[str, Any]], ns: Sequence[int], executor: str
    ) -> str:
        """Insert a job with its checkpoints (dicts: id, name, size, sha256, arch, target_params) and
        one item per (checkpoint, n), in one transaction. Returns the job id."""
        job_id, now = new_id(), time.time()
        with self._session.begin() as session:
            session.add(JobRow(id=job_id, state="queued", spec=spec, executor=executor, created_at=now))
            session.flush()
            position = 0
            for index, ckpt in enumerate(checkpoints):
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
                            state="queued",
                        )
                    )
                    position += 1
        return job_id

    def get_job(self, job_id: str) -> JobView | None:
        with self._session() as session:
            job = session.get(JobRow, job_id)
            return None if job is None else self._views(session, [job])[0]

    def list_jobs(self, offset: int = 0, limit: int = 100, state: str | None = None) -> tuple[list[JobView], int]:
        """Newest first; returns (views, total count matching)."""
        with self._session() as session:
            query = select(JobRow)
            count_query = select(func.count()).select_from(JobRow)
            if state is not None:
                query = query.where(JobRow.state == state)
                count_query = count_query.where(JobRow.state == state)
            jobs = session.scalars(query.order_by(JobRow.created_at.desc()).offset(offset).limit(limit)).all()
            return self._views(session, list(jobs)), int(session.scalar(count_query) or 0)

    def item_files(self, job_id: str, position: int) -> tuple[ItemView, Path | None] | None:
        """The item ``position`` of a job and its ticket path (None while it has no ticket)."""
        job = self.get_job(job_id)
        if job is None or not 0 <= position < len(job.items):
            return None
        item = job.items[position]
        return item, self.ticket_of(item.id) if item.has_ticket else None

    def item_reports(self, job_id: str) -> list[dict[str, Any] | None] | None:
        """Per item (in position order) the stored report, or None when the job does not exist."""
        with self._session() as session:
            if session.get(JobRow, job_id) is None:
                return None
            rows = session.scalars(select(ItemRow).where(ItemRow.job_id == job_id).order_by(ItemRow.position))
            return [row.report for row in rows]

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
            by_item.setdefault(layer.item_id, []).append(LayerView(layer.pair, layer.fraction, layer.message))
        ckpt_by_id = {c.id: c for c in ckpts}
        now = time.time()
        views = []
        for job in jobs:
            job_items = [i for i in items if i.job_id == job.id]
            item_views = [
                ItemView(
                    id=i.id,
                    position=i.position,
                    checkpoint=ckpt_by_id[i.checkpoint_id].name,
                    checkpoint_position=ckpt_by_id[i.checkpoint_id].position,
                    n=i.n,
                    state=i.state,
                    progress=i.progress,
                    message=i.message,
                    error=i.error,
                    eta_seconds=_eta(i.progress, i.started_at, i.state, now),
                    started_at=_utc(i.started_at),
                    finished_at=_utc(i.finished_at),
                    has_ticket=i.ticket_file is not None,
                    problems_solved=i.problems_solved,
                    layers=by_item.get(i.id, []),
                )
                for i in job_items
            ]
            total = sum(i.weight for i in job_items) or 1.0
            progress = 1.0 if job.state == "succeeded" else sum(i.weight * i.progress for i in job_items) / total
            views.append(
                JobView(
                    id=job.id,
                    state=job.state,
                    progress=min(1.0, progress),
                    eta_seconds=_eta(progress, job.started_at, job.state, now),
                    error=job.error,
                    executor=job.executor,
                    params=dict(job.spec),
                    created_at=_utc(job.created_at),  # type: ignore[arg-type]
                    started_at=_utc(job.started_at),
                    finished_at=_utc(job.finished_at),
                    checkpoints=[
                        CheckpointView(c.position, c.name, c.size, c.sha256, c.arch, c.target_params)
                        for c in ckpts
                        if c.job_id == job.id
                    ],
                    items=item_views,
                )
            )
        return views

    # -- state changes ---------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> JobView | None:
        """Cancel a queued or running job and its unfinished items; finished jobs are left as they are."""
        now = time.time()
        with self._session.begin() as session:
            job = session.get(JobRow, job_id)
            if job is None:
                return None
            if job.state in ACTIVE_STATES:
                job.state, job.finished_at = "cancelled", now
                session.execute(
                    update(ItemRow)
                    .where(ItemRow.job_id == job_id, ItemRow.state.in_(ACTIVE_STATES))
                    .values(state="cancelled", finished_at=now, message="cancelled")
                )
        return self.get_job(job_id)

    def requeue_interrupted(self) -> int:
        """After a restart: items left running go back to the queue (a new attempt fences off any stale
        worker); their resume directories keep the layers already finished. Returns how many."""
        with self._session.begin() as session:
            result = session.execute(
                update(ItemRow)
                .where(ItemRow.state == "running")
                .values(state="queued", attempt=ItemRow.attempt + 1, message="re-queued after a restart")
            )
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def claim_next_item(self) -> ItemTask | None:
        """Mark the oldest queued item of an active job running (new attempt) and return it."""
        now = time.time()
        with self._session.begin() as session:
            row = session.execute(
                select(ItemRow, JobRow, CheckpointRow)
                .join(JobRow, ItemRow.job_id == JobRow.id)
                .join(CheckpointRow, ItemRow.checkpoint_id == CheckpointRow.id)
                .where(ItemRow.state == "queued", JobRow.state.in_(ACTIVE_STATES))
                .order_by(JobRow.created_at, ItemRow.position)
                .limit(1)
            ).first()
            if row is None:
                return None
            item, job, ckpt = row
            attempt = item.attempt + 1
            claimed = session.execute(
                update(ItemRow)
                .where(ItemRow.id == item.id, ItemRow.state == "queued", ItemRow.attempt == item.attempt)
                .values(state="running", attempt=attempt, started_at=now, message="starting", error=None)
            )
            if not claimed.rowcount:  # type: ignore[attr-defined]
                return None
            if job.state == "queued":
                job.state, job.started_at = "running", now
            return ItemTask(item.id, attempt, job.id, item.n, dict(job.spec), ckpt.id, ckpt.name)

    def _fenced(self, item_id: str, attempt: int) -> Any:
        return update(ItemRow).where(ItemRow.id == item_id, ItemRow.attempt == attempt, ItemRow.state == "running")

    def report_progress(
        self, item_id: str, attempt: int, progress: float, message: str, layer: tuple[int, float] | None = None
    ) -> bool:
        """Record an item's progress (and one layer's); False when the item is no longer this worker's
        (cancelled, or re-queued after a restart): the worker must stop."""
        now = time.time()
        with self._session.begin() as session:
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

    def init_layers(self, item_id: str, attempt: int, pairs: int) -> bool:
        """Create (or reset) the per-layer rows of an item at the start of an attempt."""
        now = time.time()
        with self._session.begin() as session:
            if not session.execute(self._fenced(item_id, attempt).values(message="solving")).rowcount:  # type: ignore[attr-defined]
                return False
            for pair in range(pairs):
                row = session.get(LayerRow, (item_id, pair))
                if row is None:
                    session.add(LayerRow(item_id=item_id, pair=pair, fraction=0.0, message="queued", updated_at=now))
            return True

    def finish_item(self, item_id: str, attempt: int, report: dict[str, Any], problems_solved: int) -> bool:
        """The item succeeded: its ticket is at ``ticket_path(item_id, attempt)``."""
        with self._session.begin() as session:
            result = session.execute(
                self._fenced(item_id, attempt).values(
                    state="succeeded",
                    progress=1.0,
                    message="done",
                    report=report,
                    problems_solved=problems_solved,
                    ticket_file=self.ticket_path(item_id, attempt).name,
                    finished_at=time.time(),
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def fail_item(self, item_id: str, attempt: int, error: str) -> bool:
        with self._session.begin() as session:
            result = session.execute(
                self._fenced(item_id, attempt).values(
                    state="failed", error=error[:4000], message="failed", finished_at=time.time()
                )
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    def finalize_jobs(self) -> list[str]:
        """Close active jobs whose items are all finished: failed if any item failed (the error names
        each failed item), else succeeded. Returns the ids closed."""
        closed = []
        now = time.time()
        with self._session.begin() as session:
            active = session.scalars(select(JobRow).where(JobRow.state.in_(ACTIVE_STATES))).all()
            for job in active:
                items = session.scalars(
                    select(ItemRow).where(ItemRow.job_id == job.id).order_by(ItemRow.position)
                ).all()
                if any(i.state not in TERMINAL_STATES for i in items):
                    continue
                failed = [i for i in items if i.state == "failed"]
                if failed:
                    names = {
                        c.id: c.name
                        for c in session.scalars(select(CheckpointRow).where(CheckpointRow.job_id == job.id))
                    }
                    job.state = "failed"
                    job.error = "; ".join(
                        f"item {i.position} ({names.get(i.checkpoint_id, '?')}, n={i.n}): {i.error}" for i in failed
                    )[:4000]
                else:
                    job.state = "succeeded"
                job.finished_at = now
                closed.append(job.id)
        return closed

    # -- numbers for /metrics --------------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        """Jobs and items by state, and subset-sum problems solved by finished items."""
        with self._session() as session:
            jobs = dict(session.execute(select(JobRow.state, func.count()).group_by(JobRow.state)).all())
            items = dict(session.execute(select(ItemRow.state, func.count()).group_by(ItemRow.state)).all())
            problems = session.scalar(select(func.coalesce(func.sum(ItemRow.problems_solved), 0)))
        return {
            "jobs": {state: int(jobs.get(state, 0)) for state in JOB_STATES},
            "items": {state: int(items.get(state, 0)) for state in JOB_STATES},
            "problems_solved": int(problems or 0),
        }

    def ping(self) -> bool:
        with self._session() as session:
            return session.scalar(select(1)) == 1


def remove_files(paths: Iterable[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)
