"""The FastAPI app: settings, the job runner's lifetime, middleware, error handlers, routers, the web view's
pages and files, and API docs whose Swagger UI / ReDoc files are served from here. Nothing else."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.concurrency import run_in_threadpool

from ticketsolver._version import __version__
from ticketsolver.jobs import JobRunner, JobSpec, JobStore, make_executor

from . import web
from .auth import DOCS_ASSETS, BearerTokenMiddleware
from .errors import install_error_handlers
from .headers import SecurityHeadersMiddleware
from .routes import exports, figures, health, jobs, progress, sweeps
from .settings import Settings

log = logging.getLogger("ticketsolver.api")

#: how often finished jobs past the retention period are looked for
RETENTION_CHECK_S = 3600.0


async def _purge_expired(store: JobStore, days: float) -> None:
    """Every :data:`RETENTION_CHECK_S`: delete finished jobs older than ``days`` with their files."""
    while True:
        try:
            purged = await run_in_threadpool(store.purge_older_than, days * 86400.0)
            if purged:
                log.info("retention: purged %d finished job(s) older than %g days", len(purged), days)
        except Exception:  # a failed sweep is retried at the next one; the service keeps serving
            log.exception("retention: purging old jobs failed")
        await asyncio.sleep(RETENTION_CHECK_S)


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """FastAPI's OpenAPI document plus :class:`JobSpec`, the schema of ``POST /approximate``'s ``params``
    field, and the sweep section it holds, ``POST /sweeps``' (the routes read their multipart bodies themselves,
    see :mod:`ticketsolver_api.forms`)."""

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            spec = JobSpec.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(spec.pop("$defs", {}))
            components["JobSpec"] = spec  # its $defs hold SweepSection, the schema of POST /sweeps' params
            app.openapi_schema = schema
        return app.openapi_schema

    return document


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the job runner starts with it (re-queueing interrupted items) and stops with it."""
    settings = settings or Settings()
    store = JobStore(settings.data_dir, settings.database_url)
    executor = make_executor(settings.executor, settings.workers, settings.ray_address, settings.ray_chunk)
    runner = JobRunner(store, executor, settings.limits, settings.poll_interval, settings.warm_up)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # nothing else writes uploads yet (the server holds the data dir's lock): any age is an orphan
        orphans = await run_in_threadpool(store.collect_orphan_uploads, 0.0)
        if orphans:
            log.info("removed %d upload(s) that no job refers to", orphans)
        runner.start()
        retention = None
        if settings.retention_days is not None:
            retention = asyncio.create_task(_purge_expired(store, settings.retention_days))
        log.info(
            "serving jobs from %s with the %s executor (%d worker(s)); authentication %s",
            settings.data_dir,
            settings.executor,
            settings.workers,
            "on" if settings.token is not None else "OFF",
        )
        try:
            yield
        finally:
            if retention is not None:
                retention.cancel()
                with suppress(asyncio.CancelledError):
                    await retention
            runner.stop()
            store.close()

    # FastAPI's /docs and /redoc with Swagger UI's and ReDoc's files served from here (no CDN: they work offline)
    app = FastAPIOffline(
        title="ticketsolver",
        version=__version__,
        summary="Strong lottery tickets of trained networks, as persistent batch jobs.",
        lifespan=lifespan,
        max_body_size=settings.max_upload_bytes,  # 413 as soon as the body passes it, streamed or not
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # Swagger UI would otherwise ask an outside validator
    )
    app.state.settings = settings
    app.state.runner = runner
    app.state.metrics = health.Metrics(store)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    # added innermost first: latency (outermost) -> security headers -> CORS (preflights) -> token check -> routes
    token = settings.token.get_secret_value() if settings.token is not None else None
    app.add_middleware(BearerTokenMiddleware, token=token)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(health.LatencyMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(progress.router)  # before jobs: /jobs/progress is no /jobs/{job_id}
    app.include_router(jobs.router)
    app.include_router(exports.router)
    app.include_router(figures.router)
    app.include_router(sweeps.router)
    app.include_router(web.router)
    app.mount("/ui/static", StaticFiles(directory=web.STATIC_DIR), name="web-static")
    return app
