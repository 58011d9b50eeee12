"""The executor interface: where the items of a job run, one item per worker process at a time.

Place in the pipeline: jobs/service. The dispatcher (:mod:`ticketsolver.jobs.dispatcher`) hands an
executor a function and its arguments under a *key* (the item's id) and later collects an
:class:`Outcome` per key. An executor never imports the worker or the dispatcher: it runs whatever
function it is given, which keeps the dependency one-way (dispatcher -> executors).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Executor", "Outcome"]


@dataclass(frozen=True)
class Outcome:
    """What became of one submitted call: exactly one of ``value`` (with ``error`` and ``lost`` None),
    ``error`` or ``lost`` tells it.

    Attributes:
        key: the key the call was submitted under.
        value: what the function returned.
        error: the function raised: ``"TypeName: message"``.
        lost: the worker process died while running it, e.g. ``"exit code 1"`` or ``"signal SIGKILL"``.
    """

    key: str
    value: Any = None
    error: str | None = None
    lost: str | None = None


class Executor(Protocol):
    """Worker processes that each run one call at a time.

    Calls come from one thread (the dispatcher's); :meth:`wake` alone may be called from any thread.
    """

    #: recorded with each job ("local", "ray")
    kind: str

    @property
    def capacity(self) -> int:
        """Calls that may run at the same time (the number of workers)."""

    def context(self) -> dict[str, Any]:
        """Plain data that tells the function run in a worker how to solve (local, or on a cluster)."""

    def start(self) -> None:
        """Start the workers now (each loads the library), so that the first call starts at once."""

    def idle(self) -> int:
        """Workers alive and free: how many calls :meth:`submit` accepts right now."""

    def submit(self, key: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on an idle worker; its :class:`Outcome` comes from a later :meth:`poll`."""

    def poll(self) -> list[Outcome]:
        """Outcomes of finished calls and of calls whose worker died; dead workers are replaced."""

    def kill(self, keys: Iterable[str], grace: float = 2.0) -> None:
        """End the calls ``keys`` now: their workers get SIGTERM, SIGKILL after ``grace`` seconds, and
        fresh workers take their places. No outcome is reported for a killed call."""

    def wait(self, timeout: float) -> None:
        """Block until a worker reports or dies, :meth:`wake` is called, or ``timeout`` seconds pass."""

    def wake(self) -> None:
        """End a :meth:`wait` in progress (thread-safe)."""

    def shutdown(self, grace: float = 2.0) -> None:
        """Stop every worker within about ``grace`` seconds (busy ones are terminated)."""
