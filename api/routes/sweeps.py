"""Sweeps: one checkpoint built and verified at every setting of a grid (:func:`ticketsolver.sweep.run_sweep`),
as a job with a ``sweep`` section; its status, its results table (CSV) and its figures (PNG, SVG).

A sweep is a job like any other (``GET /jobs/{id}``, ``DELETE /jobs/{id}`` work on it); these routes add its
view in the sweep's terms (rows done of the settings, the settings skipped and why) and its files.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from ticketsolver.jobs import ItemView, JobSpec, JobStore, JobView

from ..deps import Authorized, RunnerDep, SettingsDep, StoreDep
from ..forms import multipart_body, params_json, read_job_form
from ..schemas import JobCreated, SweepFile, SweepSkipped, SweepView
from .jobs import JobId

log = logging.getLogger("ticketsolver.api")
router = APIRouter(tags=["sweeps"], dependencies=[Authorized])

#: a figure's file name as run_sweep writes it (checked against the item's report before any path is made)
FIGURE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\.(png|svg)$"
MEDIA_TYPES = {"png": "image/png", "svg": "image/svg+xml"}
#: the table run_sweep keeps in its folder
SWEEP_RESULTS = "results.csv"

#: the multipart body of POST /sweeps, as the route reads it (see ticketsolver_api.forms)
SWEEP_BODY: dict[str, Any] = multipart_body(
    {"type": "string", "format": "binary", "description": "one checkpoint (.pt/.safetensors/.pt2) as a file part"},
    "SweepSection",
    "the sweep as JSON: the SweepSection's fields (n, resample, source_density, density_policy, depth, seed, "
    "input_domain, solver, verify, data) and the job's own arch and time_limit_s, e.g. "
    '{"n": "8:12:2", "depth": ["2L", "L+1"], "data": "wine"} (n as a list or as run_sweep\'s text: "10:40:2", '
    '"10,20,30")',
    '{"n": [20]}',
)


def _spec(params: str | None) -> JobSpec:
    """The job spec of ``params``; bad JSON is 422 (:func:`params_json`), bad values ConfigError (422) naming the
    field."""
    return JobSpec.of_sweep(params_json(params))


@router.post("/sweeps", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated, openapi_extra=SWEEP_BODY)
async def submit_sweep(request: Request, runner: RunnerDep, settings: SettingsDep, response: Response) -> JobCreated:
    """Accept a sweep: the checkpoint is built and verified at every setting of the grid, one row of
    ``results.csv`` per ticket, then figures are drawn. Follow it at ``GET /sweeps/{id}``."""
    form = await read_job_form(request, settings.max_batch_items)
    try:
        spec = _spec(form.params)
        job_id = await run_in_threadpool(runner.submit, form.checkpoints, spec)  # loads the checkpoint: off the loop
    finally:
        form.close()
    assert spec.sweep is not None
    log.info("accepted sweep %s: n = %s, depth %s", job_id, list(spec.sweep.n), list(spec.sweep.depth))
    response.headers["Location"] = f"/sweeps/{job_id}"
    return JobCreated(job_id=job_id)


def sweep_job(store: JobStore, job_id: str) -> tuple[JobView, ItemView]:
    """The sweep job and its one item; 404 for no job and for a job that is not a sweep."""
    job = store.get_job(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    if not job.params.get("sweep") or len(job.items) != 1:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} is no sweep: see /jobs/{job_id}")
    return job, job.items[0]


def _sweep_report(store: JobStore, job_id: str) -> dict[str, Any] | None:
    report = (store.item_reports(job_id) or [None])[0]
    return None if report is None else report.get("sweep")


def _figures(report: dict[str, Any] | None) -> dict[str, str]:
    """{file name: path in the item's folder} of the figures the finished sweep drew."""
    paths = (report or {}).get("figures") or []
    return {path.rsplit("/", 1)[-1]: path for path in paths if re.fullmatch(FIGURE_NAME, path.rsplit("/", 1)[-1])}


@router.get("/sweeps/{job_id}", response_model=SweepView)
def get_sweep(store: StoreDep, job_id: JobId) -> SweepView:
    """State, rows done of the settings to build, the settings skipped (and why), and the links to the
    results table (as soon as a row is done) and the figures (once the sweep has finished)."""
    from ticketsolver.sweep import read_rows

    job, item = sweep_job(store, job_id)
    spec = JobSpec.from_dict(job.params)
    assert spec.sweep is not None
    settings, skipped = spec.sweep.sweep_spec().settings()
    report = _sweep_report(store, job_id)
    table = store.sweep_dir(item.id) / SWEEP_RESULTS
    done = len(read_rows(table)) if job.purged_at is None else int((report or {}).get("rows", 0))
    return SweepView(
        job_id=job.id,
        state=job.state,
        progress=job.progress,
        message=item.message,
        error=job.error,
        checkpoint=item.checkpoint,
        rows_done=done,
        rows_total=len(settings),
        skipped=[SweepSkipped(setting=dict(setting), reason=str(reason)) for setting, reason in skipped],
        params=spec.sweep.to_dict(),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        purged_at=job.purged_at,
        job_url=f"/jobs/{job_id}",
        results_url=f"/sweeps/{job_id}/{SWEEP_RESULTS}" if job.purged_at is None and done else None,
        figures=[
            SweepFile(name=name, url=f"/sweeps/{job_id}/figures/{name}")
            for name in (_figures(report) if job.purged_at is None else {})
        ],
    )


def _gone_if_purged(job: JobView) -> None:
    if job.purged_at is not None:
        raise HTTPException(status.HTTP_410_GONE, f"job {job.id} was purged: its results are gone")


@router.get("/sweeps/{job_id}/results.csv", response_class=Response)
def sweep_results(store: StoreDep, job_id: JobId) -> Response:
    """The results table, one row per ticket built (the columns of ``ticketsolver.sweep.RESULT_COLUMNS``). While
    the sweep runs it holds the rows done so far; 409 until the first one."""
    job, item = sweep_job(store, job_id)
    _gone_if_purged(job)
    try:  # read at once: the worker replaces the file (atomically) after each row
        content = (store.sweep_dir(item.id) / SWEEP_RESULTS).read_bytes()
    except FileNotFoundError:
        raise HTTPException(status.HTTP_409_CONFLICT, f"sweep {job_id} has no finished row yet ({job.state})") from None
    return Response(
        content,
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="sweep-{job_id}.csv"'},
    )


@router.get("/sweeps/{job_id}/figures/{name}", response_class=FileResponse)
def sweep_figure(
    store: StoreDep,
    job_id: JobId,
    name: Annotated[str, PathParam(pattern=FIGURE_NAME, description="a figure's file name, as GET /sweeps/{id} lists")],
) -> FileResponse:
    """A figure the finished sweep drew (PNG or SVG), by the name ``GET /sweeps/{id}`` lists; 409 while the
    sweep has not finished, 404 for a name it did not draw."""
    job, item = sweep_job(store, job_id)
    _gone_if_purged(job)
    report = _sweep_report(store, job_id)
    if report is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"sweep {job_id} draws its figures when it finishes ({job.state})"
        )
    figures = _figures(report)
    if name not in figures:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"sweep {job_id} drew no figure {name!r}; it drew {', '.join(figures) or 'none'}"
        )
    folder = store.sweep_dir(item.id).resolve()
    path = (folder / figures[name]).resolve()
    if not path.is_relative_to(folder) or not path.is_file():  # a report names its own files only
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"sweep {job_id}: figure {name!r} is missing")
    return FileResponse(path, media_type=MEDIA_TYPES[name.rsplit(".", 1)[-1]], filename=f"sweep-{job_id}-{name}")
