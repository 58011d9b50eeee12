"""How failures become HTTP answers: every one a status that says whose fault it is and a message without
server paths, never a bare 500 for a failure the service can name.

=============================================================  =========================================
raised                                                         answer
=============================================================  =========================================
``SolverUnavailableError`` (a backend not installed/licensed)  503
``StoreError``, ``OSError``, SQLAlchemy errors (the store      507 Insufficient Storage when the disk is
cannot be written)                                             full, else 503; never the server's paths
``MemoryBudgetError`` (a job's memory estimate over budget)    413, estimate and budget in the message
any other ``TicketSolverError`` (bad checkpoint or params,     422
a limit: ``CheckpointError``, ``ConfigError``, ``JobError``,
``ConstructionError``, ...)
request validation (query, path)                               422, without echoing the client's input
anything else                                                  500 "internal error" (logged in full)
=============================================================  =========================================
"""

from __future__ import annotations

import errno
import logging
import re
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from ticketsolver.errors import SolverUnavailableError, TicketSolverError
from ticketsolver.jobs import MemoryBudgetError, StoreError

__all__ = ["disk_full", "install_error_handlers", "public_message", "status_of"]

log = logging.getLogger("ticketsolver.api")

#: an absolute POSIX path of two or more parts (not preceded by a word character: "1/2" is no path)
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/'\"]+/)+([^\s/'\",;:)\]]*)")


def public_message(message: str) -> str:
    """``message`` with every absolute path reduced to its last part: answers never show server paths."""
    return _ABSOLUTE_PATH.sub(lambda match: match.group(1) or "<path>", message)


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an error behind it says the disk is full (ENOSPC/EDQUOT, or SQLite's words)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "disk is full" in str(seen) or "No space left" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def status_of(exc: TicketSolverError) -> int:
    """The HTTP status of a library error raised while serving a request (see the module's table)."""
    if isinstance(exc, SolverUnavailableError):
        return status.HTTP_503_SERVICE_UNAVAILABLE
    if isinstance(exc, StoreError):
        return status.HTTP_507_INSUFFICIENT_STORAGE if disk_full(exc) else status.HTTP_503_SERVICE_UNAVAILABLE
    if isinstance(exc, MemoryBudgetError):
        return status.HTTP_413_CONTENT_TOO_LARGE
    return status.HTTP_422_UNPROCESSABLE_CONTENT


def _storage_answer(reason: str, full: bool) -> JSONResponse:
    if full:
        return JSONResponse(
            {"detail": f"the service's disk is full ({reason}); nothing was accepted, try again later"},
            status_code=status.HTTP_507_INSUFFICIENT_STORAGE,
        )
    return JSONResponse(
        {"detail": f"the service cannot write its job store ({reason}); nothing was accepted, try again later"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )


def _validation_errors(errors: Any) -> list[dict[str, Any]]:
    """pydantic's error list without ``input``/``ctx``/``url``: a 900 KB field must not come back in the
    answer. ``msg`` is pydantic's own (it quotes at most a short value); long ones are cut."""
    cleaned = []
    for error in errors:
        message = str(error.get("msg", ""))
        if len(message) > 300:
            message = message[:300] + "..."
        cleaned.append({"loc": list(error.get("loc", ())), "msg": public_message(message), "type": error.get("type")})
    return cleaned


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers of the module's table on ``app``."""

    @app.exception_handler(TicketSolverError)
    async def refused(_: Request, exc: TicketSolverError) -> JSONResponse:
        return JSONResponse({"detail": public_message(str(exc))}, status_code=status_of(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            {"detail": _validation_errors(exc.errors())}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
        )

    @app.exception_handler(OSError)
    async def cannot_write(request: Request, exc: OSError) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, public_message(str(exc)))
        reason = exc.strerror or type(exc).__name__  # strerror names no file
        return _storage_answer(reason, exc.errno in (errno.ENOSPC, errno.EDQUOT))

    @app.exception_handler(SQLAlchemyError)
    async def store_failed(request: Request, exc: SQLAlchemyError) -> JSONResponse:
        original = exc.orig if isinstance(exc, DBAPIError) else exc
        reason = public_message(str(original).splitlines()[0] if str(original) else type(original).__name__)
        log.error("%s %s: the job store failed: %s", request.method, request.url.path, reason)
        return _storage_answer(reason, disk_full(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; the service log has the details"}, status_code=500)
