"""Read-only views of jobs, items, layers and checkpoints: what the store hands to its callers.

Place in the pipeline: jobs/store. The views are frozen pydantic models (``from_attributes``), so the
service returns them directly as its response models: :class:`JobSummary` in lists, :class:`JobView` for
one job. :class:`ItemTask` is what a worker needs to run one item (plain data: it crosses processes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from ticketsolver.jobs.spec import JobState

__all__ = ["CheckpointView", "ItemTask", "ItemView", "JobSummary", "JobView", "LayerView"]

Fraction = Annotated[float, Field(ge=0, le=1)]


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, from_attributes=True)


class LayerView(_View):
    """Progress of one target layer (pair) of an item."""

    pair: int
    fraction: Fraction
    message: str


class CheckpointView(_View):
    """One uploaded checkpoint; ``name`` is the client's file name, shortened for display."""

    position: int
    name: str
    size: int
    sha256: str
    arch: str
    target_params: int


class ItemView(_View):
    """One (checkpoint, n) of a job: one ticket and one report."""

    #: server-generated id (names its files); never serialised: clients address an item by position
    id: str = Field(exclude=True)
    position: int
    checkpoint: str  # display name of its checkpoint
    checkpoint_position: int
    n: int | None  # None: a learned-mask item (it has no n) or a sweep item (its n values are in the spec)
    state: JobState
    progress: Fraction
    message: str
    error: str | None
    eta_seconds: float | None
    started_at: datetime | None
    finished_at: datetime | None
    has_ticket: bool
    problems_solved: int
    #: estimated peak memory of the worker building it (see ticketsolver.jobs.memory)
    memory_bytes: int
    layers: list[LayerView] = []


class JobSummary(_View):
    """A job as listed: state, progress and times."""

    id: str
    state: JobState
    progress: Fraction
    eta_seconds: float | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    #: when its uploads, tickets and resume files were removed (the rows stay); None while it has them
    purged_at: datetime | None = None


class JobView(JobSummary):
    """A job with its parameters, checkpoints and items."""

    executor: str
    params: dict[str, Any]  # JobSpec.to_dict()
    checkpoints: list[CheckpointView]
    items: list[ItemView]


@dataclass(frozen=True)
class ItemTask:
    """What a worker needs to run one item (plain data: it crosses process boundaries)."""

    item_id: str
    attempt: int
    job_id: str
    n: int
    spec: dict[str, Any]  # JobSpec.to_dict(): read it back with JobSpec.from_dict
    checkpoint_id: str
    checkpoint_name: str
    memory_bytes: int = 0  # estimated peak RSS of the worker (ticketsolver.jobs.memory)


def utc(seconds: float | None) -> datetime | None:
    """A stored unix time as an aware UTC datetime."""
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc)


def eta(progress: float, started: float | None, state: str, now: float) -> float | None:
    """Seconds left by linear extrapolation of the elapsed time; None until there is progress."""
    if state != JobState.RUNNING or started is None or progress <= 0.0:
        return None
    return max(0.0, (now - started) * (1.0 - progress) / progress)
