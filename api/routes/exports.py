"""A finished item's downloads beyond its ticket: the pruned network exported on demand as ONNX or
safetensors (:func:`ticketsolver.ticket.export_ticket`), and its own JSON report."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask

from ticketsolver.jobs import ItemView, JobStore, JobView

from ..deps import Authorized, StoreDep
from ..schemas import ItemReport
from .jobs import MAX_OFFSET, JobId, item_file_stem

router = APIRouter(tags=["jobs"], dependencies=[Authorized])

Position = Annotated[int, PathParam(ge=0, le=MAX_OFFSET, description="the item's position in the job")]
#: one export at a time: torch's ONNX exporter keeps global state, and each export costs a core for seconds
_EXPORTING = threading.Lock()
MEDIA_TYPES = {"onnx": "application/onnx", "safetensors": "application/octet-stream"}


def finished_item(store: JobStore, job_id: str, k: int) -> tuple[JobView, ItemView, Path]:
    """The job, its item ``k`` and the item's ticket file.

    Raises:
        HTTPException: 404 no such job or item; 410 the job was purged; 409 the item has no ticket (yet).
    """
    job = store.get_job(job_id)
    if job is None or not 0 <= k < len(job.items):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no item {k} in job {job_id}")
    if job.purged_at is not None:
        raise HTTPException(status.HTTP_410_GONE, f"job {job_id} was purged: its tickets are gone")
    item = job.items[k]
    path = store.ticket_of(item.id) if item.has_ticket else None
    if path is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"item {k} has no ticket (state {item.state})")
    return job, item, path


@router.get("/jobs/{job_id}/tickets/{k}/export/{fmt}", response_class=FileResponse)
def export_item(store: StoreDep, job_id: JobId, k: Position, fmt: Literal["onnx", "safetensors"]) -> FileResponse:
    """The pruned network of item ``k`` as a standalone file: ONNX (input ``input``, output ``output``,
    dynamic batch) or safetensors (pruned weights, random sources and masks). Made on demand."""
    from ticketsolver.ticket import Ticket, export_ticket

    job, item, path = finished_item(store, job_id, k)
    folder = Path(tempfile.mkdtemp(prefix="ticketsolver-export-"))
    out = folder / f"{item_file_stem(job_id, k, item.n)}.{fmt}"
    try:
        with _EXPORTING:
            export_ticket(Ticket.load(path), out, fmt)
    except ImportError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            f"the {fmt} export needs a package this service lacks ({exc.name}): install ticketsolver[onnx]",
        ) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(
        out,
        media_type=MEDIA_TYPES[fmt],
        filename=out.name,
        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True),
    )


@router.get("/jobs/{job_id}/tickets/{k}/report", response_model=ItemReport)
def item_report(store: StoreDep, job_id: JobId, k: Position) -> JSONResponse:
    """The report of item ``k`` alone (ticket summary and verification, or a learned item's task report), as
    a JSON file to save."""
    job, item, _ = finished_item(store, job_id, k)
    reports = store.item_reports(job_id) or []
    report = ItemReport.model_validate(reports[k])
    name = f"{item_file_stem(job_id, k, item.n)}.report.json"
    return JSONResponse(
        report.model_dump(mode="json"),
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
