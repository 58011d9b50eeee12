"""Jobs: submit checkpoints for approximation, follow them, download tickets and reports, cancel, purge."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from ticketsolver.jobs import JobSpec, JobState, JobView

from ..deps import Authorized, RunnerDep, SettingsDep, StoreDep
from ..forms import multipart_body, params_json, read_job_form
from ..schemas import ItemReport, JobCreated, JobReport, JobsPublic, SweepItemReport, TicketPublic, TicketsPublic

log = logging.getLogger("ticketsolver.api")
router = APIRouter(tags=["jobs"], dependencies=[Authorized])

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="the id POST /approximate returned")]
#: SQL offsets are signed 64-bit integers: beyond that is a client error, not an overflow in the store
MAX_OFFSET = 2**63 - 1

#: the multipart body of POST /approximate, as the route reads it (see ticketsolver_api.forms)
APPROXIMATE_BODY: dict[str, Any] = multipart_body(
    {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": "one or more checkpoints (.pt/.safetensors/.pt2), each a file part",
    },
    "JobSpec",
    'the job as JSON, e.g. {"n": [16, 20], "build": {"seed": 1}}',
    "{}",
)


def item_file_stem(job_id: str, k: int, n: int | None) -> str:
    """How item ``k``'s downloads are named: ``job-<id>-<k>-n<n>``, or ``job-<id>-<k>-learned`` for an item of
    a learned-mask job (it has no n)."""
    return f"job-{job_id}-{k}-" + ("learned" if n is None else f"n{n}")


def _job_or_404(store: StoreDep, job_id: str) -> JobView:
    job = store.get_job(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return job


def _spec(params: str | None) -> JobSpec:
    """The job spec of the ``params`` field; bad JSON is 422 (:func:`params_json`), bad values ConfigError (422)."""
    return JobSpec.from_dict(params_json(params))


@router.post(
    "/approximate", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated, openapi_extra=APPROXIMATE_BODY
)
async def approximate(request: Request, runner: RunnerDep, settings: SettingsDep, response: Response) -> JobCreated:
    """Accept a batch job: every checkpoint x every n gives one ticket and one report (with ``learn``: every
    checkpoint gives one learned-mask ticket, learned on the named bundled data)."""
    form = await read_job_form(request, settings.max_batch_items)
    try:
        spec = _spec(form.params)
        # loading checkpoints and writing the store block: off the event loop
        job_id = await run_in_threadpool(runner.submit, form.checkpoints, spec)
    finally:
        form.close()
    if spec.sweep is not None:
        log.info("accepted job %s: a sweep of n = %s (GET /sweeps/%s)", job_id, list(spec.sweep.n), job_id)
    elif spec.learn is None:
        log.info("accepted job %s: %d checkpoint(s) x n = %s", job_id, len(form.checkpoints), list(spec.n))
    else:
        what = f"{spec.learn.method} on {spec.learn.data}"
        log.info("accepted job %s: %d checkpoint(s), learning masks (%s)", job_id, len(form.checkpoints), what)
    response.headers["Location"] = f"/jobs/{job_id}"
    return JobCreated(job_id=job_id)


@router.get("/jobs", response_model=JobsPublic)
def list_jobs(
    store: StoreDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    state: JobState | None = None,
) -> JobsPublic:
    """Jobs, newest first."""
    jobs, count = store.list_jobs(offset, limit, state)
    return JobsPublic(data=jobs, count=count)


@router.get("/jobs/{job_id}", response_model=JobView)
def get_job(store: StoreDep, job_id: JobId) -> JobView:
    """State, progress (job, items, layers), ETA and error of a job."""
    return _job_or_404(store, job_id)


@router.get("/jobs/{job_id}/tickets", response_model=TicketsPublic)
def list_tickets(store: StoreDep, job_id: JobId) -> TicketsPublic:
    """One entry per (checkpoint, n); ``url`` is set once its ticket exists. An item of a learned-mask job has
    no n (null)."""
    job = _job_or_404(store, job_id)
    data = [
        TicketPublic(
            k=item.position,
            checkpoint=item.checkpoint,
            n=item.n,
            state=item.state,
            url=f"/jobs/{job_id}/tickets/{item.position}" if item.has_ticket else None,
        )
        for item in job.items
    ]
    return TicketsPublic(data=data, count=len(data))


@router.get("/jobs/{job_id}/tickets/{k}", response_class=FileResponse)
def download_ticket(store: StoreDep, job_id: JobId, k: Annotated[int, Path(ge=0, le=MAX_OFFSET)]) -> FileResponse:
    """The ticket file of item ``k`` (safetensors; load it with ``ticketsolver.Ticket.load``)."""
    found = store.item_files(job_id, k)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no item {k} in job {job_id}")
    item, path = found
    if path is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"item {k} has no ticket (state {item.state})")
    stem = item_file_stem(job_id, k, item.n)
    return FileResponse(path, media_type="application/octet-stream", filename=f"{stem}.ticket")


@router.get("/jobs/{job_id}/report", response_model=JobReport)
def get_report(store: StoreDep, job_id: JobId) -> JobReport:
    """Per item: ticket summary (sizes, per-layer errors) and verification report; null until done. A learned
    item has its task report (accuracy, loss) instead of a verification, and says why; a sweep's item lists its
    results (GET /sweeps/{id} has the links)."""
    job = _job_or_404(store, job_id)
    model = SweepItemReport if job.params.get("sweep") else ItemReport
    items = [None if r is None else model.model_validate(r) for r in store.item_reports(job_id) or []]
    return JobReport(job=job, items=items)


@router.delete("/jobs/{job_id}", response_model=JobView)
def cancel_job(
    runner: RunnerDep,
    store: StoreDep,
    job_id: JobId,
    purge: Annotated[
        bool, Query(description="also delete the job, its uploads, tickets and resume files (any state)")
    ] = False,
) -> JobView:
    """Cancel a queued or running job: the workers of its running items are stopped at once. With
    ``purge=true`` the job is cancelled if it still runs, then its uploads, tickets and resume files are
    removed (in any state); the job stays listed, with ``purged_at`` set and no tickets."""
    job = runner.cancel(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    if purge:
        removed = store.purge(job_id)
        log.info("purged job %s (%s file(s) removed)", job_id, removed)
        return _job_or_404(store, job_id)
    if job.state in (JobState.SUCCEEDED, JobState.FAILED):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already {job.state}")
    return job
