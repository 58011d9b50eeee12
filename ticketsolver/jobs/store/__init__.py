"""The job store: what the service has accepted, how far it got, and where its files are.

Place in the pipeline: jobs/store, below the dispatcher and the API. :class:`JobStore` (``repository``)
is the one entry point; ``tables`` holds the schema (versioned by ``migrations``), ``views`` what callers
read, ``lock`` the one-server-per-data-dir lock, ``errors`` the store's errors.
"""

from __future__ import annotations

from ticketsolver.jobs.store.errors import DataDirInUseError, StoreError
from ticketsolver.jobs.store.lock import DataDirLock
from ticketsolver.jobs.store.repository import JobStore
from ticketsolver.jobs.store.tables import ACTIVE_STATES, JOB_STATES, TERMINAL_STATES, UPLOAD_SUFFIXES, new_id
from ticketsolver.jobs.store.views import CheckpointView, ItemTask, ItemView, JobSummary, JobView, LayerView

__all__ = [
    "ACTIVE_STATES",
    "JOB_STATES",
    "TERMINAL_STATES",
    "UPLOAD_SUFFIXES",
    "CheckpointView",
    "DataDirInUseError",
    "DataDirLock",
    "ItemTask",
    "ItemView",
    "JobStore",
    "JobSummary",
    "JobView",
    "LayerView",
    "StoreError",
    "new_id",
]
