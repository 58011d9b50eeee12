"""The service's own response shapes: only what the library does not already describe.

The request model is :class:`ticketsolver.jobs.JobSpec` (the ``params`` field of ``POST /approximate``);
jobs, items, layers and checkpoints are answered as the store's views (``JobSummary`` in lists, ``JobView``
for one job, with the item, layer and checkpoint views it holds); a report's sizes are the library's
:class:`~ticketsolver.ticket.artifact.TicketSizes` turned into a model field by field. What is left here
wraps those in lists and envelopes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model

from ticketsolver.jobs import JobState, JobSummary
from ticketsolver.ticket.artifact import TicketSizes

__all__ = [
    "HealthPublic",
    "ItemReport",
    "JobCreated",
    "JobReport",
    "JobsPublic",
    "SweepFile",
    "SweepItemReport",
    "SweepSkipped",
    "SweepView",
    "TicketPublic",
    "TicketReportPublic",
    "TicketSizesPublic",
    "TicketsPublic",
]


class JobCreated(BaseModel):
    job_id: str


class JobsPublic(BaseModel):
    data: Sequence[JobSummary]
    count: int


class TicketPublic(BaseModel):
    k: int
    checkpoint: str
    n: int | None  # null for an item of a learned-mask job
    state: JobState
    url: str | None


class TicketsPublic(BaseModel):
    data: list[TicketPublic]
    count: int


#: ``Ticket.sizes()`` as a model: the fields and their types are read from the library's TypedDict
TicketSizesPublic = create_model(  # type: ignore[call-overload]
    "TicketSizesPublic",
    __doc__=TicketSizes.__doc__,
    **{name: (kind, ...) for name, kind in get_type_hints(TicketSizes).items()},
)


class TicketReportPublic(BaseModel):
    """The ticket part of an item's report (``ticketsolver inspect --json``): sizes, per-layer facts, solver."""

    model_config = ConfigDict(extra="allow")

    sizes: TicketSizesPublic  # type: ignore[valid-type]


class ItemReport(BaseModel):
    """One finished item: the ticket's summary and its verification against the target; a learned-mask item
    has its ``task`` report (``TaskReport.to_dict()``: accuracy and loss on the data's test split) instead,
    no verification, and ``verification_note`` saying why."""

    model_config = ConfigDict(extra="allow")

    item: dict[str, Any]
    ticket: TicketReportPublic
    kept_values_sha256: str
    verification: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    verification_note: str | None = None


class SweepItemReport(BaseModel):
    """The finished item of a sweep job: its results are files (``GET /sweeps/{id}``), not a ticket."""

    model_config = ConfigDict(extra="allow")

    item: dict[str, Any]  # checkpoint, data
    #: rows (tickets built), reused (rows an earlier attempt built), results (the table's file in the sweep's
    #: folder), figures (their files), skipped [{setting, reason}]
    sweep: dict[str, Any]


class JobReport(BaseModel):
    job: JobSummary
    items: list[ItemReport | SweepItemReport | None]


class SweepSkipped(BaseModel):
    """A setting of the grid that is not built, and why (e.g. depth L+1 with resample > 0)."""

    setting: dict[str, Any]
    reason: str


class SweepFile(BaseModel):
    name: str
    url: str


class SweepView(BaseModel):
    """``GET /sweeps/{id}``: a sweep job in the sweep's terms, with the links to its results."""

    job_id: str
    state: JobState
    progress: float = Field(ge=0, le=1)
    message: str  # what it is doing, e.g. "3/8 rows done; building 2L, pure, n = 30"
    error: str | None
    checkpoint: str
    rows_done: int  # rows of results.csv so far
    rows_total: int  # settings of the grid to build (the skipped ones not counted)
    skipped: list[SweepSkipped]
    params: dict[str, Any]  # the job's sweep section
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    purged_at: datetime | None
    job_url: str  # the same job in the jobs' terms
    results_url: str | None  # once a row is done
    figures: list[SweepFile]  # once the sweep has finished


class HealthPublic(BaseModel):
    """``GET /healthz``: ``ok``, or ``degraded`` (HTTP 503) with the reasons in ``problems``."""

    status: str
    problems: list[str]
    version: str
    executor: str
    busy_workers: int
