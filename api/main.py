"""The FastAPI app: settings, the job runner's lifetime, middleware and routers. Nothing else."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, status
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse

from ticketsolver import TicketSolverError
from ticketsolver._version import __version__
from ticketsolver.jobs import JobRunner, JobStore, make_executor

from .routes import health, jobs
from .settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the job runner starts with it (re-queueing interrupted items) and stops with it."""
    settings = settings or Settings()
    store = JobStore(settings.data_dir, settings.database_url)
    executor = make_executor(settings.executor, settings.workers, settings.ray_address, settings.ray_chunk)
    runner = JobRunner(store, executor, settings.limits, settings.poll_interval, settings.warm_up)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runner.start()
        try:
            yield
        finally:
            runner.stop()
            store.close()

    app = FastAPI(
        title="ticketsolver",
        version=__version__,
        summary="Strong lottery tickets of trained networks, as persistent batch jobs.",
        lifespan=lifespan,
        max_body_size=settings.max_upload_bytes,  # 413 as soon as the body passes it, streamed or not
    )
    app.state.settings = settings
    app.state.runner = runner
    app.state.metrics = health.Metrics(store)
    app.add_middleware(health.LatencyMiddleware, metrics=app.state.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )

    @app.exception_handler(TicketSolverError)
    async def refused(_: Request, exc: TicketSolverError) -> JSONResponse:
        # raised while accepting a job: a hostile or unreadable checkpoint, a limit, bad parameters
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    app.include_router(health.router)
    app.include_router(jobs.router)
    return app
