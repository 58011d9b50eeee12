"""The Ray executor: local worker processes drive the builds, the subset sums run on a Ray cluster.

Place in the pipeline: jobs/service. :class:`RayExecutor` keeps the local executor's worker processes
(one item each, killable, replaced when they die); its context tells each worker to hand the builder a
:class:`RaySolver` (``build_ticket(solve_with=...)``), which splits every solver batch into chunks, one
Ray task each. The exact engine solves each problem independently, so the masks — and so the tickets —
are bit-identical whatever the chunking and whichever machine ran a chunk. Verification runs as a Ray
task on a GPU when the cluster has one and the worker has none (:func:`run_on_cluster`).

Stopping an item stops its cluster work too: a worker process is a Ray *driver*, and when a driver dies
(killed on cancel or time limit) Ray fails the tasks it owns and ends their processes; while it lives,
a :class:`RaySolver` whose progress callback raises cancels its outstanding tasks before re-raising.

Ray is imported only where it is used. Ray >= 2.59 turns token authentication on for a local cluster
started by ``ray.init()`` (it writes ``~/.ray/auth_token``); clients of an existing cluster need the same
token (``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``) when the cluster runs with ``RAY_AUTH_MODE=token``.
"""

from __future__ import annotations

import importlib.util
import math
import threading
from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from ticketsolver.errors import JobError, SolverUnavailableError
from ticketsolver.jobs.executors.local import LocalExecutor
from ticketsolver.solvers import RawSolution, Solver, get_solver
from ticketsolver.solvers.base import Progress

__all__ = ["MIN_CHUNK", "RayExecutor", "RaySolver", "connect_ray", "run_on_cluster", "solver_for", "verify_on_cluster"]

#: the smallest chunk sent to one Ray task: a task costs ~1 ms, an n = 20 problem ~60 us
MIN_CHUNK = 1024
#: seconds between looks at finished chunks (progress, cancellation) while a batch runs on the cluster
_PROGRESS_EVERY = 0.25


class RayExecutor(LocalExecutor):
    """Local worker processes drive the builds; the subset sums run as Ray tasks on a cluster.

    Args:
        address: the cluster (``ray://head:10001`` for Ray Client, ``head:6379`` or ``auto`` from a node of
            the cluster); None starts a local cluster in each worker (for trying it out).
        workers: items built at the same time.
        chunk: problems per Ray task; None sizes chunks to about two tasks per cluster CPU.
        verify_on: ``"auto"`` (a Ray GPU task when the cluster has a GPU and the worker none),
            ``"cluster"`` (always a Ray task) or ``"local"``.

    Raises:
        SolverUnavailableError: Ray is not installed.
        JobError: a bad ``workers``, ``chunk`` or ``verify_on``.
    """

    kind = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int = 1,
        chunk: int | None = None,
        verify_on: Literal["auto", "cluster", "local"] = "auto",
    ) -> None:
        super().__init__(workers)
        if importlib.util.find_spec("ray") is None:
            raise SolverUnavailableError("the ray executor needs Ray: pip install 'ticketsolver[ray]'")
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise JobError(f"chunk must be a positive integer, got {chunk!r}")
        if verify_on not in ("auto", "cluster", "local"):
            raise JobError(f"verify_on must be auto, cluster or local, got {verify_on!r}")
        self.address, self.chunk, self.verify_on = address, chunk, verify_on

    def context(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address, "chunk": self.chunk, "verify_on": self.verify_on}


def connect_ray(address: str | None) -> Any:
    """``import ray`` and join the cluster once per process (a cluster already joined is kept)."""
    try:
        import ray
    except ImportError as exc:
        raise SolverUnavailableError(f"the ray executor needs Ray: pip install 'ticketsolver[ray]' ({exc})") from exc

    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True)
    return ray


def _task_solver(name: str, tolerance: float = 0.0) -> Solver:
    # Inside a task: the CPU engine with one thread (the task holds one CPU), whatever hardware the
    # node has, so that every chunk is solved by the same exact code as a local worker's CPU engine.
    from ticketsolver.solvers.mitm import NumbaMitmSolver

    if name == "mitm":
        return NumbaMitmSolver(threads=1)
    solver = get_solver(name, tolerance=tolerance) if name == "auto" else get_solver(name)
    if name == "auto":
        solver.exact = NumbaMitmSolver(threads=1)  # type: ignore[attr-defined]
    return solver


def _solve_chunk(
    name: str, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, tolerance: float = 0.0
) -> tuple[Any, ...]:
    """One Ray task: solve a chunk (exactly, or ``auto`` to ``tolerance``); returns masks, status, backends and
    the tolerance the chunk was solved to (a chunk whose problems went to the MIP chain reports the chain's)."""
    sol = _task_solver(name, tolerance).solve(coeffs, targets, usable)
    return sol.masks, sol.status, sol.backends, sol.tolerance


_REMOTE: dict[str, Any] = {}


def _remote(fn: Callable[..., Any], **options: Any) -> Any:
    import ray

    key = f"{fn.__module__}.{fn.__qualname__}:{sorted(options.items())}"
    if key not in _REMOTE:
        _REMOTE[key] = ray.remote(**options)(fn)
    return _REMOTE[key]


class RaySolver(Solver):
    """A solver that spreads each batch over a Ray cluster in chunks (one task per chunk).

    The manifest records ``solver`` as the backend asked for (``name``), exactly as a local build does.
    Nothing connects to a cluster before the first batch.

    Args:
        solver: the backend each task runs (``mitm`` and ``auto`` use the CPU exact engine).
        address: cluster address for ``ray.init`` when this process has not joined one yet.
        chunk: problems per task; None: about two tasks per CPU of the cluster, at least
            :data:`MIN_CHUNK` problems each.
        tolerance: what ``auto`` solves to (0: exactly).

    Raises:
        InvalidProblemError: an unknown backend or a bad tolerance (refused here, not in a remote task).
        JobError: ``chunk`` is not a positive integer.

    Example:
        >>> solver = RaySolver("mitm")
        >>> solver.chunk_size(problems=100_000, cpus=8)  # two tasks per CPU
        6250
        >>> RaySolver("mitm", chunk=2048).chunk_size(problems=100_000, cpus=8)
        2048
    """

    tolerance = 0.0

    def __init__(
        self, solver: str = "mitm", address: str | None = None, chunk: int | None = None, tolerance: float = 0.0
    ) -> None:
        get_solver(solver, tolerance=tolerance) if solver == "auto" else get_solver(solver)
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
            raise JobError(f"chunk must be a positive integer, got {chunk!r}")
        self.tolerance = tolerance
        self.name = solver
        self.address = address
        self.chunk = chunk
        self.tasks = 0  # Ray tasks submitted so far (all batches; a statistic, not batch state)
        self._count = threading.Lock()

    def chunk_size(self, problems: int, cpus: float) -> int:
        """Problems per task for a batch of ``problems`` on a cluster of ``cpus`` CPUs."""
        if self.chunk is not None:
            return self.chunk
        return max(MIN_CHUNK, math.ceil(problems / max(1.0, 2.0 * cpus)))

    def _solve_batch(
        self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, progress: Progress
    ) -> RawSolution:
        ray = connect_ray(self.address)
        size = self.chunk_size(len(targets), float(ray.cluster_resources().get("CPU", 1.0)))
        task = _remote(_solve_chunk, num_cpus=1)
        starts = range(0, len(targets), size)
        refs = [
            task.remote(self.name, coeffs[s : s + size], targets[s : s + size], usable[s : s + size], self.tolerance)
            for s in starts
        ]
        with self._count:
            self.tasks += len(refs)
        problems = {ref: min(size, len(targets) - s) for ref, s in zip(refs, starts, strict=True)}
        pending, done = list(refs), 0
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=len(pending), timeout=_PROGRESS_EVERY)
                if ready:
                    done += sum(problems[ref] for ref in ready)
                    progress(done, len(targets))  # raising here (cancelled, stopped) ends the batch
            parts = ray.get(refs)
        except BaseException:
            _cancel(ray, pending)
            raise
        return RawSolution(
            masks=np.concatenate([p[0] for p in parts]),
            status=np.concatenate([p[1] for p in parts]),
            backends=np.concatenate([p[2] for p in parts]),
            info={"engine": "ray", "tasks": len(refs), "chunk": size},
            tolerance=max(float(p[3]) for p in parts),
        )


def solver_for(context: dict[str, Any], name: str, tolerance: float = 0.0) -> Solver | None:
    """The solver a worker hands to ``build_ticket(solve_with=...)``: None (solve in the worker) or a
    RaySolver (``auto`` solving to ``tolerance``)."""
    if context.get("kind") == "ray":
        return RaySolver(name, context.get("address"), context.get("chunk"), tolerance)
    return None


def verify_on_cluster(context: dict[str, Any]) -> int | None:
    """GPUs to request for a verification task on the cluster, or None to verify in this process."""
    if context.get("kind") != "ray" or context.get("verify_on") == "local":
        return None
    import torch

    ray = connect_ray(context.get("address"))
    gpus = float(ray.cluster_resources().get("GPU", 0.0))
    if context.get("verify_on") == "cluster":
        return 1 if gpus >= 1 else 0
    return 1 if gpus >= 1 and not torch.cuda.is_available() else None


def run_on_cluster(context: dict[str, Any], gpus: int, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` as one Ray task holding one CPU and ``gpus`` GPUs; returns its result.

    The caller passes a module-level function (the worker's verification), so that this module never
    imports the worker."""
    ray = connect_ray(context.get("address"))
    ref = _remote(fn, num_cpus=1, num_gpus=gpus).remote(*args)
    try:
        return ray.get(ref)
    except BaseException:
        _cancel(ray, [ref])
        raise


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Cancel tasks still running (their processes are ended); errors of finished ones are ignored."""
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # noqa: BLE001 - a task that finished or failed meanwhile needs nothing
            pass
