"""``auto``: the exact engine where it applies, the MIP chain (gurobi -> cpsat) beyond it."""

from __future__ import annotations

import logging

import numpy as np

from ticketsolver.solvers.base import RawSolution, Solver
from ticketsolver.solvers.mitm import MAX_N, make_mitm

__all__ = ["AutoSolver"]

log = logging.getLogger("ticketsolver.solvers")


class AutoSolver(Solver):
    """Routes problems with at most 40 usable coefficients to ``mitm``, larger ones to ``gurobi``
    (which itself falls back to ``cpsat``). ``backends`` records who answered each problem.

    Args:
        mip_time_limit: seconds per problem for the MIP chain.
    """

    name = "auto"
    tolerance = 0.0

    def __init__(self, mip_time_limit: float = 60.0) -> None:
        if not mip_time_limit > 0:
            raise ValueError(f"mip_time_limit must be positive, got {mip_time_limit}")
        self.exact = make_mitm()
        self.mip_time_limit = mip_time_limit

    def _solve_batch(self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray) -> RawSolution:
        large = usable.sum(1) > MAX_N
        if not large.any():  # the common case: the batch is validated already, hand it over whole
            raw = self.exact._solve_batch(coeffs, targets, usable)
            return RawSolution(
                masks=raw.masks, status=raw.status, backends=np.full(len(targets), self.exact.name), info=raw.info
            )
        masks = np.zeros(coeffs.shape, dtype=bool)
        status = np.empty(len(targets), dtype=object)
        backends = np.empty(len(targets), dtype=object)
        info: dict[str, object] = {}
        small = ~large
        if small.any():
            sol = self.exact.solve(coeffs[small], targets[small], usable[small])
            masks[small], status[small], backends[small] = sol.masks, sol.status, sol.backends
        if large.any():
            from ticketsolver.solvers.gurobi import GurobiSolver

            log.info(
                "auto: %d problems exceed %d usable coefficients; solving them with the MIP chain",
                int(large.sum()),
                MAX_N,
            )
            mip = GurobiSolver(time_limit=self.mip_time_limit)
            sol = mip.solve(coeffs[large], targets[large], usable[large])
            masks[large], status[large], backends[large] = sol.masks, sol.status, sol.backends
            # the MIP's optimality is proven only within its tolerance; say so
            self.tolerance = max(self.tolerance, sol.tolerance)
            info["mip"] = sol.info
        return RawSolution(masks=masks, status=status.astype(str), backends=backends.astype(str), info=info)
