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
from numba import njit

from ticketsolver.errors import InvalidProblemError
from ticketsolver.solvers.base import Progress, RawSolution, Solver, SolveStatus, no_progress, recompute
from ticketsolver.solvers.limits import MAX_N, check_magnitude

__all__ = ["LADDER_STAGES", "solve_ladder"]

#: free coefficients per stage; the last one, MAX_N, solves every problem with up to 40 usable exactly. A stage
#: costs ~2^(m/2) and its chance grows like 2^m, so the first stage is where the schedule is won: at n = 30 and
#: tolerance 1e-8 on construction L's conv layers (benchmarks/l_layers.py) a first stage of 26 lets about half to four
#: fifths of the problems leave, against 15-35 % at 24, for 5-20 % less CPU time than (24, 28, ...) (64 to 512
#: channels; the larger the layer, the larger the gain)
LADDER_STAGES: tuple[int, ...] = (26, 28, 32, 36, MAX_N)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
#: rows up to this many coefficients are ordered by insertion sort, longer ones (bias problems) by merge sort
_SHORT_ROW = 64


@njit(cache=True, nogil=True, inline="always")
def _splitmix64(x):  # pragma: no cover - compiled
    """SplitMix64's finaliser of a uint64 (wrapping arithmetic): a well-mixed hash of x."""
    z = x + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, nogil=True)
def _stage_positions(n, stage):  # pragma: no cover - compiled
    """The per-position salt of a stage's keys: splitmix64(position ^ splitmix64(stage))."""
    salt = _splitmix64(np.uint64(stage))
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        out[i] = _splitmix64(np.uint64(i) ^ salt)
    return out


@njit(cache=True, nogil=True)
def _stable_order(values, order):  # pragma: no cover - compiled
    """``order`` = the indices of ``values`` ascending, equal values by index (NumPy's stable argsort)."""
    n = values.shape[0]
    if n > _SHORT_ROW:
        order[:] = np.argsort(values, kind="mergesort")
        return
    for i in range(n):
        v = values[i]
        j = i
        while j > 0 and values[order[j - 1]] > v:
            order[j] = order[j - 1]
            j -= 1
        order[j] = i


@njit(cache=True, nogil=True)
def _choose_free(coeffs, bits, usable, positions, m, free_idx, free_usable, packed, fixed):  # pragma: no cover
    """Per problem: the free coefficients of a stage, packed, and the usable ones left to fix.

    A coefficient's key hashes (stage, position, coefficient bits) rather than coming from a generator
    stream: a problem's free subsets then depend on the problem alone, not on the other problems in its
    batch, so the answer is the same however a build is chunked (rounds, Ray tasks, auto's routing) and on
    any machine or NumPy version. Unusable entries get the largest key and sort last; the ``width`` smallest
    keys (ties by position) are the free slots, the first min(k, m) of them usable.
    """
    rows, n = coeffs.shape
    width = free_idx.shape[1]
    keys = np.empty(n, dtype=np.uint64)
    order = np.empty(n, dtype=np.int64)
    for r in range(rows):
        k = 0
        for i in range(n):
            fixed[r, i] = usable[r, i]
            if usable[r, i]:
                keys[i] = _splitmix64(bits[r, i] ^ positions[i]) >> np.uint64(1)  # below the unusable key
                k += 1
            else:
                keys[i] = _MASK64
        _stable_order(keys, order)
        count = min(k, m)
        for j in range(width):
            i = order[j]
            free_idx[r, j] = i
            free_usable[r, j] = j < count
            packed[r, j] = coeffs[r, i] if j < count else 0.0
            if j < count:
                fixed[r, i] = False


@njit(cache=True, nogil=True)
def _fix_rows(coeffs, fixed, goal, include):  # pragma: no cover - compiled
    """Greedy inclusion of each problem's fixed coefficients, largest |c| first (ties by position)."""
    rows, n = coeffs.shape
    magnitudes = np.empty(n, dtype=np.float64)
    order = np.empty(n, dtype=np.int64)
    for r in range(rows):
        for i in range(n):
            magnitudes[i] = -abs(coeffs[r, i]) if fixed[r, i] else np.inf
        _stable_order(magnitudes, order)
        total = 0.0
        g = goal[r]
        for j in range(n):
            i = order[j]
            if not fixed[r, i]:
                break  # the unfixed entries sort last
            v = coeffs[r, i]
            if abs(total + v - g) < abs(total - g):
                include[r, i] = True
                total = total + v


def _fix(coeffs: np.ndarray, targets: np.ndarray, fixed: np.ndarray, free_total: np.ndarray) -> np.ndarray:
    """Which fixed coefficients to include: largest |c| first, each when it brings the sum closer to the goal.

    The goal ``target - free_total / 2`` puts the shifted target at the centre of the free subset sums.
    Compiled, one problem at a time, so a few bias problems with thousands of coefficients do not make every
    weight pay for their length.
    """
    include = np.zeros(fixed.shape, dtype=bool)
    goal = targets - free_total / 2
    _fix_rows(np.ascontiguousarray(coeffs, dtype=np.float64), np.ascontiguousarray(fixed), goal, include)
    return include


def _solve_stage(
    engine: Solver, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, m: int, stage: int
) -> np.ndarray:
    """Masks of one stage: min(k, m) free coefficients solved exactly, the rest fixed beforehand."""
    rows, n = coeffs.shape
    width = min(m, n)
    c = np.ascontiguousarray(coeffs, dtype=np.float64)
    free_idx = np.empty((rows, width), dtype=np.int64)
    free_usable = np.empty((rows, width), dtype=bool)
    packed = np.empty((rows, width), dtype=np.float64)
    fixed = np.empty((rows, n), dtype=bool)
    positions = _stage_positions(n, stage)
    _choose_free(c, c.view(np.uint64), np.ascontiguousarray(usable), positions, m, free_idx, free_usable, packed, fixed)
    include = _fix(c, targets, fixed, packed.sum(1))
    # the engine sees only the free part, so its usable-count and magnitude checks apply to it
    sol = engine.solve(packed, targets - (c * include).sum(1), free_usable)
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
