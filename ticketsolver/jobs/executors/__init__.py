"""Where the items of a job run: worker processes of our own, optionally solving on a Ray cluster.

Place in the pipeline: jobs/service. The dispatcher hands each item to an :class:`Executor`
(``base``): :class:`LocalExecutor` (``local``) keeps N spawned worker processes, one item each, that it
can kill and replace; :class:`RayExecutor` (``ray``) is the same, its workers spreading the subset sums
over a Ray cluster with :class:`RaySolver`. Nothing here imports the worker or the dispatcher.
"""

from __future__ import annotations

from ticketsolver.errors import JobError
from ticketsolver.jobs.executors.base import Executor, Outcome
from ticketsolver.jobs.executors.local import LocalExecutor, describe_exit, parent_alive
from ticketsolver.jobs.executors.ray import RayExecutor, RaySolver, run_on_cluster, solver_for, verify_on_cluster

__all__ = [
    "Executor",
    "LocalExecutor",
    "Outcome",
    "RayExecutor",
    "RaySolver",
    "describe_exit",
    "make_executor",
    "parent_alive",
    "run_on_cluster",
    "solver_for",
    "verify_on_cluster",
]


def make_executor(
    kind: str, workers: int = 1, ray_address: str | None = None, ray_chunk: int | None = None
) -> LocalExecutor:
    """The executor named ``kind`` (``"local"`` or ``"ray"``).

    Raises:
        JobError: an unknown kind, or bad settings.
        SolverUnavailableError: ``"ray"`` without Ray installed.

    Example:
        >>> make_executor("local", workers=2).capacity
        2
    """
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(ray_address, workers, ray_chunk)
    raise JobError(f"unknown executor {kind!r}; choose local or ray")
