"""Dependencies of the routes: settings, the job store and runner, and the bearer scheme of the docs."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from ticketsolver.jobs import JobRunner, JobStore

from .settings import Settings

# The dependencies are ``async def`` because they only read memory: a plain ``def`` would cost a hop to
# the thread pool each, on every request.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.runner.store


async def get_runner(request: Request) -> JobRunner:
    return request.app.state.runner


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
RunnerDep = Annotated[JobRunner, Depends(get_runner)]

#: Declares the bearer scheme in the OpenAPI document (the "Authorize" button of /docs). The token itself
#: is checked before the request body is read, by :class:`ticketsolver_api.auth.BearerTokenMiddleware`.
Authorized = Depends(HTTPBearer(auto_error=False, description="required when TICKETSOLVER_TOKEN is set"))
