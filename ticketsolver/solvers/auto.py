"""``auto``: the exact engine where it applies, the MIP chain (gurobi -> cpsat) beyond it; or, given a
tolerance, the ladder of exact engines over growing free subsets (:mod:`ticketsolver.solvers.ladder`)."""

from __future__ import annotations

import logging
import math

import numpy as np

from ticketsolver.errors import InvalidProblemError
from ticketsolver.solvers._mip import check_positive
from ticketsolver.solvers.base import Progress, RawSolution, Solver
from ticketsolver.solvers.exact import make_mitm
from ticketsolver.solvers.ladder import solve_ladder
from ticketsolver.solvers.limits import MAX_N

__all__ = ["AutoSolver"]

log = logging.getLogger("ticketsolver.solvers")


class AutoSolver(Solver):
    """Routes each problem to the cheapest backend that meets what is asked. ``backends`` records who
    answered each problem.

    With ``tolerance == 0`` (exact): problems with at most 40 usable coefficients go to ``mitm``, larger
    ones to ``gurobi`` (which itself falls back to ``cpsat``); the batch's tolerance is then the MIP's.
    With ``tolerance > 0``: every problem goes through the ladder (see
    :func:`~ticketsolver.solvers.ladder.solve_ladder`), which never calls a MIP; answers are ``optimal``,
    ``within_tolerance`` or, where neither was reached, ``feasible``. The solvers it composes are used
    through their public :meth:`~Solver.solve`, and nothing about a batch is kept on ``self``.

    Args:
        tolerance: absolute error at which a problem may stop short of its optimum (0: solve exactly).
        mip_time_limit: seconds per problem for the MIP chain (exact mode only).

    Attributes:
        exact: the exact engine (``mitm``) it hands small problems to; a caller may replace it before
            solving (e.g. with a one-thread engine inside a cluster task).

    Raises:
        InvalidProblemError: a tolerance that is not a finite number >= 0, or a time limit <= 0.

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
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float, np.integer, np.floating)):
            raise InvalidProblemError(f"tolerance must be a number, got {type(tolerance).__name__}")
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise InvalidProblemError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
        self.mip_time_limit = check_positive("mip_time_limit", mip_time_limit)
        self.exact: Solver = make_mitm()
        self.tolerance = float(tolerance)  # what was asked, set once: a batch's own tolerance is returned

    def _solve_batch(
        self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, progress: Progress
    ) -> RawSolution:
        if self.tolerance > 0:
            raw = solve_ladder(self.exact, coeffs, targets, usable, self.tolerance, progress=progress)
            return RawSolution(
                masks=raw.masks,
                status=raw.status,
                backends=np.full(len(targets), self.exact.name),
                info=raw.info,
                tolerance=raw.tolerance,
            )
        large = usable.sum(1) > MAX_N
        if not large.any():  # the common case: the whole batch is the exact engine's
            sol = self.exact.solve(coeffs, targets, usable, progress=progress)
            return RawSolution(
                masks=sol.masks, status=sol.status, backends=sol.backends, info=sol.info, tolerance=sol.tolerance
            )
        total = len(targets)
        masks = np.zeros(coeffs.shape, dtype=bool)
        status = np.empty(total, dtype=object)
        backends = np.empty(total, dtype=object)
        small = ~large
        n_small = int(small.sum())
        tolerance = 0.0
        if n_small:
            sol = self.exact.solve(
                coeffs[small], targets[small], usable[small], progress=lambda done, _: progress(done, total)
            )
            masks[small], status[small], backends[small] = sol.masks, sol.status, sol.backends
            tolerance = sol.tolerance
        from ticketsolver.solvers.gurobi import GurobiSolver

        log.info(
            "auto: %d problems exceed %d usable coefficients; solving them with the MIP chain",
            total - n_small,
            MAX_N,
        )
        mip = GurobiSolver(time_limit=self.mip_time_limit)
        sol = mip.solve(
            coeffs[large], targets[large], usable[large], progress=lambda done, _: progress(n_small + done, total)
        )
        masks[large], status[large], backends[large] = sol.masks, sol.status, sol.backends
        return RawSolution(
            masks=masks,
            status=status.astype(str),
            backends=backends.astype(str),
            info={"mip": sol.info},
            # the MIP's optimality is proven only within its tolerance; say so
            tolerance=max(tolerance, sol.tolerance),
        )
