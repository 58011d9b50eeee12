"""The pages: server-rendered shells that name the job, never show its data (``static/app.js`` fetches that)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from ticketsolver._version import __version__
from ticketsolver.solvers import available_solvers

from ..deps import SettingsDep

__all__ = ["STATIC_DIR", "router"]

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)


def _context(request: Request, settings: SettingsDep) -> dict[str, object]:
    """What every page needs: where the app is mounted, whether to ask for a token, the version."""
    return {"root": request.scope.get("root_path", ""), "auth": settings.token is not None, "version": __version__}


@router.get("/", response_class=HTMLResponse)
async def jobs_page(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The jobs table (live) and the submit form."""
    context = {**_context(request, settings), "solvers": available_solvers()}
    return templates.TemplateResponse(request, "jobs.html", context)


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(
    request: Request, settings: SettingsDep, job_id: Annotated[str, PathParam(pattern=r"^[0-9a-f]{32}$")]
) -> HTMLResponse:
    """One job: parameters, per-item layers, verification, figures and downloads. The same page for any
    well-formed id: whether the job exists is job data, told by the API to a client with the token."""
    return templates.TemplateResponse(request, "job.html", {**_context(request, settings), "job_id": job_id})
