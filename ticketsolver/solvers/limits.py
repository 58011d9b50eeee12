"""What the exact engines accept: the usable-count limit and the magnitude check they share.

Both meet-in-the-middle engines (:mod:`~ticketsolver.solvers.mitm`, numba; :mod:`~ticketsolver.solvers.mitm_torch`,
torch) and the ladder built on them (:mod:`~ticketsolver.solvers.ladder`) refuse the same problems with the
same typed errors; this module is the one place those rules live, so the engines need not import each other.
"""

from __future__ import annotations

import numpy as np

from ticketsolver.errors import InvalidProblemError, ProblemTooLargeError

__all__ = ["MAGNITUDE_LIMIT", "MAX_N", "check_magnitude", "check_usable_count"]

#: the largest usable count solved exactly: 2^20 sums per half (~50 MB of buffers per numba thread)
MAX_N = 40
#: problems whose |target| + sum |c| reach this are refused: the numba engine's sentinels sit at 1e300,
#: and real weights are many orders of magnitude below
MAGNITUDE_LIMIT = 1e250


def check_usable_count(k_max: int) -> None:
    """Raise :class:`ProblemTooLargeError` when a problem has more usable coefficients than :data:`MAX_N`.

    >>> check_usable_count(40)
    >>> check_usable_count(41)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ticketsolver.errors.ProblemTooLargeError: mitm solves problems with up to 40 usable coefficients exactly, got 41...
    """
    if k_max > MAX_N:
        raise ProblemTooLargeError(
            f"mitm solves problems with up to {MAX_N} usable coefficients exactly, got {k_max}; "
            "use a MIP backend ('gurobi', 'cpsat' or 'cbc'), or 'auto' which routes larger problems there"
        )


def check_magnitude(coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray | None = None) -> None:
    """Refuse values so large that subset sums could reach the exact engines' sentinels.

    Only usable coefficients count: padding may hold anything (it is zeroed by validation, but a caller
    passing raw arrays need not rely on that).

    Raises:
        InvalidProblemError: naming the first problem whose ``|target| + sum |c|`` reaches :data:`MAGNITUDE_LIMIT`.
    """
    magnitudes = np.abs(coeffs) if usable is None else np.where(usable, np.abs(coeffs), 0.0)
    reach = magnitudes.sum(1) + np.abs(targets)
    if not (reach < MAGNITUDE_LIMIT).all():
        row = int(np.flatnonzero(~(reach < MAGNITUDE_LIMIT))[0])
        raise InvalidProblemError(
            f"problem {row} has |target| + sum |c| = {reach[row]:.3g}, beyond the exact engine's "
            f"range ({MAGNITUDE_LIMIT:.0e}); rescale the problem"
        )
