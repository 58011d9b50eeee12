"""CBC backend through PuLP: the same MIP as ``gurobi``, with the free solver bundled in PuLP's wheel.

``min e  s.t.  e >= w - c.x,  e >= c.x - w,  x in {0,1}^k``, one model per weight. PuLP writes the
model to an MPS file and runs the CBC binary; the error of the returned mask is recomputed in float64.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any

import numpy as np

from ticketsolver.errors import SolverError, SolverUnavailableError
from ticketsolver.solvers._mip import check_positive, check_threads, import_optional, max_magnitude, solve_each
from ticketsolver.solvers.base import Progress, RawSolution, Solver, SolveStatus

__all__ = ["CbcSolver"]


class CbcSolver(Solver):
    """PuLP's CBC with no gap, a cutoff increment of 1e-12 and tolerances of 1e-9.

    CBC accepts a new incumbent only if it beats the last one by its cutoff increment; left at its
    default it keeps answers up to ~1e-5 worse than the optimum and still reports them optimal (seen
    on 3 of 8 random problems at n = 18-21), hence ``increment 1e-12``.

    A batch's ``tolerance`` is ``1e-12 + 1e-9 * (2 + M) + 5e-9 * max |w|``, M = max over the batch of
    ``|w| + sum |c_i|``: the increment; the primal feasibility tolerance (1e-9) on each error
    constraint; the integer tolerance (1e-9) on each x_i, which moves ``c.x`` by up to
    ``1e-9 * sum |c_i|`` when x is rounded; the 13 significant digits of PuLP's MPS file (well below
    1e-9 * M); and the 8 significant digits with which CBC's solution file gives the objective back
    (off by up to 5e-9 * e, and e <= |w| since the empty subset errs by |w|). PuLP does not return
    CBC's bound, so an answer is ``optimal`` when CBC proves its objective optimal with zero gap *and*
    the recomputed float64 error is within that tolerance of that objective.

    Args:
        time_limit: seconds per problem (CBC's ``sec``).
        threads: CBC ``threads`` per problem (PuLP's bundled CBC may ignore it).

    Raises:
        InvalidProblemError: a non-positive time limit, threads < 1.

    Example:
        >>> import numpy as np
        >>> sol = CbcSolver().solve(np.array([[0.5, 0.25, -0.125]]), np.array([0.375]))
        >>> sol.masks.tolist(), sol.status.tolist()
        ([[True, False, True]], ['optimal'])
    """

    name = "cbc"
    #: CBC's cutoff increment: a new incumbent must beat the last one by this much
    INCREMENT = 1e-12
    #: CBC's primal and integer tolerances
    CBC_TOL = 1e-9
    #: relative precision of values in CBC's solution file (printed with 8 significant digits)
    PRINTED_REL = 5e-9

    def __init__(self, time_limit: float = 60.0, threads: int = 1) -> None:
        self.time_limit = check_positive("time_limit", time_limit)
        self.threads = check_threads(threads)

    def _solve_batch(
        self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, progress: Progress
    ) -> RawSolution:
        pulp = import_optional("pulp", "cbc", self.name)
        tolerance = (
            self.INCREMENT
            + self.CBC_TOL * (2 + max_magnitude(coeffs, targets, usable))
            + self.PRINTED_REL * float(np.abs(targets).max())
        )
        cbc = self._cbc_command(pulp)
        masks, status = solve_each(
            coeffs, targets, usable, lambda b, c, w: self._solve_one(pulp, cbc, c, w, tolerance), progress
        )
        return RawSolution(masks=masks, status=status, tolerance=tolerance)

    def _cbc_command(self, pulp: ModuleType) -> Any:
        """PuLP's command for CBC: the binary bundled in PuLP's wheel, else a ``cbc`` PuLP can find.

        ``COIN_CMD`` pointed at the bundled binary is what ``PULP_CBC_CMD`` runs, without the latter's
        PuLP 4 deprecation warning.
        """
        options = dict(
            msg=False,
            timeLimit=self.time_limit,
            gapRel=0,
            gapAbs=0,
            threads=self.threads,
            options=[f"increment {self.INCREMENT:g}", f"integerT {self.CBC_TOL:g}", f"primalT {self.CBC_TOL:g}"],
        )
        bundled = getattr(getattr(pulp, "apis", None), "coin_api", None)
        bundled_path = getattr(bundled, "pulp_cbc_path", None)
        if bundled_path and os.access(bundled_path, os.X_OK):
            command = pulp.COIN_CMD(path=bundled_path, **options)
        else:
            command = pulp.COIN_CMD(**options)
        if not command.available():
            raise SolverUnavailableError(
                "the 'cbc' solver found no CBC binary (neither PuLP's bundled one nor one on PATH); "
                "install it with: pip install 'ticketsolver[cbc]' (or pulp[cbc])"
            )
        return command

    def _solve_one(
        self, pulp: ModuleType, cbc: Any, c: np.ndarray, w: float, tolerance: float
    ) -> tuple[np.ndarray, str]:
        model = pulp.LpProblem("subset_sum", pulp.LpMinimize)

        # variables (PuLP >= 3.3 attaches them to the model; older PuLP only has free LpVariables)
        new_var = getattr(model, "add_variable", pulp.LpVariable)
        x = [new_var(f"x{i}", 0, 1, pulp.LpBinary) for i in range(len(c))]  # x[i] = 1: keep c_i
        e = new_var("e", 0)  # the error |w - c.x|
        subset_sum = pulp.lpSum(float(ci) * xi for ci, xi in zip(c, x, strict=True))

        # objective
        model += e

        # constraints: e >= |w - c.x|, as two linear inequalities
        model += e >= w - subset_sum, "above"
        model += e >= subset_sum - w, "below"

        # solve (parameters are in the command)
        try:
            model.solve(cbc)
        except pulp.PulpSolverError as exc:
            raise SolverError(f"CBC did not run: {exc}") from exc

        # map the status; PuLP reports a time-limited incumbent as Optimal with an IntegerFeasible solution
        if model.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
            return np.zeros(len(c), dtype=bool), SolveStatus.FAILED.value
        chosen = np.array([(v.value() or 0.0) > 0.5 for v in x], dtype=bool)
        if model.sol_status == pulp.LpSolutionIntegerFeasible:
            return chosen, SolveStatus.TIME_LIMIT.value
        error = abs(w - float((c * chosen).sum()))
        proven = error <= float(e.value() or 0.0) + tolerance
        return chosen, (SolveStatus.OPTIMAL if proven else SolveStatus.FEASIBLE).value

    def __repr__(self) -> str:
        return f"CbcSolver(time_limit={self.time_limit:g}, threads={self.threads})"
