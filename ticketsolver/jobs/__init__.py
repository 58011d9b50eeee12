"""Batch jobs: persistent, resumable ticket builds run in worker processes off the caller's process.

Place in the pipeline: the last stage (jobs/service), below any web framework (the FastAPI app in
``api/`` is a thin shell over this package and this package never imports it). A job is one or more
checkpoints times one or more n; each (checkpoint, n) is an *item* that yields one ticket and one report (a
job with a ``learn`` section learns one mask per checkpoint; one with a ``sweep`` section runs
:func:`ticketsolver.sweep.run_sweep` on its one checkpoint, a table and figures as its results).

* :class:`JobSpec` / :class:`Limits` (``spec``): what a job asks for and what the service allows;
* :func:`accept_job` (``intake``): store the uploads safely and record the job in the :class:`JobStore`;
* :class:`JobRunner` (``dispatcher``): runs queued items in an executor's worker processes
  (:class:`LocalExecutor`, or :class:`RayExecutor` to solve on a Ray cluster), each with
  :func:`run_item` (``worker``); cancels, time limits and dead workers stop or retry items within seconds.

Accepting a job records one queued item per (checkpoint, n); ``JobRunner(store, LocalExecutor()).start()``
then runs them and ``runner.store.get_job(job_id)`` follows them:

>>> import io, tempfile, torch
>>> from torch import nn
>>> from ticketsolver.jobs import JobSpec, JobStore, Limits, accept_job
>>> store = JobStore(tempfile.mkdtemp())
>>> checkpoint = io.BytesIO()
>>> torch.save(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).state_dict(), checkpoint)
>>> _ = checkpoint.seek(0)
>>> job_id = accept_job(store, [("net.pt", checkpoint)], JobSpec(n=[12, 16]), Limits(), "local")
>>> [(item.checkpoint, item.n, str(item.state)) for item in store.get_job(job_id).items]
[('net.pt', 12, 'queued'), ('net.pt', 16, 'queued')]
>>> store.close()
"""

from __future__ import annotations

from ticketsolver.jobs.dispatcher import JobRunner
from ticketsolver.jobs.executors import Executor, LocalExecutor, Outcome, RayExecutor, RaySolver, make_executor
from ticketsolver.jobs.intake import LimitError, MemoryBudgetError, UploadRejectedError, accept_job
from ticketsolver.jobs.spec import JobSpec, JobState, Limits
from ticketsolver.jobs.store import (
    JOB_STATES,
    TERMINAL_STATES,
    DataDirInUseError,
    DataDirLock,
    ItemView,
    JobStore,
    JobSummary,
    JobView,
    LayerView,
    StoreError,
)
from ticketsolver.jobs.worker import ItemResult, run_item, verify_ticket

__all__ = [
    "JOB_STATES",
    "TERMINAL_STATES",
    "DataDirInUseError",
    "DataDirLock",
    "Executor",
    "ItemResult",
    "ItemView",
    "JobRunner",
    "JobSpec",
    "JobState",
    "JobStore",
    "JobSummary",
    "JobView",
    "LayerView",
    "LimitError",
    "Limits",
    "LocalExecutor",
    "MemoryBudgetError",
    "Outcome",
    "RayExecutor",
    "RaySolver",
    "StoreError",
    "UploadRejectedError",
    "accept_job",
    "make_executor",
    "run_item",
    "verify_ticket",
]
