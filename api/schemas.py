"""The service's own response shapes: only what the library does not already describe.

The request model is :class:`ticketsolver.jobs.JobSpec` (the ``params`` field of ``POST /approximate``);
jobs, items, layers and checkpoints are answered as the store's views (``JobSummary`` in lists, ``JobView``
for one job, with the item, layer and checkpoint views it holds); a report's sizes are the library's
:class:`~ticketsolver.ticket.artifact.TicketSizes` turned into a model field by field. What is left here
wraps those in lists and envelopes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_type_hints

from pydantic import BaseModel, ConfigDict, create_model

from ticketsolver.jobs import JobState, JobSummary
from ticketsolver.ticket.artifact import TicketSizes

__all__ = [
    "HealthPublic",
    "ItemReport",
    "JobCreated",
    "JobReport",
    "JobsPublic",
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


class JobReport(BaseModel):
    job: JobSummary
    items: list[ItemReport | None]


class HealthPublic(BaseModel):
    """``GET /healthz``: ``ok``, or ``degraded`` (HTTP 503) with the reasons in ``problems``."""

    status: str
    problems: list[str]
    version: str
    executor: str
    busy_workers: int
