"""Versioned migrations of the job store's schema (Alembic), applied by the store itself when it opens.

Place in the pipeline: jobs/store. :func:`upgrade` brings a database to the newest revision: a new one is
created from revision 0001 up; one made by the unversioned ``create_all`` of older versions (tables but no
``alembic_version``) is stamped at 0001 first, then upgraded, keeping its jobs. Processes that open the
same store at once (the service and its workers) take turns on a lock file, and on SQLite the whole
upgrade is one transaction: a failed migration leaves the schema as it was.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import create_engine, event, inspect
from sqlalchemy.engine import Connection

from ticketsolver.jobs.store.errors import StoreError

__all__ = ["SCRIPTS", "current_revision", "head_revision", "upgrade"]

#: the script location (env.py and versions/), shipped as package data
SCRIPTS = Path(__file__).resolve().parent
#: the revision of the schema ``create_all`` made before the store was versioned
UNVERSIONED = "0001"


def config(connection: Connection | None = None) -> Config:
    """An Alembic config without an ini file; ``connection`` is what env.py migrates."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision this version of ticketsolver knows."""
    head = ScriptDirectory.from_config(config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision a database is at (None: unversioned or empty)."""
    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _exclusive(lock_file: Path | None) -> Iterator[None]:
    if lock_file is None:
        yield
        return
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
        yield


def _atomic_sqlite(engine: Any) -> None:
    # pysqlite commits before DDL on its own; hand transaction control to SQLAlchemy so that the whole
    # upgrade is one transaction (the recipe of the SQLAlchemy and Alembic docs)
    @event.listens_for(engine, "connect")
    def _no_autobegin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA busy_timeout=30000")

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade(url: str, *, lock_file: Path | None = None, connect_args: dict[str, Any] | None = None) -> str:
    """Bring the database at ``url`` to the newest revision; returns it.

    Args:
        url: the store's SQLAlchemy URL.
        lock_file: a file to lock while migrating (processes of this machine take turns); None: no lock.
        connect_args: passed to the driver.

    Raises:
        StoreError: the database is at a revision this version does not know (a newer ticketsolver made
            it), or the migration failed (the message says why; SQLite: nothing was changed).
    """
    head = head_revision()
    engine = create_engine(url, connect_args=connect_args or {})
    try:
        with engine.connect() as connection:  # the usual case, a read only: already at the head
            if current_revision(connection) == head:
                return head
    finally:
        engine.dispose()
    engine = create_engine(url, connect_args=connect_args or {})
    if engine.dialect.name == "sqlite":
        _atomic_sqlite(engine)
    try:
        with _exclusive(lock_file), engine.begin() as connection:
            tables = set(inspect(connection).get_table_names())
            cfg = config(connection)
            if "jobs" in tables and "alembic_version" not in tables:
                command.stamp(cfg, UNVERSIONED)
            if current_revision(connection) != head:
                command.upgrade(cfg, "head")
        return head
    except CommandError as exc:
        raise StoreError(
            f"the job store's schema is at a revision this ticketsolver does not know ({exc}); "
            "it was made by a newer version: upgrade ticketsolver"
        ) from None
    finally:
        engine.dispose()
