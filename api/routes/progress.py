"""The jobs table of the web view in one request: each job's state and progress with its layer, item and
problem counts (the list of ``GET /jobs`` has no items; asking each job would be one request per row)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from ticketsolver.jobs import JobState, JobSummary, JobView

from ..deps import Authorized, StoreDep
from .jobs import MAX_OFFSET

router = APIRouter(tags=["jobs"], dependencies=[Authorized])


class JobProgress(JobSummary):
    """A job as the jobs table shows it."""

    items_total: int
    items_done: int  # items that finished (succeeded, failed or cancelled)
    #: target layers of its items; an item not started yet counts the layers of a started item of its checkpoint
    layers_total: int
    layers_done: int
    problems_solved: int  # subset-sum problems of its finished items
    message: str  # what its first running item is doing, e.g. "layer 1: round 0"; "" when none runs


class JobsProgressPublic(BaseModel):
    data: list[JobProgress]
    count: int


def job_progress(job: JobView) -> JobProgress:
    """Counts of one job's items and layers, from its view alone."""
    layers_of: dict[int, int] = {}  # checkpoint position -> its target layers, once an item has started
    for item in job.items:
        layers_of[item.checkpoint_position] = max(layers_of.get(item.checkpoint_position, 0), len(item.layers))
    finished = [item for item in job.items if item.state not in (JobState.QUEUED, JobState.RUNNING)]
    running = [item for item in job.items if item.state == JobState.RUNNING]
    return JobProgress(
        **{name: getattr(job, name) for name in JobSummary.model_fields},
        items_total=len(job.items),
        items_done=len(finished),
        layers_total=sum(layers_of[item.checkpoint_position] for item in job.items),
        layers_done=sum(1 for item in job.items for layer in item.layers if layer.fraction >= 1.0),
        problems_solved=sum(item.problems_solved for item in job.items),
        message=running[0].message if running else "",
    )


@router.get("/jobs/progress", response_model=JobsProgressPublic)
def list_progress(
    store: StoreDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    state: JobState | None = None,
) -> JobsProgressPublic:
    """Jobs, newest first, with the counts the jobs table shows (layers done / total, items, problems)."""
    jobs, count = store.list_jobs(offset, limit, state)
    return JobsProgressPublic(data=[job_progress(job) for job in jobs], count=count)
