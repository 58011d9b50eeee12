"""Progress within a batch: ``solve(..., progress=)`` reports problems as they finish, and a callback that
raises stops the solve (that is how a worker stops a build). Per-problem backends report every problem;
vectorised engines report each part they solve; every solve ends with ``(B, B)``; and construction's rounds
turn it into a layer fraction that moves within a chunk.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from ticketsolver.construction.rounds import solve_with_resampling
from ticketsolver.solvers import Progress, RawSolution, Solver, SolveStatus, get_solver

from .backends import BACKENDS, make_backend


class _Stop(Exception):
    """What a worker's callback raises when its job is cancelled."""


def record() -> tuple[list[tuple[int, int]], Progress]:
    calls: list[tuple[int, int]] = []
    return calls, lambda done, total: calls.append((done, total))


def stop_at(first: int) -> Progress:
    def progress(done: int, total: int) -> None:
        if done >= first:
            raise _Stop(f"stopped at {done}/{total}")

    return progress


def count_calls(monkeypatch: pytest.MonkeyPatch, solver: Solver | type[Solver], method: str) -> list[int]:
    """Counts the real calls of a method of ``solver`` (an instance or a class); the method still runs."""
    calls: list[int] = []
    real = getattr(solver, method)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(solver, method, counted)
    return calls


def problems(b: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, k])
    a = math.sqrt(8 * 1.5 * 0.3 / k)
    return rng.uniform(-a, a, (b, k)) * rng.uniform(-a, a, (b, k)), np.clip(rng.normal(0, 0.1, b), -0.3, 0.3)


# --- per-problem backends -------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*BACKENDS, "bruteforce"])
def test_per_problem_backends_report_after_each_problem(name: str) -> None:
    solver = get_solver(name) if name == "bruteforce" else make_backend(name)
    coeffs, targets = problems(5, 8, seed=1)
    usable = np.ones(coeffs.shape, dtype=bool)
    usable[2] = False  # a problem without a model is finished too
    calls, progress = record()
    solver.solve(coeffs, targets, usable, progress=progress)
    assert calls == [(done, 5) for done in range(1, 6)]


@pytest.mark.parametrize("name", BACKENDS)
def test_a_raising_callback_stops_a_mip_backend_within_one_problem(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    solver = make_backend(name)
    models = count_calls(monkeypatch, solver, "_solve_one")
    coeffs, targets = problems(6, 10, seed=2)
    with pytest.raises(_Stop, match="stopped at 1/6"):
        solver.solve(coeffs, targets, progress=stop_at(1))
    assert len(models) == 1  # the other five problems were never modelled


def test_gurobi_fallbacks_report_each_problem_as_it_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    # gurobipy blocked: every problem goes to CP-SAT, which reports them one by one through Gurobi's solve
    pytest.importorskip("ortools")
    monkeypatch.setitem(sys.modules, "gurobipy", None)
    coeffs, targets = problems(4, 8, seed=3)
    calls, progress = record()
    sol = get_solver("gurobi").solve(coeffs, targets, progress=progress)
    assert (sol.backends == "cpsat").all() and calls == [(done, 4) for done in range(1, 5)]


def test_auto_reports_its_exact_part_then_each_mip_problem() -> None:
    pytest.importorskip("ortools")
    coeffs, targets = problems(5, 42, seed=4)
    usable = np.ones(coeffs.shape, dtype=bool)
    usable[:3, 16:] = False  # three problems for the exact engine, two for the MIP chain
    calls, progress = record()
    sol = get_solver("auto", mip_time_limit=1).solve(coeffs, targets, usable, progress=progress)
    assert calls == [(3, 5), (4, 5), (5, 5)]
    assert (sol.backends[:3] == "mitm").all() and set(sol.backends[3:]) <= {"gurobi", "cpsat"}


def test_a_raising_callback_stops_auto_before_its_mip_part(monkeypatch: pytest.MonkeyPatch) -> None:
    import ticketsolver.solvers.gurobi as gurobi

    pytest.importorskip("ortools")
    coeffs, targets = problems(4, 42, seed=5)
    usable = np.ones(coeffs.shape, dtype=bool)
    usable[:2, 16:] = False
    models = count_calls(monkeypatch, gurobi.GurobiSolver, "_solve_batch")
    with pytest.raises(_Stop, match="2/4"):
        get_solver("auto", mip_time_limit=1).solve(coeffs, targets, usable, progress=stop_at(2))
    assert models == []


# --- vectorised engines ---------------------------------------------------------------------------


def test_the_numba_engine_reports_between_kernel_calls_and_answers_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    import ticketsolver.solvers.mitm as mitm

    coeffs, targets = problems(300, 14, seed=6)
    usable = np.arange(14)[None, :] < np.random.default_rng(6).integers(0, 15, 300)[:, None]
    whole = get_solver("mitm_numba", threads=1).solve(coeffs, targets, usable)
    monkeypatch.setattr(mitm, "WORK_PER_CALL", 1 << 10)  # ~20 problems of k = 14 per call
    calls, progress = record()
    parts = get_solver("mitm_numba", threads=1).solve(coeffs, targets, usable, progress=progress)
    np.testing.assert_array_equal(parts.masks, whole.masks)
    done = [d for d, _ in calls]
    assert len(calls) > 5 and done == sorted(set(done)) and calls[-1] == (300, 300)
    assert {total for _, total in calls} == {300}
    with pytest.raises(_Stop):
        get_solver("mitm_numba", threads=1).solve(coeffs, targets, usable, progress=stop_at(1))


def test_the_torch_engine_reports_after_each_chunk() -> None:
    coeffs, targets = problems(100, 12, seed=7)
    calls, progress = record()
    # 4096 elements: 21 problems of k = 12 per chunk
    sol = get_solver("mitm_torch", device="cpu", max_elements=4096).solve(coeffs, targets, progress=progress)
    assert calls == [(21, 100), (42, 100), (63, 100), (84, 100), (100, 100)]
    np.testing.assert_array_equal(sol.errors, get_solver("mitm_numba").solve(coeffs, targets).errors)


def test_the_ladder_reports_the_problems_that_left_after_each_stage() -> None:
    coeffs, targets = problems(60, 38, seed=8)
    calls, progress = record()
    sol = get_solver("auto", tolerance=1e-9).solve(coeffs, targets, progress=progress)
    left = np.cumsum([s["optimal"] + s["within_tolerance"] for s in sol.info["ladder"] if s["entered"]])
    assert [d for d, _ in calls] == left.tolist() and calls[-1] == (60, 60)


class _WholeBatch(Solver):
    """The smallest backend: answers the whole batch at once (the empty subset) and reports nothing."""

    name = "whole-batch"

    def _solve_batch(
        self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, progress: Progress
    ) -> RawSolution:
        return RawSolution(masks=np.zeros(coeffs.shape, dtype=bool), status=np.full(len(targets), "feasible"))


def test_solve_reports_the_whole_batch_for_a_backend_that_reports_nothing() -> None:
    calls, progress = record()
    sol = _WholeBatch().solve(np.ones((3, 2)), np.zeros(3), progress=progress)
    assert calls == [(3, 3)] and (sol.status == SolveStatus.FEASIBLE).all()


# --- construction's rounds ------------------------------------------------------------------------


def test_rounds_turn_solver_progress_into_progress_within_a_chunk() -> None:
    # ten units of one problem each fit one chunk; a per-problem backend moves the round forward per problem
    coeffs, targets = problems(10, 8, seed=9)

    def make_problems(units: np.ndarray, draw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return coeffs[units, None], np.ones((len(units), 1, 8), dtype=bool), targets[units, None]

    calls: list[tuple[int, int, int]] = []
    result = solve_with_resampling(get_solver("bruteforce"), 10, make_problems, 0, 0.0, lambda *a: calls.append(a))
    assert calls == [(0, done, 10) for done in range(1, 11)]
    assert result.problems_solved == 10

    def stop(round_: int, done: int, total: int) -> None:
        if done == 3:
            raise _Stop("cancelled")

    with pytest.raises(_Stop):
        solve_with_resampling(get_solver("bruteforce"), 10, make_problems, 0, 0.0, stop)
