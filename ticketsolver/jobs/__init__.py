"""Batch jobs: persistent, resumable ticket builds run off the caller's process.

Place in the pipeline: the last stage (jobs/service), below any web framework (the FastAPI app in
``api/`` is a thin shell over this package and this package never imports it).

>>> from ticketsolver.jobs import JobRunner, JobSpec, JobStore, LocalExecutor
>>> # runner = JobRunner(JobStore("data"), LocalExecutor(workers=1)); runner.start()
>>> # job_id = runner.submit([("lenet5.pt", open("lenet5.pt", "rb"))], JobSpec(n=(16, 20)))
>>> # runner.store.get_job(job_id).state
"""

from __future__ import annotations

from ticketsolver.jobs.executors import LocalExecutor, RayExecutor, RaySolver, make_executor
from ticketsolver.jobs.runner import JobRunner, JobSpec, Limits, accept_job, run_item, verify_ticket
from ticketsolver.jobs.store import JOB_STATES, TERMINAL_STATES, ItemView, JobStore, JobView, LayerView

__all__ = [
    "JOB_STATES",
    "TERMINAL_STATES",
    "ItemView",
    "JobRunner",
    "JobSpec",
    "JobStore",
    "JobView",
    "LayerView",
    "Limits",
    "LocalExecutor",
    "RayExecutor",
    "RaySolver",
    "accept_job",
    "make_executor",
    "run_item",
    "verify_ticket",
]
