"""The local executor: N spawned worker processes of our own, each running one item at a time.

Place in the pipeline: jobs/service. Solving never runs in the service's process: each worker is a
``spawn`` process (torch and ``fork`` do not mix) at a lower priority, so the API keeps answering while
the workers saturate the cores. The executor talks to each worker over its own pipe (a killed worker
breaks only its own), so it can end the one process running a given item — cancellation, a time limit —
and start a fresh one in its place, and it notices a worker that died, idle or busy, and replaces it.

Workers never outlive the service: each arms ``PR_SET_PDEATHSIG(SIGKILL)`` on Linux (a thread watching
``os.getppid()`` elsewhere), and ignores SIGINT (a Ctrl-C in the service's terminal stops the service,
which then stops its workers; an item must not fail because of it). Linux sends that signal when the
*thread* that started the worker ends: call :meth:`LocalExecutor.start` from a thread that lives as long as
the service (its main thread; the dispatcher thread starts the replacements). A worker lost that way is
replaced like any dead worker. The multiprocessing resource tracker the first spawn starts exits by itself
once the service and its workers are gone (it waits for the end of the pipe they all hold).
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_for
from multiprocessing.process import BaseProcess
from typing import Any

import numpy as np

from ticketsolver.errors import JobError
from ticketsolver.jobs.executors.base import Outcome

__all__ = ["LocalExecutor", "describe_exit", "die_with_parent", "parent_alive", "warm_up"]

log = logging.getLogger("ticketsolver.jobs")

#: the service process of this worker (None outside a worker): a worker whose parent died stops
_PARENT: int | None = None
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
#: longest wait before starting a worker again after workers kept dying before they were ready
_MAX_BACKOFF = 30.0


# ---------------------------------------------------------------------------------------------------
# Inside a worker process
# ---------------------------------------------------------------------------------------------------


def parent_alive() -> bool:
    """False in a worker whose service process has gone: it must stop working."""
    return _PARENT is None or os.getppid() == _PARENT


def die_with_parent(parent: int) -> None:
    """Make this process end when ``parent`` ends, however it ends (SIGKILL included).

    Linux: the kernel sends SIGKILL on the parent's death (``PR_SET_PDEATHSIG``); checking the parent
    right after arming closes the race with a parent that died before. Elsewhere a daemon thread polls
    ``os.getppid()`` once a second.
    """
    global _PARENT
    _PARENT = parent
    if not _arm_death_signal():
        threading.Thread(target=_watch_parent, args=(parent,), name="ticketsolver-parent-watch", daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def _arm_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent: int, interval: float = 1.0) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)


def warm_up() -> None:
    """Import the library and load the compiled exact engine, so that a worker's first item does not
    pay for it."""
    from ticketsolver.solvers import get_solver

    get_solver("mitm").solve(np.array([[0.5, 0.25, -0.125]]), np.array([0.375]))


def _serve(conn: Connection, parent: int, niceness: int) -> None:
    """A worker's life: arm the parent-death signal, lower the priority, warm up, say ready, then run
    one call per message ``(key, pickled (fn, args))`` and answer ``("done", key, value, error)``,
    until the pipe closes or ``None`` arrives."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if niceness and hasattr(os, "nice"):
        try:
            os.nice(niceness)  # below the API process: status requests stay fast while this solves
        except OSError:
            pass
    try:
        warm_up()
    except Exception:  # noqa: BLE001 - a worker that cannot warm up can still report why its items fail
        log.exception("worker warm-up failed")
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the service closed its end
        if message is None:
            return
        key, payload = message
        reply: tuple[str, str, Any, str | None]
        try:
            fn, args = pickle.loads(payload)
            reply = ("done", key, fn(*args), None)
        except Exception as exc:  # noqa: BLE001 - the caller decides what a failed call means
            reply = ("done", key, None, f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            conn.send(("done", key, None, f"the result could not be sent back: {exc}"))


# ---------------------------------------------------------------------------------------------------
# In the service process
# ---------------------------------------------------------------------------------------------------


def describe_exit(code: int | None) -> str:
    """``"exit code 3"``, ``"signal SIGKILL"`` or ``"unknown exit"`` for a process's exit code."""
    if code is None:
        return "unknown exit"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclass(eq=False)
class _Worker:
    process: BaseProcess
    conn: Connection  # the service's end of this worker's pipe
    ready: bool = False  # warmed up and said so
    key: str | None = None  # the call it runs, None when idle


class LocalExecutor:
    """Runs calls in ``workers`` spawned processes of its own, one call per process at a time.

    Args:
        workers: processes, i.e. items solved at the same time (1 suits a 2-core machine).
        niceness: added to the workers' nice value so that they yield to the service process.

    Raises:
        JobError: ``workers`` is not a positive integer.

    Example:
        >>> executor = LocalExecutor(workers=2)
        >>> executor.capacity, executor.context()
        (2, {'kind': 'local'})
    """

    kind = "local"

    def __init__(self, workers: int = 1, niceness: int = 19) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise JobError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self.niceness = niceness
        self._pool: list[_Worker] = []
        self._failed_starts = 0  # workers in a row that died before they were ready
        self._start_after = 0.0  # monotonic time before which no worker is started (back-off)
        self._wake_read, self._wake_write = os.pipe()  # non-inheritable: no worker holds them
        os.set_blocking(self._wake_write, False)

    @property
    def capacity(self) -> int:
        return self.workers

    def context(self) -> dict[str, Any]:
        """Plain data telling a worker how to solve: locally."""
        return {"kind": self.kind}

    def pids(self) -> list[int]:
        """Process ids of the workers alive now."""
        return [w.process.pid for w in self._pool if w.process.pid is not None and w.process.is_alive()]

    def busy(self) -> dict[str, int]:
        """Key -> process id of each call running now."""
        return {w.key: w.process.pid for w in self._pool if w.key is not None and w.process.pid is not None}

    # -- the Executor protocol -------------------------------------------------------------------------

    def start(self) -> None:
        self._top_up()

    def idle(self) -> int:
        self._top_up()
        return sum(1 for w in self._pool if w.key is None and w.process.is_alive())

    def submit(self, key: str, fn: Callable[..., Any], *args: Any) -> None:
        payload = pickle.dumps((fn, args))  # what cannot cross a process boundary fails here, in the caller
        worker = next((w for w in self._pool if w.key is None and w.process.is_alive()), None)
        if worker is None:
            raise JobError("no idle worker: submit only while idle() > 0")
        worker.key = key
        try:
            worker.conn.send((key, payload))
        except OSError:
            pass  # it died just now: the next poll() reports the call lost

    def poll(self) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for worker in list(self._pool):
            ended = self._read(worker, outcomes)
            if ended or not worker.process.is_alive():
                lost = self._bury(worker)
                if lost is not None:
                    outcomes.append(lost)
        self._top_up()
        return outcomes

    def kill(self, keys: Iterable[str], grace: float = 2.0) -> None:
        wanted = set(keys)
        victims = [w for w in self._pool if w.key is not None and w.key in wanted]
        self._end(victims, grace)
        for worker in victims:
            log.info("stopped the worker process %s running %s", worker.process.pid, worker.key)
            self._pool.remove(worker)
            worker.conn.close()
        self._top_up()

    def wait(self, timeout: float) -> None:
        watched: list[Any] = [self._wake_read]
        for worker in self._pool:
            watched += [worker.conn, worker.process.sentinel]
        if self._wake_read in wait_for(watched, max(0.0, timeout)):
            try:
                os.read(self._wake_read, 4096)
            except BlockingIOError:
                pass

    def wake(self) -> None:
        try:
            os.write(self._wake_write, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake is pending anyway) or closed

    def shutdown(self, grace: float = 2.0) -> None:
        """Stop within about ``grace`` seconds: idle workers exit by themselves, busy ones are terminated
        (the store still says running; the next start re-queues those items, which resume from their
        finished layers)."""
        pool, self._pool = self._pool, []
        for worker in pool:
            if worker.key is None:
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
            else:
                worker.process.terminate()
        self._end(pool, grace, terminate=False)
        for worker in pool:
            worker.conn.close()

    def __del__(self) -> None:
        for fd in (getattr(self, "_wake_read", None), getattr(self, "_wake_write", None)):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- processes -------------------------------------------------------------------------------------

    def _top_up(self) -> None:
        """Start workers until there are ``workers`` (unless backing off after failed starts)."""
        while len(self._pool) < self.workers and time.monotonic() >= self._start_after:
            context = multiprocessing.get_context("spawn")
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_serve,
                args=(theirs, os.getpid(), self.niceness),
                name="ticketsolver-worker",
                daemon=True,  # multiprocessing terminates it at a normal exit of the service
            )
            process.start()
            theirs.close()
            self._pool.append(_Worker(process, ours))

    def _read(self, worker: _Worker, outcomes: list[Outcome]) -> bool:
        """Take the worker's messages; True when its pipe is closed (it is ending)."""
        try:
            while worker.conn.poll():
                message = worker.conn.recv()
                if message[0] == "ready":
                    worker.ready, self._failed_starts = True, 0
                elif message[1] == worker.key:
                    _, key, value, error = message
                    worker.key = None
                    outcomes.append(Outcome(key, value=value, error=error))
        except (EOFError, OSError):
            return True
        return False

    def _bury(self, worker: _Worker) -> Outcome | None:
        """Remove a dead (or dying) worker; the call it ran, if any, is reported lost."""
        worker.process.join(1.0)  # a closed pipe means it is exiting: let it, so its own exit code shows
        self._end([worker], grace=1.0)
        self._pool.remove(worker)
        worker.conn.close()
        reason = describe_exit(worker.process.exitcode)
        if not worker.ready:  # dying at start again and again must not become a busy loop of spawns
            self._failed_starts += 1
            self._start_after = time.monotonic() + min(_MAX_BACKOFF, 0.25 * 2**self._failed_starts)
        if worker.key is None:
            log.warning("an idle worker process died (%s); starting a fresh one", reason)
            return None
        log.warning("the worker process running %s died (%s)", worker.key, reason)
        return Outcome(worker.key, lost=reason)

    @staticmethod
    def _end(workers: list[_Worker], grace: float, terminate: bool = True) -> None:
        """SIGTERM (when ``terminate``), then SIGKILL whatever still runs after ``grace`` seconds; reaped."""
        if terminate:
            for worker in workers:
                if worker.process.is_alive():
                    worker.process.terminate()
        deadline = time.monotonic() + grace
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5.0)
