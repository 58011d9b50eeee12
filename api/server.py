"""Run the service with uvicorn: ``ticketsolver_api.server.run(...)`` (used by ``ticketsolver serve``) or
``python -m ticketsolver_api.server --port 8000 --data-dir DIR [--executor local|ray]``.

Before it listens, the server refuses two mistakes with a message and a non-zero exit: serving without a
token on an interface other than loopback (unless ``--allow-no-token`` / ``TICKETSOLVER_ALLOW_NO_TOKEN``
says that is meant), and a second server on a data dir that one already serves (the data-dir lock).
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ticketsolver.errors import ConfigError, TicketSolverError

if TYPE_CHECKING:
    from .settings import Settings

__all__ = ["check_exposure", "log_config", "main", "run", "serve_command"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an interface to listen on) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def check_exposure(host: str, settings: Settings) -> None:
    """Refuse to serve without a token on a non-loopback interface unless ``settings.allow_no_token``.

    Raises:
        ConfigError: the message says how to set a token or how to say that an open service is meant.
    """
    if settings.token is None and not settings.allow_no_token and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host} without authentication: anyone who can reach it could submit jobs "
            "and read every ticket. Set TICKETSOLVER_TOKEN (clients send 'Authorization: Bearer <token>'), "
            "listen on 127.0.0.1, or pass --allow-no-token (TICKETSOLVER_ALLOW_NO_TOKEN=true) if an open "
            "service is what you mean"
        )


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration plus the ``ticketsolver`` loggers (jobs accepted, items started,
    finished, failed), so that the service's own INFO lines reach the server log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["ticketsolver"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(levelprefix)s %(name)s: %(message)s",
        "use_colors": None,
    }
    config["handlers"]["ticketsolver"] = {
        "formatter": "ticketsolver",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    config["loggers"]["ticketsolver"] = {"handlers": ["ticketsolver"], "level": level.upper(), "propagate": False}
    return config


def run(
    host: str = "127.0.0.1",
    port: int = 8000,
    data_dir: str | os.PathLike[str] | None = None,
    executor: str | None = None,
    allow_no_token: bool | None = None,
) -> None:
    """Serve the API until interrupted; arguments left None come from ``TICKETSOLVER_*`` settings.

    Args:
        host: interface to listen on (``0.0.0.0`` in a container).
        port: TCP port.
        data_dir: where the job store, uploads and tickets live.
        executor: ``"local"`` (worker processes) or ``"ray"`` (cluster at ``TICKETSOLVER_RAY_ADDRESS``).
        allow_no_token: serve without a token on a non-loopback interface.

    Raises:
        ConfigError: no token on a non-loopback interface (see :func:`check_exposure`).
        TicketSolverError: another server holds the data dir's lock (its message says which process).
    """
    import uvicorn

    from ticketsolver.jobs import DataDirLock

    from .main import create_app
    from .settings import Settings

    given = {"data_dir": data_dir, "executor": executor, "allow_no_token": allow_no_token}
    settings = Settings.model_validate({key: value for key, value in given.items() if value is not None})
    check_exposure(host, settings)
    with DataDirLock(settings.data_dir):  # held until the server has stopped
        uvicorn.run(
            create_app(settings),
            host=host,
            port=port,
            log_level=settings.log_level,
            log_config=log_config(settings.log_level),
            timeout_graceful_shutdown=5,
        )


def serve_command(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option(help="job store, uploads and tickets (default from TICKETSOLVER_DATA_DIR)")
    ] = None,
    executor: Annotated[
        str | None, typer.Option(help="local (worker processes) or ray (TICKETSOLVER_RAY_ADDRESS)")
    ] = None,
    allow_no_token: Annotated[
        bool | None,
        typer.Option(
            "--allow-no-token",
            help="serve without TICKETSOLVER_TOKEN on a non-loopback host (default: refused)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the batch-job service: POST /approximate, job status, ticket and report downloads (FastAPI)."""
    if executor is not None and executor not in ("local", "ray"):
        raise typer.BadParameter("--executor must be local or ray")
    try:
        run(host=host, port=port, data_dir=data_dir, executor=executor, allow_no_token=allow_no_token)
    except TicketSolverError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ticketsolver_api.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--executor", choices=["local", "ray"], default=None)
    parser.add_argument("--allow-no-token", action="store_true", default=None)
    args = parser.parse_args(argv)
    try:
        run(args.host, args.port, args.data_dir, args.executor, args.allow_no_token)
    except TicketSolverError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
