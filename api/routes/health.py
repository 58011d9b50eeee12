"""Liveness and Prometheus metrics: jobs and items by state, problems solved, request latency."""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ticketsolver._version import __version__
from ticketsolver.jobs import JobStore

from ..deps import Authorized, RunnerDep, SettingsDep, StoreDep
from ..schemas import HealthPublic

router = APIRouter(tags=["health"])


class StoreCollector(Collector):
    """Reads the numbers from the store at scrape time, so they survive restarts and count the work of
    every worker process."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        counts = self.store.counts()
        jobs = GaugeMetricFamily("ticketsolver_jobs", "Jobs by state", labels=["state"])
        for state, count in counts["jobs"].items():
            jobs.add_metric([state], count)
        items = GaugeMetricFamily("ticketsolver_items", "Items (checkpoint, n) by state", labels=["state"])
        for state, count in counts["items"].items():
            items.add_metric([state], count)
        yield jobs
        yield items
        yield CounterMetricFamily(
            "ticketsolver_items_completed", "Items that produced a ticket", value=counts["items"]["succeeded"]
        )
        yield CounterMetricFamily(
            "ticketsolver_problems_solved",
            "Subset-sum problems solved by finished items",
            value=counts["problems_solved"],
        )


class Metrics:
    """The app's own registry (one per app, so that several apps in one process do not collide)."""

    def __init__(self, store: JobStore) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(store))
        self.latency = Histogram(
            "ticketsolver_request_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )


class LatencyMiddleware:
    """Pure ASGI middleware: times every HTTP request into ``metrics.latency``, labelled by the route
    template (bounded cardinality); cheaper than an ``@app.middleware("http")`` function."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.latency.labels(scope["method"], route, str(status)).observe(time.perf_counter() - start)


@router.get(
    "/healthz",
    response_model=HealthPublic,
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": HealthPublic, "description": "degraded"}},
)
def healthz(settings: SettingsDep, store: StoreDep, runner: RunnerDep, response: Response) -> HealthPublic:
    """``ok`` while the store answers, can write, and has room on its disk; else ``degraded`` with HTTP 503
    and the reasons (load balancers and container healthchecks take a job elsewhere). Open without a token."""
    health = store.health()
    if health["problems"]:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return HealthPublic(
        status="degraded" if health["problems"] else "ok",
        problems=health["problems"],
        version=__version__,
        executor=settings.executor,
        busy_workers=runner.busy,
    )


@router.get("/metrics", dependencies=[Authorized], response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
