"""Solving one layer's subset sums with IteRand-style resampling rounds.

A *unit* is what one draw index belongs to: a target weight (or bias entry) whose coefficient entries can
be redrawn without touching any other unit (construction I: one of a weight's two problems, x+ or x-, each
owning its own entries of V). A unit may hold several problems; its error is the largest of theirs. Round 0
solves every unit on draw 0; round r redraws the units whose best error still exceeds the tolerance from
stream r, and keeps a draw only where it is strictly better. The draw index per unit is recorded (uint8).
Progress within a round comes from the solver as its problems finish (per problem in the MIP backends), so a
layer's fraction advances within a chunk, not only between chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ticketsolver.config import MAX_RESAMPLE
from ticketsolver.solvers import Progress, Solver, SolveStatus

__all__ = ["MAX_RESAMPLE", "ProblemMaker", "RoundsResult", "solve_with_resampling"]

#: problems per solver call: bounds memory (progress comes from the solver, within each call)
CHUNK = 1 << 16

#: (units, draw) -> coeffs (S, P, n), usable (S, P, n), targets (S, P)
ProblemMaker = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray]]
#: (round, problems solved in this round, problems of this round)
RoundProgress = Callable[[int, int, int], None]


@dataclass
class RoundsResult:
    """Best masks, errors and draw of every unit after all rounds."""

    masks: np.ndarray  # (U, P, n) bool
    errors: np.ndarray  # (U,) float64: max over the unit's problems
    draws: np.ndarray  # (U,) uint8
    usable: np.ndarray  # (U, P) int: usable coefficients per problem, at the kept draw
    problems_solved: int = 0
    redraws: int = 0  # unit redraws over rounds 1.. (each examines one more draw of the unit's values)
    status_counts: dict[str, int] = field(default_factory=dict)
    backends: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _tally(labels: np.ndarray) -> dict[str, int]:
    """Occurrences of each label; nearly always a single one, counted without sorting strings."""
    if (labels == labels[0]).all():
        return {str(labels[0]): int(labels.size)}
    names, counts = np.unique(labels, return_counts=True)
    return dict(zip(names.tolist(), counts.tolist(), strict=True))


def _solve_chunked(
    solver: Solver,
    coeffs: np.ndarray,
    usable: np.ndarray,
    targets: np.ndarray,
    result: RoundsResult,
    tick: Progress,
) -> tuple[np.ndarray, np.ndarray]:
    """Solve flat problems in chunks; returns masks (B, n) and errors (B,).

    ``tick(done, B)`` follows the solver's own progress, offset by the chunks already solved; the solver
    reports each chunk's end itself, and an exception from ``tick`` stops it within the chunk.
    """
    masks = np.zeros(coeffs.shape, dtype=bool)
    errors = np.zeros(coeffs.shape[0])
    for start in range(0, coeffs.shape[0], CHUNK):
        sl = slice(start, start + CHUNK)
        sol = solver.solve(coeffs[sl], targets[sl], usable[sl], progress=_after(start, coeffs.shape[0], tick))
        masks[sl], errors[sl] = sol.masks, sol.errors
        result.seconds += sol.seconds
        result.problems_solved += len(sol)
        for key, counter in ((sol.status, result.status_counts), (sol.backends, result.backends)):
            for name, count in _tally(key).items():
                counter[name] = counter.get(name, 0) + count
    return masks, errors


def _after(start: int, total: int, tick: Progress) -> Progress:
    """A chunk's progress as progress of the whole round: ``done`` problems of the chunk at ``start``."""
    return lambda done, _chunk: tick(start + done, total)


def solve_with_resampling(
    solver: Solver,
    n_units: int,
    make_problems: ProblemMaker,
    resample: int,
    tolerance: float,
    progress: RoundProgress | None = None,
) -> RoundsResult:
    """Solve every unit, then redraw those above ``tolerance`` for up to ``resample`` rounds.

    Args:
        solver: the subset-sum backend.
        n_units: number of units.
        make_problems: builds the problems of the given units at the given draw.
        resample: number of extra rounds (0 = a single draw).
        tolerance: units with error above it are redrawn.
        progress: called with (round, solved, total) of the current round as the solver reports problems
            solved (after each problem for the MIP backends, after each vectorised part otherwise); an
            exception it raises propagates and stops the solve.
    """
    report = progress or (lambda *_: None)
    result: RoundsResult | None = None
    redo = np.arange(n_units)
    for draw in range(resample + 1):
        if result is not None:
            redo = np.flatnonzero(result.errors > tolerance)
            if redo.size == 0:
                break
            result.redraws += int(redo.size)
        tick = functools.partial(report, draw)
        # the problems of CHUNK units at a time: a layer's coefficients are never all in memory at once (each
        # unit's problems depend on the unit alone, so the answers do not depend on the chunking)
        for first in range(0, max(int(redo.size), 1), CHUNK):
            units = redo[first : first + CHUNK]
            coeffs, usable, targets = make_problems(units, draw)
            count, n_problems, n = coeffs.shape
            if result is None:  # every unit starts unsolved (error +inf), so round 0 keeps all its answers
                result = RoundsResult(
                    masks=np.zeros((n_units, n_problems, n), dtype=bool),
                    errors=np.full(n_units, np.inf),
                    draws=np.zeros(n_units, dtype=np.uint8),
                    usable=np.zeros((n_units, n_problems), dtype=np.int64),
                )
            flat_masks, flat_errors = _solve_chunked(
                solver,
                coeffs.reshape(-1, n),
                usable.reshape(-1, n),
                targets.reshape(-1),
                result,
                _after(first * n_problems, int(redo.size) * n_problems, tick),
            )
            errors = flat_errors.reshape(count, n_problems).max(1)
            better = errors < result.errors[units]
            won = units[better]
            result.errors[won] = errors[better]
            result.masks[won] = flat_masks.reshape(count, n_problems, n)[better]
            result.draws[won] = draw
            result.usable[won] = usable.sum(2)[better]
    assert result is not None
    return result


def status_ok(result: RoundsResult) -> bool:
    """True when every problem was solved (no ``failed`` status)."""
    return result.status_counts.get(SolveStatus.FAILED.value, 0) == 0
