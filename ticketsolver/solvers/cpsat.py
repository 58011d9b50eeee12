"""OR-Tools CP-SAT backend: the subset-sum MIP on integers, after scaling every value by ``scale``.

CP-SAT solves integer programs only, so each coefficient and target is multiplied by ``scale`` and
rounded. The scaled problem is solved exactly; the float64 error of the returned mask is recomputed by
:meth:`Solver.solve`, and the batch's ``tolerance`` states how far rounding can move it from the true
float64 optimum. Also the fallback of ``gurobi``.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from ticketsolver.errors import InvalidProblemError, ProblemTooLargeError
from ticketsolver.solvers._mip import check_positive, check_threads, import_optional, max_magnitude, solve_each
from ticketsolver.solvers.base import Progress, RawSolution, Solver, SolveStatus

__all__ = ["CpSatSolver"]

#: the largest scaled magnitude accepted: float64 holds every integer up to it exactly, and CP-SAT's
#: int64 sums (e plus a linear expression of the same size) stay far from overflow
MAX_SCALED = 2.0**53


class CpSatSolver(Solver):
    """Exact on the integer-scaled problem: ``C_i = round(c_i * scale)``, ``W = round(w * scale)``.

    Each rounding moves a value by at most ``0.5 / scale``, so for any mask the scaled error and the
    true error differ by at most ``(k + 1) / (2 * scale)`` with k usable coefficients; the scaled optimum
    is therefore within ``(k + 1) / scale`` of the true float64 optimum. A batch's ``tolerance`` is that
    bound for its largest k (plus float64 rounding of ``c * scale``, negligible).

    Args:
        time_limit: seconds per problem (CP-SAT's ``max_time_in_seconds``).
        threads: CP-SAT workers per problem (``num_workers``).
        scale: integer scale S; 1e9 is exact at n = 21-24 on coefficients in [-1, 1], 1e6 is not.
        seed: CP-SAT's ``random_seed``; with one thread the answers are reproducible.

    Raises:
        InvalidProblemError: a non-positive time limit or scale, threads < 1, a seed outside [0, 2**31).

    Example:
        >>> import numpy as np
        >>> sol = CpSatSolver().solve(np.array([[0.5, 0.25, -0.125]]), np.array([0.375]))
        >>> sol.masks.tolist(), sol.status.tolist(), sol.info["scale"], sol.tolerance < 1e-8
        ([[True, False, True]], ['optimal'], 1000000000.0, True)
    """

    name = "cpsat"

    def __init__(self, time_limit: float = 30.0, threads: int = 1, scale: float = 1e9, seed: int = 0) -> None:
        self.time_limit = check_positive("time_limit", time_limit)
        self.threads = check_threads(threads)
        self.scale = check_positive("scale", scale)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**31:
            raise InvalidProblemError(f"seed must be an int in [0, 2**31), got {seed!r}")
        self.seed = int(seed)

    def _solve_batch(
        self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, progress: Progress
    ) -> RawSolution:
        cp_model = import_optional("ortools.sat.python.cp_model", "ortools", self.name)
        magnitude = max_magnitude(coeffs, targets, usable)
        if magnitude * self.scale > MAX_SCALED:
            raise ProblemTooLargeError(
                f"cpsat scales values by {self.scale:g}: |w| + sum|c| = {magnitude:g} becomes "
                f"{magnitude * self.scale:.3g} > 2**53; use a smaller scale (coarser) or 'mitm' (exact)"
            )
        k_max = int(usable.sum(1).max())
        tolerance = (k_max + 1) / self.scale + 4 * np.finfo(np.float64).eps * magnitude
        masks, status = solve_each(coeffs, targets, usable, lambda b, c, w: self._solve_one(cp_model, c, w), progress)
        return RawSolution(masks=masks, status=status, info={"scale": self.scale}, tolerance=tolerance)

    def _solve_one(self, cp_model: ModuleType, c: np.ndarray, w: float) -> tuple[np.ndarray, str]:
        # data: the problem on integers
        big_c = np.rint(c * self.scale).astype(np.int64).tolist()
        big_w = int(np.rint(w * self.scale))
        model = cp_model.CpModel()

        # variables
        x = [model.new_bool_var(f"x{i}") for i in range(len(big_c))]  # x[i] = 1: coefficient i is kept
        upper = sum(abs(v) for v in big_c) + abs(big_w)  # no subset errs by more
        e = model.new_int_var(0, upper, "e")  # scaled error |W - sum_i C_i x_i|
        subset_sum = cp_model.LinearExpr.weighted_sum(x, big_c)

        # constraints: e >= |W - C.x|, as two linear inequalities
        model.add(e >= big_w - subset_sum)
        model.add(e >= subset_sum - big_w)

        # objective
        model.minimize(e)

        # parameters
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = self.time_limit
        solver.parameters.num_workers = self.threads
        solver.parameters.random_seed = self.seed

        # solve, then map the status: FEASIBLE means a limit stopped the search before the proof
        result = solver.solve(model)
        if result == cp_model.OPTIMAL:
            status = SolveStatus.OPTIMAL
        elif result == cp_model.FEASIBLE:
            status = SolveStatus.TIME_LIMIT
        else:  # UNKNOWN (limit before any solution), MODEL_INVALID, INFEASIBLE (cannot happen)
            return np.zeros(len(big_c), dtype=bool), SolveStatus.FAILED.value
        return np.array([solver.boolean_value(v) for v in x], dtype=bool), status.value

    def __repr__(self) -> str:
        return (
            f"CpSatSolver(time_limit={self.time_limit:g}, threads={self.threads}, "
            f"scale={self.scale:g}, seed={self.seed})"
        )
