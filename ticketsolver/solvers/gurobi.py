"""Gurobi backend: the papers' MIP, one model per weight, with CP-SAT as the fallback.

``min e  s.t.  e >= w - c.x,  e >= c.x - w,  x in {0,1}^k``. Gurobi's LP bound of this model is 0, so
it stops as soon as ``|w - c.x|`` is within its feasibility tolerances; they are tightened to 1e-9 with
``NumericFocus`` 3, and an answer is called optimal only if the error recomputed in float64 agrees with
Gurobi's proven bound. The pip wheel's size-limited licence (2,000 variables and constraints) holds one
weight per model. When gurobipy is missing or unlicensed, or a problem ends without any solution, the
problem goes to ``cpsat`` there and then; every fallback is logged and recorded per problem.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

import numpy as np

from ticketsolver.errors import InvalidProblemError, SolverError, SolverUnavailableError
from ticketsolver.solvers._mip import (
    check_positive,
    check_threads,
    import_optional,
    logger,
    max_magnitude,
    solve_each,
)
from ticketsolver.solvers.base import Progress, RawSolution, Solutions, Solver, SolveStatus
from ticketsolver.solvers.cpsat import CpSatSolver

__all__ = ["GurobiSolver"]


class _NeedsFallback(Exception):
    """Gurobi produced no answer for one problem; the message is the reason."""


class GurobiSolver(Solver):
    """Gurobi with MIPGap 0 and tolerances of 1e-9; falls back to :class:`CpSatSolver`.

    A batch's ``tolerance`` is ``1e-9 * (2 + M)``, M = max over the batch of ``|w| + sum |c_i|``: Gurobi
    may violate each error constraint by FeasibilityTol (1e-9, relative to the row's size after its
    scaling) and leave each x_i off 0/1 by IntFeasTol (1e-9), which moves ``c.x`` by up to
    ``1e-9 * sum |c_i|`` when x is rounded. An answer is ``optimal`` only if Gurobi reports OPTIMAL *and*
    the recomputed float64 error is at most Gurobi's proven lower bound ``ObjBound`` plus this tolerance,
    so an optimal error is never more than the tolerance above the true optimum. After a fallback the
    batch's tolerance is the larger of this and CP-SAT's.

    A problem Gurobi cannot answer goes to CP-SAT at once, so problems finish (and progress is reported)
    in order. One gurobipy environment serves the solver, and it serves one thread at a time: batches
    solved from several threads share the licence and take turns per problem.

    Args:
        time_limit: seconds per problem (Gurobi's ``TimeLimit``).
        threads: Gurobi ``Threads`` per problem (and CP-SAT workers after a fallback).
        fallback: solve with CP-SAT when Gurobi cannot (missing, unlicensed, no solution in time);
            with ``False`` such problems raise :class:`SolverUnavailableError` or are marked ``failed``.
        fallback_time_limit: CP-SAT's seconds per problem after a fallback (default: ``time_limit``).

    Raises:
        InvalidProblemError: a non-positive time limit, threads < 1, a fallback that is not a bool.
        SolverUnavailableError: (at solve) gurobipy missing or unlicensed with ``fallback=False``, or
            a fallback needed while OR-Tools is missing.

    Example:
        >>> import numpy as np
        >>> sol = GurobiSolver().solve(np.array([[0.5, 0.25, -0.125]]), np.array([0.375]))
        >>> sol.masks.tolist(), sol.status.tolist()
        ([[True, False, True]], ['optimal'])
    """

    name = "gurobi"
    #: FeasibilityTol, IntFeasTol and OptimalityTol given to Gurobi
    GUROBI_TOL = 1e-9

    def __init__(
        self,
        time_limit: float = 60.0,
        threads: int = 1,
        fallback: bool = True,
        fallback_time_limit: float | None = None,
    ) -> None:
        self.time_limit = check_positive("time_limit", time_limit)
        self.threads = check_threads(threads)
        if not isinstance(fallback, bool):
            raise InvalidProblemError(f"fallback must be a bool, got {fallback!r}")
        self.fallback = fallback
        self.fallback_time_limit = (
            self.time_limit
            if fallback_time_limit is None
            else check_positive("fallback_time_limit", fallback_time_limit)
        )
        self._cpsat = CpSatSolver(time_limit=self.fallback_time_limit, threads=self.threads)
        self._env: Any = None  # one gurobipy.Env per solver, started on first use
        self._lock = threading.Lock()  # guards the Env: gurobipy environments are not thread-safe

    def _solve_batch(
        self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, progress: Progress
    ) -> RawSolution:
        tolerance = self.GUROBI_TOL * (2 + max_magnitude(coeffs, targets, usable))
        try:
            gp = import_optional("gurobipy", "gurobi", self.name)
            env = self._start_env(gp)
        except SolverUnavailableError as exc:
            if not self.fallback:
                raise
            return self._all_to_cpsat(coeffs, targets, usable, str(exc), tolerance, progress)

        backends = np.full(len(targets), self.name, dtype=object)
        fallbacks: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        fallback_tolerances = [0.0]

        def solve_one(b: int, c: np.ndarray, w: float) -> tuple[np.ndarray, str]:
            try:
                with self._lock:
                    return self._solve_one(gp, env, c, w, tolerance)
            except _NeedsFallback as exc:
                reason = str(exc)
            except gp.GurobiError as exc:  # e.g. 10010, the model is too large for the pip licence
                if not self.fallback:
                    unlicensed = exc.errno in (gp.GRB.Error.NO_LICENSE, gp.GRB.Error.SIZE_LIMIT_EXCEEDED)
                    raise (SolverUnavailableError if unlicensed else SolverError)(
                        f"gurobi failed on problem {b} (error {exc.errno}: {exc}); with fallback=True "
                        "such problems go to cpsat (pip install 'ticketsolver[ortools]')"
                    ) from exc
                reason = f"gurobi error {exc.errno}: {exc}"
            if not self.fallback:  # the problem stays failed, and says why
                failed.append({"problem": b, "reason": reason})
                return np.zeros(len(c), dtype=bool), SolveStatus.FAILED.value
            logger.warning("gurobi: problem %d falls back to cpsat: %s", b, reason)
            sub = self._cpsat_or_raise(c[None, :], np.array([w]), np.ones((1, len(c)), dtype=bool), reason)
            fallbacks.append({"problem": b, "reason": reason})
            fallback_tolerances.append(sub.tolerance)
            backends[b] = self._cpsat.name
            return sub.masks[0], str(sub.status[0])

        masks, status = solve_each(coeffs, targets, usable, solve_one, progress)
        info: dict[str, Any] = {"fallbacks": fallbacks, "failed": failed}
        if fallbacks:
            info["scale"] = self._cpsat.scale
        return RawSolution(
            masks=masks,
            status=status.astype(str),
            backends=backends.astype(str),
            info=info,
            tolerance=max(tolerance, *fallback_tolerances),
        )

    def _start_env(self, gp: ModuleType) -> Any:
        """The solver's Env, started quietly on first use; an unusable licence raises here."""
        with self._lock:
            if self._env is None:
                try:
                    env = gp.Env(empty=True)
                    env.setParam("OutputFlag", 0)  # before start(), so not even the licence banner prints
                    env.start()
                except gp.GurobiError as exc:  # no licence file, expired, wrong host...
                    raise SolverUnavailableError(
                        f"gurobi has no usable licence (error {exc.errno}: {exc}); "
                        "the pip wheel of pip install 'ticketsolver[gurobi]' brings a size-limited one"
                    ) from exc
                self._env = env
            return self._env

    def _solve_one(self, gp: ModuleType, env: Any, c: np.ndarray, w: float, tolerance: float) -> tuple[np.ndarray, str]:
        grb = gp.GRB
        with gp.Model(env=env) as model:
            # variables
            x = model.addMVar(len(c), vtype=grb.BINARY, name="x")  # x[i] = 1: coefficient i is kept
            e = model.addVar(lb=0.0, name="e")  # the error |w - c.x|

            # constraints: e >= |w - c.x|, as two linear inequalities
            model.addConstr(e >= w - c @ x, name="above")
            model.addConstr(e >= c @ x - w, name="below")

            # objective
            model.setObjective(e, grb.MINIMIZE)

            # parameters: no gap, tolerances far below the errors that matter (~1e-7 at n = 21)
            model.Params.OutputFlag = 0
            model.Params.MIPGap = 0.0
            model.Params.MIPGapAbs = 0.0
            model.Params.FeasibilityTol = self.GUROBI_TOL
            model.Params.IntFeasTol = self.GUROBI_TOL
            model.Params.OptimalityTol = self.GUROBI_TOL
            model.Params.NumericFocus = 3
            model.Params.TimeLimit = self.time_limit
            model.Params.Threads = self.threads

            # solve
            model.optimize()

            # map the status; "optimal" only when the float64 error agrees with the proven bound
            if model.SolCount == 0:
                if model.Status == grb.TIME_LIMIT:
                    raise _NeedsFallback(f"time limit of {self.time_limit:g} s reached without a solution")
                raise _NeedsFallback(f"no solution (Gurobi status {model.Status})")
            chosen = np.asarray(x.X) > 0.5
            if model.Status == grb.OPTIMAL:
                error = abs(w - float((c * chosen).sum()))
                proven = error <= model.ObjBound + tolerance
                return chosen, (SolveStatus.OPTIMAL if proven else SolveStatus.FEASIBLE).value
            if model.Status == grb.TIME_LIMIT:
                return chosen, SolveStatus.TIME_LIMIT.value
            return chosen, SolveStatus.FEASIBLE.value  # interrupted, node or solution limit, numerics

    def _all_to_cpsat(
        self,
        coeffs: np.ndarray,
        targets: np.ndarray,
        usable: np.ndarray,
        reason: str,
        tolerance: float,
        progress: Progress,
    ) -> RawSolution:
        """Gurobi cannot run at all (missing, unlicensed): the whole batch goes to CP-SAT."""
        logger.warning("gurobi: all %d problems fall back to cpsat: %s", len(targets), reason)
        sub = self._cpsat_or_raise(coeffs, targets, usable, reason, progress)
        return RawSolution(
            masks=sub.masks,
            status=sub.status,
            backends=np.full(len(targets), self._cpsat.name),
            info={
                "fallbacks": [{"problem": b, "reason": reason} for b in range(len(targets))],
                "failed": [],
                "scale": self._cpsat.scale,
            },
            tolerance=max(tolerance, sub.tolerance),
        )

    def _cpsat_or_raise(
        self,
        coeffs: np.ndarray,
        targets: np.ndarray,
        usable: np.ndarray,
        reason: str,
        progress: Progress | None = None,
    ) -> Solutions:
        """CP-SAT's answers to problems Gurobi could not solve (for ``reason``); its absence is an error."""
        try:
            return self._cpsat.solve(coeffs, targets, usable, progress=progress)
        except SolverUnavailableError as exc:
            raise SolverUnavailableError(
                f"gurobi cannot solve ({reason}) and its fallback cpsat is unavailable: {exc}"
            ) from exc

    def close(self) -> None:
        """Release the Gurobi environment (and its licence token); the next solve starts a new one."""
        with self._lock:
            if self._env is not None:
                self._env.dispose()
                self._env = None

    def __repr__(self) -> str:
        return f"GurobiSolver(time_limit={self.time_limit:g}, threads={self.threads}, fallback={self.fallback})"
