"""Shared plumbing of the MIP backends (``gurobi``, ``cpsat``, ``cbc``): one model per problem.

Each backend builds and solves one small model per weight over that weight's usable coefficients; this
module owns the loop around it (which reports progress after every problem), the optional imports that
name their extra, argument checks, and the magnitude used to state a backend's tolerance.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable
from types import ModuleType

import numpy as np

from ticketsolver.errors import InvalidProblemError, SolverUnavailableError
from ticketsolver.solvers.base import Progress, SolveStatus

__all__ = ["check_positive", "check_threads", "import_optional", "logger", "max_magnitude", "solve_each"]

logger = logging.getLogger("ticketsolver.solvers")

#: solves one problem given its usable coefficients and its target; returns the chosen subset and status
SolveOne = Callable[[int, np.ndarray, float], tuple[np.ndarray, str]]


def import_optional(module: str, extra: str, backend: str) -> ModuleType:
    """Import an optional dependency, or raise :class:`SolverUnavailableError` naming the extra.

    Goes through :func:`importlib.import_module` on every call, so a module blocked in ``sys.modules``
    (set to ``None``) reads as missing, exactly as a plain ``import`` would.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SolverUnavailableError(
            f"the {backend!r} solver needs {module.split('.')[0]}, which cannot be imported ({exc}); "
            f"install it with: pip install 'ticketsolver[{extra}]'"
        ) from exc


def check_positive(name: str, value: float) -> float:
    """``value`` as a float if it is a finite number > 0, else :class:`InvalidProblemError` naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidProblemError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise InvalidProblemError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_threads(threads: int) -> int:
    """``threads`` if it is an int >= 1, else :class:`InvalidProblemError` naming it."""
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise InvalidProblemError(f"threads must be an int, got {type(threads).__name__}")
    if threads < 1:
        raise InvalidProblemError(f"threads must be >= 1, got {threads}")
    return int(threads)


def max_magnitude(coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray) -> float:
    """``max_b (|w_b| + sum_i |c_bi|)`` over usable coefficients: the largest value any problem's
    error constraint can take, the scale that absolute solver tolerances are multiplied by."""
    return float((np.abs(targets) + np.where(usable, np.abs(coeffs), 0.0).sum(1)).max())


def solve_each(
    coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, solve_one: SolveOne, progress: Progress
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``solve_one(b, c_usable, w)`` on every problem; scatter its subsets back into (B, n) masks.

    ``progress(b + 1, B)`` follows every problem, so a callback that raises stops the loop after the
    problem that was running. A problem without usable coefficients has one subset, the empty one: it is
    optimal without a model. The status comes back as an object array so that callers can overwrite
    entries with longer values.
    """
    masks = np.zeros(coeffs.shape, dtype=bool)
    status = np.full(len(targets), SolveStatus.OPTIMAL.value, dtype=object)
    for b in range(len(targets)):
        idx = np.flatnonzero(usable[b])
        if idx.size:
            chosen, status[b] = solve_one(b, coeffs[b, idx], float(targets[b]))
            masks[b, idx] = chosen
        progress(b + 1, len(targets))
    return masks, status
