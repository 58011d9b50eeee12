"""Where the items of a job run: a local process pool, and optionally a Ray cluster for the solving.

Place in the pipeline: jobs/service. The dispatcher (:mod:`ticketsolver.jobs.runner`) hands each item to
an executor's process pool, so solving never runs in the service's own process. Two executors:

* :class:`LocalExecutor` — a ``spawn`` process pool (torch and ``fork`` do not mix) whose workers run
  at a lower priority, so the API keeps answering while they saturate the cores.
* :class:`RayExecutor` — the same pool drives each build, but the subset sums go to a Ray cluster: the
  builder is given a :class:`RaySolver` (``build_ticket(solve_with=...)``) that splits every solver batch
  into chunks, one Ray task each. The exact engine solves each problem independently, so the masks — and
  so the tickets — are bit-identical whatever the chunking and whichever machine ran a chunk.
  Verification runs as a Ray task on a GPU when the cluster has one and the worker has none.

Ray is imported only where it is used. Ray >= 2.59 turns token authentication on for a local cluster
started by ``ray.init()`` (it writes ``~/.ray/auth_token``); clients of an existing cluster need the same
token (``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``) when the cluster runs with ``RAY_AUTH_MODE=token``.
"""

from __future__ import annotations

import importlib.util
import math
import multiprocessing
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ticketsolver.errors import SolverUnavailableError
from ticketsolver.solvers import RawSolution, Solver, get_solver

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "RaySolver", "make_executor", "solver_for"]

#: the smallest chunk sent to one Ray task: a task costs ~1 ms, an n = 20 problem ~60 us
MIN_CHUNK = 1024
#: parent process id of a pool worker (set by the initializer); a worker whose parent died stops
_PARENT: int | None = None


def _init_worker(parent: int, niceness: int) -> None:
    global _PARENT
    _PARENT = parent
    if niceness and hasattr(os, "nice"):
        try:
            os.nice(niceness)  # below the API process: status requests stay fast while this solves
        except OSError:
            pass


def warm_up() -> str:
    """Run once in each new worker: import the library and load the compiled exact engine, so that the
    first item does not pay for it."""
    from ticketsolver.solvers import get_solver

    get_solver("mitm").solve(np.array([[0.5, 0.25, -0.125]]), np.array([0.375]))
    return "warm"


def parent_alive() -> bool:
    """False in a pool worker whose service process has gone (killed): it must stop working."""
    return _PARENT is None or os.getppid() == _PARENT


class LocalExecutor:
    """Runs items in a pool of ``workers`` spawned processes, each solving with all its cores.

    Args:
        workers: processes, i.e. items solved at the same time (1 suits a 2-core machine).
        niceness: added to the workers' nice value so that they yield to the service process.
    """

    kind = "local"

    def __init__(self, workers: int = 1, niceness: int = 10) -> None:
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self.niceness = niceness
        self._pool: ProcessPoolExecutor | None = None

    @property
    def capacity(self) -> int:
        return self.workers

    def context(self) -> dict[str, Any]:
        """Plain data telling a worker how to solve (see :func:`solver_for`)."""
        return {"kind": self.kind}

    def warm(self) -> list[Future]:
        """Start the workers now and load the library in each (the first items then start at once)."""
        return [self.submit(warm_up) for _ in range(self.workers)]

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(os.getpid(), self.niceness),
            )
        return self._pool.submit(fn, *args)

    def reset(self) -> None:
        """Drop a broken pool (a worker died); the next submit starts a fresh one."""
        self.shutdown()

    def shutdown(self, grace: float = 2.0) -> None:
        """Stop within ``grace`` seconds: queued items are dropped, idle workers exit, busy ones are
        terminated (the store still says running; the next start re-queues those items, which resume from
        their finished layers)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # Python >= 3.14 has terminate_workers(); before that the processes are only reachable here.
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)  # idle workers exit by themselves
        deadline = time.monotonic() + grace
        for process in processes:
            process.join(timeout=max(0.0, deadline - time.monotonic()))
        for process in processes:
            if process.is_alive():  # busy with an item: it resumes after the next start
                process.terminate()
                process.join(timeout=5)


class RayExecutor(LocalExecutor):
    """Local processes drive the builds; the subset sums run as Ray tasks on a cluster.

    Args:
        address: the cluster (``ray://head:10001`` for Ray Client, ``head:6379`` or ``auto`` from a node of
            the cluster); None starts a local cluster in each worker (for trying it out).
        workers: items built at the same time.
        chunk: problems per Ray task; None sizes chunks to about two tasks per cluster CPU.
        verify_on: ``"auto"`` (a Ray GPU task when the cluster has a GPU and the worker none),
            ``"cluster"`` (always a Ray task) or ``"local"``.
    """

    kind = "ray"

    def __init__(
        self, address: str | None = None, workers: int = 1, chunk: int | None = None, verify_on: str = "auto"
    ) -> None:
        super().__init__(workers)
        if importlib.util.find_spec("ray") is None:
            raise SolverUnavailableError("the ray executor needs Ray: pip install 'ticketsolver[ray]'")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        if verify_on not in ("auto", "cluster", "local"):
            raise ValueError(f"verify_on must be auto, cluster or local, got {verify_on!r}")
        self.address, self.chunk, self.verify_on = address, chunk, verify_on

    def context(self) -> dict[str, Any]:
        return {"kind": self.kind, "address": self.address, "chunk": self.chunk, "verify_on": self.verify_on}


Executor = LocalExecutor


def make_executor(
    kind: str, workers: int = 1, ray_address: str | None = None, ray_chunk: int | None = None
) -> LocalExecutor:
    """The executor named ``kind`` (``"local"`` or ``"ray"``)."""
    if kind == "local":
        return LocalExecutor(workers)
    if kind == "ray":
        return RayExecutor(ray_address, workers, ray_chunk)
    raise ValueError(f"unknown executor {kind!r}; choose local or ray")


# ---------------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------------


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
    # node has, so that every chunk is solved by the same exact code as the local pool's CPU engine.
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
    """One Ray task: solve a chunk (exactly, or ``auto`` to ``tolerance``); returns masks, status and backends."""
    sol = _task_solver(name, tolerance).solve(coeffs, targets, usable)
    return sol.masks, sol.status, sol.backends


_REMOTE: dict[str, Any] = {}


def _remote(fn: Callable[..., Any], **options: Any) -> Any:
    import ray

    key = f"{fn.__name__}:{sorted(options.items())}"
    if key not in _REMOTE:
        _REMOTE[key] = ray.remote(**options)(fn)
    return _REMOTE[key]


class RaySolver(Solver):
    """A solver that spreads each batch over a Ray cluster in chunks (one task per chunk).

    The manifest records ``solver`` as the backend asked for (``name``), exactly as a local build does.

    Args:
        solver: the backend each task runs (``mitm`` and ``auto`` use the CPU exact engine).
        address: cluster address for ``ray.init`` when this process has not joined one yet.
        chunk: problems per task; None: about two tasks per CPU of the cluster, at least
            :data:`MIN_CHUNK` problems each.

    Example:
        >>> # ray.init(num_cpus=2); solver = RaySolver("mitm")
        >>> # ticket = build_ticket(target, 20, solver="mitm", solve_with=solver)
    """

    tolerance = 0.0

    def __init__(
        self, solver: str = "mitm", address: str | None = None, chunk: int | None = None, tolerance: float = 0.0
    ) -> None:
        # refuse unknown names and bad tolerances here, not in a remote task
        get_solver(solver, tolerance=tolerance) if solver == "auto" else get_solver(solver)
        self.tolerance = tolerance
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk must be positive, got {chunk}")
        self.name = solver
        self.address = address
        self.chunk = chunk
        self.tasks = 0  # Ray tasks submitted so far

    def chunk_size(self, problems: int, cpus: float) -> int:
        if self.chunk is not None:
            return self.chunk
        return max(MIN_CHUNK, math.ceil(problems / max(1.0, 2.0 * cpus)))

    def _solve_batch(self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray) -> RawSolution:
        ray = connect_ray(self.address)
        size = self.chunk_size(len(targets), float(ray.cluster_resources().get("CPU", 1.0)))
        task = _remote(_solve_chunk, num_cpus=1)
        refs = [
            task.remote(self.name, coeffs[s : s + size], targets[s : s + size], usable[s : s + size], self.tolerance)
            for s in range(0, len(targets), size)
        ]
        self.tasks += len(refs)
        parts = ray.get(refs)
        return RawSolution(
            masks=np.concatenate([p[0] for p in parts]),
            status=np.concatenate([p[1] for p in parts]),
            backends=np.concatenate([p[2] for p in parts]),
            info={"engine": "ray", "tasks": len(refs), "chunk": size},
        )


def solver_for(context: dict[str, Any], name: str, tolerance: float = 0.0) -> Solver | None:
    """The solver a worker hands to ``build_ticket(solve_with=...)``: None (local) or a RaySolver (``auto``
    solving to ``tolerance``, as :func:`ticketsolver.construction.builder.solver_options` says)."""
    if context.get("kind") == "ray":
        return RaySolver(name, context.get("address"), context.get("chunk"), tolerance)
    return None


def _verify_task(checkpoint: bytes, arch: str | None, ticket: bytes, spec: dict[str, Any]) -> dict[str, Any]:
    """One Ray task: load the (vetted) checkpoint and the ticket from bytes and verify on this node."""
    from ticketsolver.jobs.runner import JobSpec, verify_ticket
    from ticketsolver.models import load_target
    from ticketsolver.ticket import Ticket

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "checkpoint").write_bytes(checkpoint)
        (Path(tmp) / "t.ticket").write_bytes(ticket)
        target = load_target(Path(tmp) / "checkpoint", arch=arch)
        return verify_ticket(target, Ticket.load(Path(tmp) / "t.ticket"), JobSpec.from_dict(spec)).to_dict()


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


def verify_remotely(
    context: dict[str, Any], gpus: int, checkpoint: Path, arch: str | None, ticket: Path, spec: dict[str, Any]
) -> dict[str, Any]:
    ray = connect_ray(context.get("address"))
    task = _remote(_verify_task, num_cpus=1, num_gpus=gpus)
    return ray.get(task.remote(checkpoint.read_bytes(), arch, ticket.read_bytes(), spec))
