"""Jobs: submit checkpoints for approximation, follow them, download tickets and reports, cancel."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Response, UploadFile, status
from fastapi.responses import FileResponse
from pydantic import ValidationError

from ..deps import Authorized, RunnerDep, StoreDep
from ..schemas import (
    ItemReport,
    JobCreate,
    JobCreated,
    JobPublic,
    JobReport,
    JobsPublic,
    JobState,
    JobSummary,
    TicketsPublic,
)

router = APIRouter(tags=["jobs"], dependencies=[Authorized])

JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="the id POST /approximate returned")]
PARAMS_HELP = "JSON object: n (number or list), seed, solver, input_domain, resample, tolerance, arch, verification"


def _job_or_404(store: StoreDep, job_id: str) -> JobPublic:
    job = store.get_job(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return JobPublic.model_validate(job)


@router.post("/approximate", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated)
def approximate(
    runner: RunnerDep,
    response: Response,
    checkpoint: Annotated[list[UploadFile], File(description="one or more checkpoints (.pt/.safetensors/.pt2)")],
    params: Annotated[str, Form(description=PARAMS_HELP)] = "{}",
) -> JobCreated:
    """Accept a batch job: every checkpoint x every n gives one ticket and one report."""
    try:
        spec = JobCreate.model_validate_json(params).to_spec()
    except ValidationError as exc:
        detail = [{"loc": ["params", *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail) from None
    # ticketsolver errors (hostile or unreadable checkpoint, limits) become 422 in ticketsolver_api.main
    job_id = runner.submit([(upload.filename, upload.file) for upload in checkpoint], spec)
    response.headers["Location"] = f"/jobs/{job_id}"
    return JobCreated(job_id=job_id)


@router.get("/jobs", response_model=JobsPublic)
def list_jobs(
    store: StoreDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    state: JobState | None = None,
) -> JobsPublic:
    """Jobs, newest first."""
    jobs, count = store.list_jobs(offset, limit, state)
    return JobsPublic(data=[JobSummary.model_validate(job) for job in jobs], count=count)


@router.get("/jobs/{job_id}", response_model=JobPublic)
def get_job(store: StoreDep, job_id: JobId) -> JobPublic:
    """State, progress (job, items, layers), ETA and error of a job."""
    return _job_or_404(store, job_id)


@router.get("/jobs/{job_id}/tickets", response_model=TicketsPublic)
def list_tickets(store: StoreDep, job_id: JobId) -> TicketsPublic:
    """One entry per (checkpoint, n); ``url`` is set once its ticket exists."""
    job = _job_or_404(store, job_id)
    data = [
        {
            "k": i.position,
            "checkpoint": i.checkpoint,
            "n": i.n,
            "state": i.state,
            "url": f"/jobs/{job_id}/tickets/{i.position}" if i.has_ticket else None,
        }
        for i in job.items
    ]
    return TicketsPublic.model_validate({"data": data, "count": len(data)})


@router.get("/jobs/{job_id}/tickets/{k}", response_class=FileResponse)
def download_ticket(store: StoreDep, job_id: JobId, k: Annotated[int, Path(ge=0)]) -> FileResponse:
    """The ticket file of item ``k`` (safetensors; load it with ``ticketsolver.Ticket.load``)."""
    found = store.item_files(job_id, k)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no item {k} in job {job_id}")
    item, path = found
    if path is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"item {k} has no ticket (state {item.state})")
    return FileResponse(path, media_type="application/octet-stream", filename=f"job-{job_id}-{k}-n{item.n}.ticket")


@router.get("/jobs/{job_id}/report", response_model=JobReport)
def get_report(store: StoreDep, job_id: JobId) -> JobReport:
    """Per item: ticket summary (sizes, per-layer errors) and verification report; null until done."""
    job = _job_or_404(store, job_id)
    items = [None if r is None else ItemReport.model_validate(r) for r in store.item_reports(job_id) or []]
    return JobReport(job=JobSummary.model_validate(job.model_dump()), items=items)


@router.delete("/jobs/{job_id}", response_model=JobPublic)
def cancel_job(runner: RunnerDep, job_id: JobId) -> JobPublic:
    """Cancel a queued or running job (running items stop at their next solved chunk)."""
    job = runner.cancel(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    if job.state in ("succeeded", "failed"):
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} already {job.state}")
    return JobPublic.model_validate(job)
