"""``auto``: the exact engine where it applies, the MIP chain (gurobi -> cpsat) beyond it; or, given a
tolerance, the ladder of exact engines over growing free subsets (:mod:`ticketsolver.solvers.ladder`)."""

from __future__ import annotations

import logging
import math

import numpy as np

from ticketsolver.solvers.base import RawSolution, Solver
from ticketsolver.solvers.ladder import solve_ladder
from ticketsolver.solvers.mitm import MAX_N, make_mitm

__all__ = ["AutoSolver"]

log = logging.getLogger("ticketsolver.solvers")


class AutoSolver(Solver):
    """Routes each problem to the cheapest backend that meets what is asked. ``backends`` records who
    answered each problem.

    With ``tolerance == 0`` (exact): problems with at most 40 usable coefficients go to ``mitm``, larger
    ones to ``gurobi`` (which itself falls back to ``cpsat``). With ``tolerance > 0``: every problem goes
    through the ladder (see :func:`~ticketsolver.solvers.ladder.solve_ladder`), which never calls a MIP;
    answers are ``optimal``, ``within_tolerance`` or, where neither was reached, ``feasible``.

    Args:
        tolerance: absolute error at which a problem may stop short of its optimum (0: solve exactly).
        mip_time_limit: seconds per problem for the MIP chain (exact mode only).

    Raises:
        TypeError, ValueError: a tolerance that is not a finite number >= 0, or a time limit <= 0.

    Example:
        >>> import numpy as np
        >>> from ticketsolver.solvers import get_solver
        >>> rng = np.random.default_rng(0)
        >>> sol = get_solver("auto", tolerance=1e-9).solve(rng.uniform(-0.1, 0.1, (4, 36)), np.full(4, 0.2))
        >>> bool((sol.errors <= 1e-9).all()), sol.tolerance
        (True, 1e-09)
    """

    name = "auto"
    tolerance = 0.0

    def __init__(self, tolerance: float = 0.0, mip_time_limit: float = 60.0) -> None:
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.floating)):
            raise TypeError(f"tolerance must be a number, got {type(tolerance).__name__}")
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
        if not mip_time_limit > 0:
            raise ValueError(f"mip_time_limit must be positive, got {mip_time_limit}")
        self.exact = make_mitm()
        self.tolerance = float(tolerance)  # set once here, never per batch: see RawSolution.tolerance
        self.mip_time_limit = mip_time_limit

    def _solve_batch(self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray) -> RawSolution:
        if self.tolerance > 0:
            raw = solve_ladder(self.exact, coeffs, targets, usable, self.tolerance)
            return RawSolution(
                masks=raw.masks,
                status=raw.status,
                backends=np.full(len(targets), self.exact.name),
                info=raw.info,
                tolerance=raw.tolerance,
            )
        large = usable.sum(1) > MAX_N
        if not large.any():  # the common case: the batch is validated already, hand it over whole
            raw = self.exact._solve_batch(coeffs, targets, usable)
            return RawSolution(
                masks=raw.masks,
                status=raw.status,
                backends=np.full(len(targets), self.exact.name),
                info=raw.info,
                tolerance=0.0,
            )
        masks = np.zeros(coeffs.shape, dtype=bool)
        status = np.empty(len(targets), dtype=object)
        backends = np.empty(len(targets), dtype=object)
        info: dict[str, object] = {}
        small = ~large
        if small.any():
            sol = self.exact.solve(coeffs[small], targets[small], usable[small])
            masks[small], status[small], backends[small] = sol.masks, sol.status, sol.backends
        from ticketsolver.solvers.gurobi import GurobiSolver

        log.info(
            "auto: %d problems exceed %d usable coefficients; solving them with the MIP chain",
            int(large.sum()),
            MAX_N,
        )
        mip = GurobiSolver(time_limit=self.mip_time_limit)
        sol = mip.solve(coeffs[large], targets[large], usable[large])
        masks[large], status[large], backends[large] = sol.masks, sol.status, sol.backends
        info["mip"] = sol.info
        return RawSolution(
            masks=masks,
            status=status.astype(str),
            backends=backends.astype(str),
            info=info,
            tolerance=sol.tolerance,  # the MIP's optimality is proven only within its tolerance; say so
        )
