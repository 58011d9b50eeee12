"""The job page's figures as SVG documents: per-weight error histograms and relative output error per
input of a finished item, and a sweep's errors against n.

The item figures recompute their numbers from the ticket and the uploaded checkpoint
(:mod:`ticketsolver_api.web.measures`, a second or two), one figure at a time, and keep the last
:data:`CACHE_SIZE` drawings: a finished item's ticket never changes (each attempt writes its own file,
whose path is part of the key), so a drawing stays true until the job is purged.

They compare a ticket with its target: an item of a learned-mask job (``learn``) has no target, so its
figures, and the sweep of such a job, answer 409 with the reason. A job with a ``sweep`` section has figures
of its own, drawn by the library (``GET /sweeps/{id}/figures/{name}``): here it answers 409 and says where.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Response, status

from ticketsolver.jobs import JobSpec, JobStore

from ..deps import Authorized, StoreDep
from .exports import Position, finished_item
from .jobs import JobId

router = APIRouter(tags=["figures"], dependencies=[Authorized])

SVG = "image/svg+xml"
CACHE_SIZE = 64
_DRAWN: OrderedDict[tuple[str, str], bytes] = OrderedDict()
_DRAWING = threading.Lock()  # one drawing at a time: each loads a network and runs it


def _cached(key: tuple[str, str], draw: Callable[[], bytes]) -> bytes:
    with _DRAWING:
        if key in _DRAWN:
            _DRAWN.move_to_end(key)
            return _DRAWN[key]
        svg = draw()
        _DRAWN[key] = svg
        while len(_DRAWN) > CACHE_SIZE:
            _DRAWN.popitem(last=False)
        return svg


def _checkpoint_path(store: JobStore, job_id: str, k: int) -> Path:
    """The stored upload item ``k`` was built from."""
    path = store.item_checkpoint(job_id, k)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no item {k} in job {job_id}")
    return path


#: why a learned-mask item has no figure
NO_TARGET = "it is a learned-mask ticket: no target to compare it with (its task accuracy is in the report)"


def _item_figure(store: JobStore, job_id: str, k: int, name: Literal["weight-errors", "output-errors"]) -> bytes:
    from torch import nn

    from ticketsolver.construction import PairLayout
    from ticketsolver.models import load_target
    from ticketsolver.ticket import Ticket

    from ..web import measures, plots

    job, _, ticket_path = finished_item(store, job_id, k)
    if job.params.get("learn"):
        what = "per-weight errors" if name == "weight-errors" else "output errors"
        raise HTTPException(status.HTTP_409_CONFLICT, f"item {k} has no {what}: {NO_TARGET}")
    report: dict[str, Any] = (store.item_reports(job_id) or [])[k] or {}
    verification = report.get("verification")
    if name == "output-errors" and verification is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"item {k} was built without verification: no output errors")

    def draw() -> bytes:
        loaded = load_target(_checkpoint_path(store, job_id, k), arch=JobSpec.from_dict(job.params).arch)
        if not isinstance(loaded.module, nn.Sequential):
            raise HTTPException(
                status.HTTP_409_CONFLICT, f"item {k} is a graph: these figures are drawn for chains of layers"
            )
        target = loaded.module
        ticket = Ticket.load(ticket_path)
        if name == "weight-errors":
            constructions = [unit.construction for unit in ticket.layouts if isinstance(unit, PairLayout)]
            return plots.weight_error_figure(measures.weight_errors(target, ticket), constructions)
        assert verification is not None
        return plots.output_error_figure(measures.relative_output_errors(target, ticket, verification))

    return _cached((str(ticket_path), name), draw)


@router.get("/jobs/{job_id}/tickets/{k}/figures/weight-errors.svg", response_class=Response)
def weight_errors_figure(store: StoreDep, job_id: JobId, k: Position) -> Response:
    """Histogram of the per-weight error ``|w - w_eff|`` of each target layer of item ``k`` (log x axis). 409
    for a learned-mask item (no target)."""
    return Response(_item_figure(store, job_id, k, "weight-errors"), media_type=SVG)


@router.get("/jobs/{job_id}/tickets/{k}/figures/output-errors.svg", response_class=Response)
def output_errors_figure(store: StoreDep, job_id: JobId, k: Position) -> Response:
    """Relative output error ``max|f-g| / max|f|`` against input index, per dtype, on the random inputs of
    item ``k``'s verification (its box, law and seed; at most 1024 inputs). 409 for an unverified item and for
    a learned-mask item (no target)."""
    return Response(_item_figure(store, job_id, k, "output-errors"), media_type=SVG)


@router.get("/jobs/{job_id}/figures/sweep.svg", response_class=Response)
def sweep_figure(store: StoreDep, job_id: JobId) -> Response:
    """A sweep over n: per checkpoint, the largest weight error and the largest relative output error on
    random inputs (float64 where verified in it) against n, from the finished items' reports. 409 for a
    learned-mask job."""
    from ..web import plots

    job = store.get_job(job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    if job.params.get("learn"):
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"job {job_id} learned masks: no sweep over n and no errors against a target"
        )
    if job.params.get("sweep"):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"job {job_id} is a sweep job: its figures are listed at /sweeps/{job_id} (PNG and SVG)",
        )
    names_unique = len({c.name for c in job.checkpoints}) == len(job.checkpoints)
    series: dict[str, list[tuple[int, float | None, float | None]]] = {}
    for item, report in zip(job.items, store.item_reports(job_id) or [], strict=True):
        if report is None:
            continue
        errors = [layer.get("weight_error_max") for layer in report["ticket"]["layers"]]
        weight = max((e for e in errors if isinstance(e, int | float)), default=None)
        label = item.checkpoint if names_unique else f"{item.checkpoint_position}: {item.checkpoint}"
        assert item.n is not None  # a learned-mask job answered 409 above
        series.setdefault(label, []).append((item.n, weight, _relative_error_max(report.get("verification"))))
    if not series:
        raise HTTPException(status.HTTP_409_CONFLICT, f"no item of job {job_id} has finished")
    return Response(plots.sweep_figure(series), media_type=SVG)


def _relative_error_max(verification: dict[str, Any] | None) -> float | None:
    """The largest relative output error on random inputs, in float64 when measured so, else float32."""
    random = (verification or {}).get("sections", {}).get("random", {})
    for dtype in ("float64", "float32"):
        value = random.get(dtype, {}).get("relative_error_max")
        if isinstance(value, int | float):
            return float(value)
    return None
