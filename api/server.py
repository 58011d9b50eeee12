"""Run the service with uvicorn: ``ticketsolver_api.server.run(...)`` (used by ``ticketsolver serve``) or
``python -m ticketsolver_api.server --port 8000 --data-dir DIR [--executor local|ray]``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["main", "run", "serve_command"]


def run(
    host: str = "127.0.0.1",
    port: int = 8000,
    data_dir: str | os.PathLike[str] | None = None,
    executor: str | None = None,
) -> None:
    """Serve the API until interrupted; arguments left None come from ``TICKETSOLVER_*`` settings.

    Args:
        host: interface to listen on (``0.0.0.0`` in a container).
        port: TCP port.
        data_dir: where the job store, uploads and tickets live.
        executor: ``"local"`` (process pool) or ``"ray"`` (cluster at ``TICKETSOLVER_RAY_ADDRESS``).
    """
    import uvicorn

    from .main import create_app
    from .settings import Settings

    overrides = {key: value for key, value in {"data_dir": data_dir, "executor": executor}.items() if value is not None}
    settings = Settings.model_validate(overrides)
    uvicorn.run(create_app(settings), host=host, port=port, log_level=settings.log_level, timeout_graceful_shutdown=5)


def serve_command(
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option(help="job store, uploads and tickets (default from TICKETSOLVER_DATA_DIR)")
    ] = None,
    executor: Annotated[str | None, typer.Option(help="local (process pool) or ray (TICKETSOLVER_RAY_ADDRESS)")] = None,
) -> None:
    """Run the batch-job service: POST /approximate, job status, ticket and report downloads (FastAPI)."""
    if executor is not None and executor not in ("local", "ray"):
        raise typer.BadParameter("--executor must be local or ray")
    run(host=host, port=port, data_dir=data_dir, executor=executor)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ticketsolver_api.server", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--executor", choices=["local", "ray"], default=None)
    args = parser.parse_args(argv)
    run(args.host, args.port, args.data_dir, args.executor)


if __name__ == "__main__":
    main()
