"""Brute force: the reference every other backend is checked against. Enumerates all 2^k subsets."""

from __future__ import annotations

import numpy as np

from ticketsolver.errors import InvalidProblemError, ProblemTooLargeError
from ticketsolver.solvers.base import Progress, RawSolution, Solver, SolveStatus

__all__ = ["BruteForceSolver"]


class BruteForceSolver(Solver):
    """Exact by enumeration of every subset of the usable coefficients; for tests and tiny n.

    Args:
        max_n: the largest usable count accepted (2^max_n subsets are enumerated per problem).

    Raises:
        InvalidProblemError: ``max_n`` outside [1, 24].
    """

    name = "bruteforce"

    def __init__(self, max_n: int = 20) -> None:
        if isinstance(max_n, bool) or not isinstance(max_n, (int, np.integer)) or not 1 <= max_n <= 24:
            raise InvalidProblemError(f"max_n must be an int in [1, 24], got {max_n!r}")
        self.max_n = int(max_n)

    def _solve_batch(
        self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, progress: Progress
    ) -> RawSolution:
        k_max = int(usable.sum(1).max())
        if k_max > self.max_n:
            raise ProblemTooLargeError(
                f"bruteforce enumerates 2^k subsets and accepts k <= {self.max_n} usable coefficients, "
                f"got {k_max}; use 'mitm' (exact, n <= 40) instead"
            )
        masks = np.zeros(coeffs.shape, dtype=bool)
        for b in range(coeffs.shape[0]):
            idx = np.flatnonzero(usable[b])
            k = idx.size
            # every subset as a row of bits; the empty subset is row 0
            bits = ((np.arange(2**k)[:, None] >> np.arange(k)[None, :]) & 1).astype(bool)
            sums = (bits * coeffs[b, idx]).sum(1)
            best = int(np.argmin(np.abs(targets[b] - sums)))
            masks[b, idx] = bits[best]
            progress(b + 1, len(targets))
        return RawSolution(masks=masks, status=np.full(len(targets), SolveStatus.OPTIMAL.value), tolerance=0.0)
