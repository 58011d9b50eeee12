"""Solve to a stated tolerance: exact meet-in-the-middle over growing free subsets (``auto`` with tolerance > 0).

A weight with k usable coefficients rarely needs its exact optimum: 2^24 subset sums spread over a range
of order one already leave a gap of ~1e-8 around a typical target, so a subset that meets a tolerance of
1e-9 is usually found among far fewer coefficients than k. Each stage of the ladder therefore leaves m of
a problem's usable coefficients *free* and *fixes* the rest: greedily, largest first, so that the fixed sum
lands near ``target - (sum of free)/2``, the centre of the free subset sums, where they are densest. Exact
MITM over the free part then costs ~2^(m/2) instead of ~2^(k/2). Problems that meet the tolerance leave;
the others try again at the next, larger stage with a fresh free subset, an independent chance. A problem
with k <= m is solved exactly over all its coefficients and leaves as ``optimal``. Progress counts the
problems that have left, after each stage.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ticketsolver.errors import InvalidProblemError
from ticketsolver.solvers.base import Progress, RawSolution, Solver, SolveStatus, no_progress, recompute
from ticketsolver.solvers.limits import MAX_N, check_magnitude

__all__ = ["LADDER_STAGES", "solve_ladder"]

#: free coefficients per stage; the last one, MAX_N, solves every problem with up to 40 usable exactly
LADDER_STAGES: tuple[int, ...] = (24, 28, 32, 36, MAX_N)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser, elementwise on uint64 (wrapping arithmetic): a well-mixed hash of x."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _stage_keys(coeffs: np.ndarray, usable: np.ndarray, stage: int) -> np.ndarray:
    """Random-looking uint64 sort keys per coefficient; the m smallest usable ones are the free subset.

    The keys hash (stage, position, coefficient bits) rather than coming from a generator stream: a
    problem's free subsets then depend on the problem alone, not on the other problems in its batch, so
    the answer is the same however a build is chunked (rounds, Ray tasks, auto's routing) and on any
    machine or NumPy version. Unusable entries get the largest key and sort last.
    """
    salt = _splitmix64(np.array([stage], dtype=np.uint64))
    position = _splitmix64(np.arange(coeffs.shape[1], dtype=np.uint64) ^ salt)
    bits = np.ascontiguousarray(coeffs, dtype=np.float64).view(np.uint64)
    keys = _splitmix64(bits ^ position) >> np.uint64(1)  # below the unusable key
    return np.where(usable, keys, _MASK64)


def _fix(coeffs: np.ndarray, targets: np.ndarray, fixed: np.ndarray, free_total: np.ndarray) -> np.ndarray:
    """Which fixed coefficients to include: largest |c| first, each when it brings the sum closer to the goal.

    The goal ``target - free_total / 2`` puts the shifted target at the centre of the free subset sums.
    The loop runs over coefficient ranks, vectorised over problems; problems are ordered by how many
    fixed coefficients they have, so rank j touches only the prefix that has a j-th one (a few bias
    problems with thousands of coefficients do not make every weight pay for their length).
    """
    n_fixed = fixed.sum(1)
    include = np.zeros(fixed.shape, dtype=bool)
    width = int(n_fixed.max())
    if width == 0:
        return include
    rank = np.argsort(np.where(fixed, -np.abs(coeffs), np.inf), axis=1, kind="stable")[:, :width]
    rows = np.argsort(-n_fixed, kind="stable")
    values = np.take_along_axis(coeffs, rank, axis=1)[rows]
    goal = (targets - free_total / 2)[rows]
    active = np.searchsorted(-n_fixed[rows], -np.arange(width), side="left")  # rows with a rank-j coefficient
    total = np.zeros(len(rows))
    chosen = np.zeros((len(rows), width), dtype=bool)
    for j in range(width):
        a = active[j]
        v, s, g = values[:a, j], total[:a], goal[:a]
        closer = np.abs(s + v - g) < np.abs(s - g)
        chosen[:a, j] = closer
        total[:a] = np.where(closer, s + v, s)
    unsorted = np.empty_like(chosen)
    unsorted[rows] = chosen
    np.put_along_axis(include, rank, unsorted, axis=1)  # ranks past n_fixed carry False onto False
    return include


def _solve_stage(
    engine: Solver, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, m: int, stage: int
) -> np.ndarray:
    """Masks of one stage: min(k, m) free coefficients solved exactly, the rest fixed beforehand."""
    width = min(m, coeffs.shape[1])
    free_idx = np.argsort(_stage_keys(coeffs, usable, stage), axis=1, kind="stable")[:, :width]
    free_usable = np.arange(width)[None, :] < np.minimum(usable.sum(1), m)[:, None]
    free = np.zeros(usable.shape, dtype=bool)
    np.put_along_axis(free, free_idx, free_usable, axis=1)
    packed = np.where(free_usable, np.take_along_axis(coeffs, free_idx, axis=1), 0.0)
    include = _fix(coeffs, targets, usable & ~free, packed.sum(1))
    # the engine sees only the free part, so its usable-count and magnitude checks apply to it
    sol = engine.solve(packed, targets - (coeffs * include).sum(1), free_usable)
    np.put_along_axis(include, free_idx, sol.masks, axis=1)  # free positions were never fixed-included
    return include


def solve_ladder(
    engine: Solver,
    coeffs: np.ndarray,
    targets: np.ndarray,
    usable: np.ndarray,
    tolerance: float,
    stages: tuple[int, ...] = LADDER_STAGES,
    progress: Progress = no_progress,
) -> RawSolution:
    """Solve a validated batch until each problem's error is within ``tolerance`` or the stages run out.

    Args:
        engine: an exact engine (``mitm``) for up to ``max(stages)`` usable coefficients.
        coeffs, targets, usable: a validated batch (see :func:`~ticketsolver.solvers.base.validate_batch`).
        tolerance: absolute error at which a problem stops.
        stages: free coefficients per stage, increasing.
        progress: called after each stage with (problems that have left, B).

    Returns:
        The best mask of every problem; status ``optimal`` (solved exactly at a stage with k <= m),
        ``within_tolerance`` (error <= tolerance) or ``feasible`` (neither, after the last stage);
        ``info["ladder"]`` counts the problems entering and leaving each stage; ``tolerance`` is
        ``tolerance``.

    Raises:
        InvalidProblemError: stages not increasing within [1, MAX_N]; |target| + sum |c| beyond the exact
            engine's range.
    """
    if not stages or list(stages) != sorted(set(stages)) or not 1 <= stages[0] <= stages[-1] <= MAX_N:
        raise InvalidProblemError(f"stages must increase strictly within [1, {MAX_N}], got {stages!r}")
    check_magnitude(coeffs, targets, usable)
    counts = usable.sum(1)
    best = np.zeros(coeffs.shape, dtype=bool)
    best_error = np.full(len(targets), np.inf)
    status = np.full(len(targets), SolveStatus.FEASIBLE.value, dtype=object)
    open_rows = np.arange(len(targets))
    report: list[dict[str, Any]] = []
    for stage, m in enumerate(stages):
        entered = int(open_rows.size)
        exact = within = np.zeros(0, dtype=bool)
        if entered:
            c, t, u = coeffs[open_rows], targets[open_rows], usable[open_rows]
            masks = _solve_stage(engine, c, t, u, m, stage)
            # errors as Solver.solve will report them, so that a status never contradicts its error
            _, errors = recompute(c, t, masks)
            better = errors < best_error[open_rows]
            best[open_rows[better]], best_error[open_rows[better]] = masks[better], errors[better]
            exact = counts[open_rows] <= m
            within = ~exact & (best_error[open_rows] <= tolerance)
            status[open_rows[exact]] = SolveStatus.OPTIMAL.value
            status[open_rows[within]] = SolveStatus.WITHIN_TOLERANCE.value
            open_rows = open_rows[~exact & ~within]
        report.append(
            {"free": m, "entered": entered, "optimal": int(exact.sum()), "within_tolerance": int(within.sum())}
        )
        if entered:
            progress(len(targets) - int(open_rows.size), len(targets))
    return RawSolution(
        masks=best,
        status=status.astype(str),
        tolerance=tolerance,
        info={"tolerance": tolerance, "ladder": report, "feasible": int(open_rows.size)},
    )
