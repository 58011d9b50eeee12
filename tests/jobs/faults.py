"""Honest store faults for the jobs tests: every new connection of a real store runs a pragma (we run as root, so
a chmod would not stop a write; ``PRAGMA query_only=ON`` makes SQLite itself refuse every write)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from ticketsolver.jobs import JobStore


def pragma_on_connect(store: JobStore, pragma: str) -> Any:
    """Every new connection of the store runs ``pragma`` (old connections are closed first); returns the
    listener for :func:`back_to_normal`."""

    def run(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(pragma)

    event.listen(store.engine, "connect", run)
    store.engine.dispose()
    return run


def back_to_normal(store: JobStore, listener: Any) -> None:
    """Undo :func:`pragma_on_connect`."""
    event.remove(store.engine, "connect", listener)
    store.engine.dispose()
