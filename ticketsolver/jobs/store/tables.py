"""The tables of the job store (SQLAlchemy ORM) and the server-generated ids that name rows and files.

Place in the pipeline: jobs/store. The schema is versioned by the Alembic migrations in
``ticketsolver/jobs/store/migrations`` (applied when a store opens); a change here needs a new revision there.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ticketsolver.errors import JobError
from ticketsolver.jobs.spec import JobState

__all__ = [
    "ACTIVE_STATES",
    "DATA_FOLDERS",
    "JOB_STATES",
    "TERMINAL_STATES",
    "UPLOAD_SUFFIXES",
    "Base",
    "CheckpointRow",
    "HealthRow",
    "ItemRow",
    "JobRow",
    "LayerRow",
    "checked_id",
    "new_id",
]

#: a job's (and an item's) life: queued -> running -> succeeded | failed | cancelled
JOB_STATES: tuple[str, ...] = tuple(state.value for state in JobState)
ACTIVE_STATES: tuple[str, ...] = (JobState.QUEUED.value, JobState.RUNNING.value)
TERMINAL_STATES: tuple[str, ...] = (JobState.SUCCEEDED.value, JobState.FAILED.value, JobState.CANCELLED.value)
_ID = re.compile(r"[0-9a-f]{32}")
TICKET_NAME = re.compile(r"([0-9a-f]{32})-\d+\.ticket")
#: the folders of the data dir, their files named by server-generated ids only
DATA_FOLDERS = ("uploads", "tickets", "resume", "sweeps")
#: suffixes an upload may carry, chosen by the server from its content ("" while it is being received)
UPLOAD_SUFFIXES = ("", ".pt", ".safetensors", ".pt2")


def new_id() -> str:
    """A fresh server-generated id (32 lowercase hex digits): the only thing file names are made of."""
    return uuid.uuid4().hex


def checked_id(value: str) -> str:
    """``value`` if it is a server-generated id, else JobError (it never becomes part of a path)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise JobError(f"not a server-generated id: {str(value)[:40]!r}")
    return value


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
    purged_at: Mapped[float | None] = mapped_column(Float, default=None)  # its files removed (rows kept)


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
    #: estimated peak RSS of the worker building it, bytes (ticketsolver.jobs.memory); 0: not estimated
    memory_bytes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class LayerRow(Base):
    __tablename__ = "layers"

    item_id: Mapped[str] = mapped_column(ForeignKey("items.id"), primary_key=True)
    pair: Mapped[int] = mapped_column(Integer, primary_key=True)
    fraction: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(200), default="")
    updated_at: Mapped[float] = mapped_column(Float)


class HealthRow(Base):
    """One row rewritten by every health check: the write probe of :meth:`JobStore.health`."""

    __tablename__ = "store_health"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    probed_at: Mapped[float] = mapped_column(Float)
