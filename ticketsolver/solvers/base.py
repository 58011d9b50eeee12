"""The solver interface: a batch of subset-sum problems in, masks and honest errors out.

Every trained weight ``w`` becomes one problem: choose ``x`` in {0,1}^n minimising
``|w - sum_i c_i x_i|`` over the *usable* coefficients. A backend implements one method,
:meth:`Solver._solve_batch`, on validated arrays; :meth:`Solver.solve` owns the shared machinery
(validation, timing, progress, recomputing values and errors in float64 from the masks, so that what a
backend reports can never be better than what its masks achieve).

Solvers hold configuration, never the state of a batch: what a batch was solved to (its tolerance) comes
back in its :class:`RawSolution`, so one solver instance may serve many batches, one after another or
from several threads at once.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from ticketsolver.errors import InvalidProblemError

__all__ = [
    "Progress",
    "RawSolution",
    "Solutions",
    "SolveStatus",
    "Solver",
    "no_progress",
    "recompute",
    "validate_batch",
]

#: ``progress(done, total)``: ``done`` of the batch's ``total`` problems are solved. Called as problems
#: finish; an exception it raises propagates out of :meth:`Solver.solve` and abandons the batch (that is
#: how a worker stops a build).
Progress = Callable[[int, int], None]


def no_progress(done: int, total: int) -> None:
    """The :data:`Progress` callback of a caller that does not listen."""


class SolveStatus(str, Enum):
    """Outcome of one problem. ``optimal`` means proven optimal (within the backend's stated tolerance)."""

    OPTIMAL = "optimal"
    WITHIN_TOLERANCE = "within_tolerance"  # error <= the stated tolerance; optimality not sought
    FEASIBLE = "feasible"  # a solution, optimality not proven
    TIME_LIMIT = "time_limit"  # the time limit ended the search; the best solution found is returned
    FAILED = "failed"  # no solution; the mask is all False

    def __str__(self) -> str:
        # the value, as StrEnum does: NumPy converts operands with str(), so that
        # ``status_array == SolveStatus.OPTIMAL`` compares elementwise
        return self.value


@dataclass(frozen=True)
class RawSolution:
    """What a backend returns for a validated batch; :class:`Solutions` is built from it."""

    masks: np.ndarray  # (B, n) bool, only usable entries may be True
    status: np.ndarray  # (B,) str, SolveStatus values
    backends: np.ndarray | None = None  # (B,) str, the backend that produced each answer (fallbacks)
    info: dict[str, Any] = field(default_factory=dict)
    # the tolerance this batch was solved to; None: the solver's constant ``tolerance`` attribute (exact
    # backends). Returned rather than written to the solver, so that a batch's tolerance neither leaks
    # into the next batch nor races with a batch solved at the same time on another thread
    tolerance: float | None = None


@dataclass(frozen=True)
class Solutions:
    """Solutions of a batch of B subset-sum problems with n coefficients each.

    Attributes:
        masks: (B, n) bool, the chosen subset of each problem.
        values: (B,) float64, ``(coeffs * masks).sum(1)``.
        errors: (B,) float64, ``|targets - values|``, recomputed in float64 from the masks.
        status: (B,) str array of :class:`SolveStatus` values (compare with ``"optimal"`` or the enum).
        backends: (B,) str, which backend produced each answer (differs from ``solver`` after a fallback).
        solver: name of the solver that was asked.
        tolerance: absolute tolerance of this batch: an ``optimal`` answer is within it of the optimum
            (0.0 for exact backends), a ``within_tolerance`` answer has an error of at most it.
        seconds: wall-clock seconds of the whole batch.
        info: backend-specific facts (integer scale of CP-SAT, fallback reasons, device, ...).
    """

    masks: np.ndarray
    values: np.ndarray
    errors: np.ndarray
    status: np.ndarray
    backends: np.ndarray
    solver: str
    tolerance: float
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.errors.shape[0])

    @property
    def n_optimal(self) -> int:
        return int(np.count_nonzero(self.status == SolveStatus.OPTIMAL))

    @property
    def max_error(self) -> float:
        return float(self.errors.max()) if len(self) else 0.0


def validate_batch(coeffs: Any, targets: Any, usable: Any | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check and normalise a batch; returns C-contiguous float64 coeffs/targets and a bool usable mask.

    Raises:
        InvalidProblemError: wrong dimensions or shapes, an empty batch or ``n == 0``, NaN or inf in a
            usable coefficient or in a target.
    """
    try:
        c = np.ascontiguousarray(np.asarray(coeffs, dtype=np.float64))
        t = np.ascontiguousarray(np.asarray(targets, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise InvalidProblemError(f"coefficients and targets must be numeric arrays: {exc}") from exc
    if c.ndim != 2:
        raise InvalidProblemError(f"coeffs must have shape (B, n), got shape {c.shape}")
    if t.ndim != 1:
        raise InvalidProblemError(f"targets must have shape (B,), got shape {t.shape}")
    if c.shape[0] != t.shape[0]:
        raise InvalidProblemError(f"coeffs has {c.shape[0]} rows but targets has {t.shape[0]} entries")
    if c.shape[0] == 0:
        raise InvalidProblemError("empty batch: at least one problem is required")
    if c.shape[1] == 0:
        raise InvalidProblemError("n = 0: every problem needs at least one coefficient")
    if usable is None:
        u = np.ones(c.shape, dtype=bool)
    else:
        u = np.ascontiguousarray(np.asarray(usable))
        if u.shape != c.shape:
            raise InvalidProblemError(f"usable must have the shape of coeffs {c.shape}, got {u.shape}")
        if u.dtype != np.bool_:
            raise InvalidProblemError(f"usable must be a bool array, got dtype {u.dtype}")
    if not np.isfinite(t).all():
        bad = int(np.flatnonzero(~np.isfinite(t))[0])
        raise InvalidProblemError(f"target {bad} is not finite ({t[bad]})")
    finite = np.isfinite(c)
    if not finite.all():
        if not finite[u].all():
            row = int(np.flatnonzero((~finite & u).any(axis=1))[0])
            raise InvalidProblemError(f"problem {row} has a NaN or inf coefficient marked usable")
        # Unusable entries may hold anything (padding); zero them so no backend ever sees a NaN.
        c = np.where(u, c, 0.0)
    return c, t, u


def recompute(coeffs: np.ndarray, targets: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values and errors of given masks, in float64, by the documented formula."""
    values = (coeffs * masks).sum(1)
    return values, np.abs(targets - values)


class _Reporter:
    """The :data:`Progress` a backend reports to during one :meth:`Solver.solve`: forwards to the caller's
    callback and remembers how far the backend got, so that ``solve`` can report the rest at the end."""

    def __init__(self, total: int, progress: Progress | None) -> None:
        self.total = total
        self.done = 0
        self.progress = progress or no_progress

    def __call__(self, done: int, total: int) -> None:
        self.done = max(self.done, done)
        self.progress(done, total)

    def finish(self) -> None:
        """Report the whole batch, unless the backend already did (a vectorised one reports nothing)."""
        if self.done < self.total:
            self(self.total, self.total)


class Solver(ABC):
    """A subset-sum backend. Subclasses set ``name`` and implement :meth:`_solve_batch`.

    Example:
        >>> import numpy as np
        >>> from ticketsolver.solvers import get_solver
        >>> sol = get_solver("bruteforce").solve(np.array([[0.5, 0.25, -0.125]]), np.array([0.375]))
        >>> sol.masks.tolist(), float(sol.errors[0])
        ([[True, False, True]], 0.0)
    """

    name: str = "solver"
    #: absolute tolerance within which an ``optimal`` answer is proven, for a backend whose tolerance does
    #: not depend on the batch (0 for exact backends); set at construction, never while solving. Backends
    #: whose tolerance depends on the batch return it in :attr:`RawSolution.tolerance` instead
    tolerance: float = 0.0

    def solve(
        self, coeffs: Any, targets: Any, usable: Any | None = None, *, progress: Progress | None = None
    ) -> Solutions:
        """Solve every problem of the batch.

        Args:
            coeffs: (B, n) float64 coefficients.
            targets: (B,) float64 targets.
            usable: optional (B, n) bool; only ``True`` entries may be chosen.
            progress: called with ``(done, B)`` as problems finish: after each problem in backends that
                solve one problem at a time (the MIP backends), after each vectorised part otherwise, and
                always with ``(B, B)`` once the batch is solved. An exception it raises propagates, and
                the rest of the batch is not solved.

        Returns:
            :class:`Solutions` with masks, recomputed values and errors, status, provenance, and the
            tolerance this batch was solved to.

        Raises:
            InvalidProblemError: malformed input (see :func:`validate_batch`).
            ProblemTooLargeError: n beyond this backend's limit.
            SolverUnavailableError: the backend's optional dependency is missing.
        """
        c, t, u = validate_batch(coeffs, targets, usable)
        reporter = _Reporter(len(t), progress)
        start = time.perf_counter()
        raw = self._solve_batch(c, t, u, reporter)
        seconds = time.perf_counter() - start
        reporter.finish()
        masks = np.asarray(raw.masks, dtype=bool)
        if masks.shape != c.shape:  # a backend bug, not a user error
            raise AssertionError(f"{self.name} returned masks of shape {masks.shape}, expected {c.shape}")
        masks &= u
        values, errors = recompute(c, t, masks)
        backends = raw.backends if raw.backends is not None else np.full(len(t), self.name)
        return Solutions(
            masks=masks,
            values=values,
            errors=errors,
            status=np.asarray(raw.status, dtype=str),
            backends=np.asarray(backends, dtype=str),
            solver=self.name,
            tolerance=self.tolerance if raw.tolerance is None else float(raw.tolerance),
            seconds=seconds,
            info=dict(raw.info),
        )

    @abstractmethod
    def _solve_batch(
        self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, progress: Progress
    ) -> RawSolution:
        """Solve a validated batch (float64 C-contiguous arrays, usable bool).

        ``progress(done, B)`` may be called as problems finish (a backend that solves the whole batch in
        one call may ignore it: :meth:`solve` reports the batch when this returns). Nothing about the
        batch may be written on ``self``: return it in the :class:`RawSolution`.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
