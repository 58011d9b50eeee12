"""The store's health for ``/healthz``: can it be read, can it be written (a real write), how much disk is free.

Place in the pipeline: jobs/store. A service whose store cannot be written accepts no jobs and cannot
record outcomes; the health check says so ("degraded") instead of answering "ok" from a process that
merely runs.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from ticketsolver.jobs.store.tables import DATA_FOLDERS, HealthRow, JobRow

if TYPE_CHECKING:
    from ticketsolver.jobs.store.repository import JobStore

__all__ = ["MIN_FREE_BYTES", "probe"]

#: below this much free disk space the store reports itself degraded
MIN_FREE_BYTES = 256 * 1024**2


def probe(store: JobStore, min_free_bytes: int = MIN_FREE_BYTES) -> dict[str, Any]:
    """Whether the store works, for ``/healthz``.

    Returns:
        ``{"status": "ok" | "degraded", "readable": bool, "writable": bool, "files_writable": bool,
        "free_bytes": int, "deferred_failures": int, "problems": [str, ...]}``. ``writable`` is a real
        committed write (one row rewritten), ``files_writable`` a file written and removed in the data
        dir; ``problems`` says what is wrong, without paths.
    """
    problems: list[str] = []
    readable = writable = files_writable = False
    try:
        with store._session() as session:
            session.scalar(select(func.count()).select_from(JobRow))
        readable = True
    except DBAPIError as exc:
        problems.append(f"database not readable: {store._reason(exc)}")
    try:
        with store._session.begin() as session:
            row = session.get(HealthRow, 1)
            if row is None:
                session.add(HealthRow(id=1, probed_at=time.time()))
            else:
                row.probed_at = time.time()
        writable = True
    except DBAPIError as exc:
        problems.append(f"database not writable: {store._reason(exc)}")
    # every folder the service writes to: a broken uploads/ or tickets/ fails every job while the root is fine
    failures = [f"{where} not writable: {reason}" for where, reason in _unwritable_folders(store.data_dir)]
    problems.extend(failures)
    files_writable = not failures
    try:
        free = shutil.disk_usage(store.data_dir).free
    except OSError as exc:
        free = 0
        problems.append(f"free disk space unknown: {exc.strerror}")
    if free < min_free_bytes:
        problems.append(f"{free:,} bytes free on the data dir's disk (below {min_free_bytes:,})")
    deferred = store.deferred_failures
    if deferred:
        problems.append(f"{deferred} item failure(s) waiting to be written")
    return {
        "status": "ok" if not problems else "degraded",
        "readable": readable,
        "writable": writable,
        "files_writable": files_writable,
        "free_bytes": int(free),
        "deferred_failures": deferred,
        "problems": problems,
    }


def _unwritable_folders(data_dir: Path) -> list[tuple[str, str]]:
    """(folder shown without server paths, reason) for each of the data dir and its subfolders that refuses
    a small written-and-synced file."""
    failed = []
    for name in (".", *DATA_FOLDERS):
        folder = data_dir / name
        probe = folder / f".health-{os.getpid()}-{threading.get_ident()}"
        try:
            with probe.open("wb") as handle:
                handle.write(b"ok")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            failed.append(("data dir" if name == "." else f"data dir's {name}/", exc.strerror or type(exc).__name__))
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass
    return failed
