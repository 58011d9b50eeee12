"""The errors of the job store, in the one tree of :mod:`ticketsolver.errors`::

    TicketSolverError
    └── JobError
        ├── StoreError            the store cannot be read or written (after brief retries): the service is degraded
        └── DataDirInUseError     another ticketsolver server holds the data dir (names its pid)

Messages never contain a server path beyond the data dir's name as the operator configured it.
"""

from __future__ import annotations

from ticketsolver.errors import JobError

__all__ = ["DataDirInUseError", "StoreError"]


class StoreError(JobError):
    """The job store could not be read or written (disk full, read-only, locked past the retries)."""


class DataDirInUseError(JobError):
    """Another ticketsolver server runs on this data dir; ``pid`` is its process id (None if unknown)."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
