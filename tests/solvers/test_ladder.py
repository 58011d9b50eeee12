"""``auto`` with a tolerance: the ladder of exact engines over growing free subsets.

The references are brute force (k <= 20, where every stage is exact) and the exact mitm engine (k <= 34,
a few hundred problems): the ladder must reach the optimum where a stage covers all of a problem's
coefficients, never report an error below the optimum elsewhere, and call an answer ``within_tolerance``
only when its recomputed error is. (Tolerances that must not outlive their batch: ``test_stateless.py``.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ticketsolver.errors import InvalidProblemError
from ticketsolver.solvers import Solutions, Solver, SolveStatus, get_solver
from ticketsolver.solvers.ladder import LADDER_STAGES, _fix, solve_ladder

TOL = 1e-9


def product_problems(b: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients v*u with v, u ~ U[-a, a] scaled as a construction scales them (a^2 = 8*1.5*0.3/k),
    targets like trained weights (|w| <= 0.3)."""
    rng = np.random.default_rng([seed, k])
    a = math.sqrt(8 * 1.5 * 0.3 / k)
    coeffs = rng.uniform(-a, a, (b, k)) * rng.uniform(-a, a, (b, k))
    return coeffs, np.clip(rng.normal(0, 0.1, b), -0.3, 0.3)


def counts(sol: Solutions) -> dict[str, int]:
    return {s.value: int(np.count_nonzero(sol.status == s)) for s in SolveStatus}


def assert_statuses_agree_with_errors(sol: Solutions, usable: np.ndarray, tolerance: float) -> None:
    """Every status is one the ladder gives and says what the recomputed error shows; info adds up."""
    assert set(sol.status) <= {"optimal", "within_tolerance", "feasible"}
    within = sol.status == SolveStatus.WITHIN_TOLERANCE
    feasible = sol.status == SolveStatus.FEASIBLE
    assert (sol.errors[within] <= tolerance).all()
    assert (sol.errors[feasible] > tolerance).all()
    assert (usable.sum(1)[feasible] > max(LADDER_STAGES)).all()  # the last stage is exact up to 40
    assert sol.tolerance == tolerance and sol.info["tolerance"] == tolerance
    stages = sol.info["ladder"]
    assert [s["free"] for s in stages] == list(LADDER_STAGES)
    assert stages[0]["entered"] == len(sol)
    for here, after in zip(stages, stages[1:], strict=False):
        assert after["entered"] == here["entered"] - here["optimal"] - here["within_tolerance"]
    c = counts(sol)
    assert sum(s["optimal"] for s in stages) == c["optimal"]
    assert sum(s["within_tolerance"] for s in stages) == c["within_tolerance"]
    assert sol.info["feasible"] == c["feasible"]


# --- exact where a stage covers the whole problem -------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 9, 14, 20])
def test_ladder_is_exact_where_k_fits_a_stage(k: int) -> None:
    rng = np.random.default_rng(k)
    b = 30
    coeffs = rng.uniform(-1, 1, (b, k))
    coeffs[:5, ::3] = 0.0  # zeros
    coeffs[5:10] = coeffs[5:10, :1]  # duplicates
    targets = rng.normal(0, 0.2, b)
    targets[10:13] = [100.0, -100.0, 0.0]  # beyond reach both ways, and the empty subset
    usable = rng.random((b, k)) < 0.8
    usable[13] = False  # nothing usable: the empty subset is the only answer
    coeffs[~usable] = np.nan  # padding may hold anything; it must never be chosen
    sol = get_solver("auto", tolerance=TOL).solve(coeffs, targets, usable)
    ref = get_solver("bruteforce").solve(coeffs, targets, usable)
    np.testing.assert_array_equal(sol.errors, ref.errors)
    assert (sol.status == SolveStatus.OPTIMAL).all()
    assert not (sol.masks & ~usable).any()
    assert sol.info["ladder"][0]["optimal"] == b and sol.info["ladder"][1]["entered"] == 0


# --- k = 34..40: within tolerance, never better than the optimum ----------------------------------


def test_ladder_answers_are_within_tolerance_and_never_below_the_exact_optimum() -> None:
    coeffs, targets = product_problems(300, 34, seed=1)
    sol = get_solver("auto", tolerance=TOL).solve(coeffs, targets)
    exact = get_solver("mitm").solve(coeffs, targets)
    usable = np.ones(coeffs.shape, dtype=bool)
    assert_statuses_agree_with_errors(sol, usable, TOL)
    # nothing beats the optimum (1e-15: the two sum the same subset in different orders)
    assert (sol.errors >= exact.errors - 1e-15).all()
    optimal = sol.status == SolveStatus.OPTIMAL
    np.testing.assert_allclose(sol.errors[optimal], exact.errors[optimal], rtol=0, atol=1e-15)
    # a problem that leaves before the exact stage does so because it met the tolerance
    assert (sol.errors <= np.maximum(TOL, exact.errors + 1e-15)).all()
    c = counts(sol)
    assert c["within_tolerance"] > 0.8 * len(sol) and c["feasible"] == 0


@pytest.mark.parametrize("k", [36, 38, 40])
def test_ladder_meets_the_tolerance_at_k_up_to_40_without_solving_exactly(k: int) -> None:
    coeffs, targets = product_problems(200, k, seed=2)
    usable = np.ones(coeffs.shape, dtype=bool)
    sol = get_solver("auto", tolerance=TOL).solve(coeffs, targets, usable)
    assert_statuses_agree_with_errors(sol, usable, TOL)
    assert counts(sol)["feasible"] == 0  # k <= 40: the last stage is exact
    # the point of the ladder: most problems stop at the cheap stages
    stages = sol.info["ladder"]
    assert stages[0]["within_tolerance"] + stages[1]["within_tolerance"] > 0.8 * len(sol)
    assert (sol.errors <= TOL).mean() > 0.95


def test_beyond_40_the_ladder_returns_feasible_answers_and_calls_no_mip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ticketsolver.solvers.gurobi.GurobiSolver", _refusing_mip)
    coeffs, targets = product_problems(20, 44, seed=3)
    usable = np.ones(coeffs.shape, dtype=bool)
    usable[:10, 30:] = False  # half the problems have 30 usable coefficients, half 44
    sol = get_solver("auto", tolerance=1e-15).solve(coeffs, targets, usable)
    assert_statuses_agree_with_errors(sol, usable, 1e-15)
    assert (sol.status[:10] == SolveStatus.OPTIMAL).all()
    # 1e-15 is out of reach of any free subset of 40; such problems keep the best answer found
    assert (sol.status[10:] != SolveStatus.OPTIMAL).all() and counts(sol)["feasible"] > 0
    assert (sol.errors[10:] < 1e-6).all()
    exact = get_solver("mitm").solve(coeffs[:10], targets[:10], usable[:10])
    np.testing.assert_allclose(sol.errors[:10], exact.errors, rtol=0, atol=1e-15)


@pytest.mark.parametrize("k", [500, 2000])
def test_bias_like_problems_with_hundreds_to_thousands_of_coefficients_reach_1e_9(k: int) -> None:
    rng = np.random.default_rng(k)
    coeffs = rng.uniform(-1, 1, (6, k)) * rng.uniform(-1, 1, (6, k))
    spread = math.sqrt(k) * coeffs.std(1) / 2  # standard deviation of a random subset sum
    targets = spread * np.array([-4.0, -3.0, -1.0, 1.0, 3.0, 4.0])
    usable = np.ones(coeffs.shape, dtype=bool)
    sol = get_solver("auto", tolerance=TOL).solve(coeffs, targets, usable)
    assert (sol.errors <= TOL).all(), sol.errors
    assert (sol.status == SolveStatus.WITHIN_TOLERANCE).all()
    assert_statuses_agree_with_errors(sol, usable, TOL)


def test_ladder_is_deterministic_and_independent_of_the_rest_of_the_batch() -> None:
    coeffs, targets = product_problems(120, 38, seed=4)
    first = get_solver("auto", tolerance=TOL).solve(coeffs, targets)
    again = get_solver("auto", tolerance=TOL).solve(coeffs, targets)
    np.testing.assert_array_equal(first.masks, again.masks)
    # free subsets depend on the problem alone, so chunking a build does not change its answers
    halves = [get_solver("auto", tolerance=TOL).solve(coeffs[s], targets[s]) for s in (slice(0, 37), slice(37, None))]
    np.testing.assert_array_equal(first.masks, np.concatenate([h.masks for h in halves]))


def test_fixing_is_greedy_by_decreasing_magnitude_towards_the_centre_of_the_free_sums() -> None:
    # a per-problem loop, the rule as stated, against the vectorised version on uneven problem sizes
    rng = np.random.default_rng(5)
    b, n = 25, 60
    coeffs = rng.uniform(-1, 1, (b, n))
    targets = rng.normal(0, 2, b)
    fixed = rng.random((b, n)) < rng.uniform(0, 1, (b, 1))
    fixed[0] = False
    free_total = rng.normal(0, 1, b)
    got = _fix(coeffs, targets, fixed, free_total)
    for r in range(b):
        goal, total = targets[r] - free_total[r] / 2, 0.0
        expected = np.zeros(n, dtype=bool)
        for i in sorted(np.flatnonzero(fixed[r]), key=lambda i: -abs(coeffs[r, i])):
            if abs(total + coeffs[r, i] - goal) < abs(total - goal):
                total += coeffs[r, i]
                expected[i] = True
        np.testing.assert_array_equal(got[r], expected, err_msg=f"problem {r}")


# --- checks that still hold, arguments ------------------------------------------------------------


def test_the_exact_engines_magnitude_check_holds_for_the_ladder() -> None:
    with pytest.raises(InvalidProblemError, match="range"):
        get_solver("auto", tolerance=TOL).solve(np.array([[1e300, 1.0]]), np.zeros(1))
    coeffs = np.full((1, 60), 0.01)
    coeffs[0, 59] = 1e300  # padding: not usable, so not part of any problem
    usable = np.arange(60)[None, :] < 59
    sol = get_solver("auto", tolerance=TOL).solve(coeffs, np.array([0.2]), usable)
    assert sol.errors[0] <= TOL and not sol.masks[0, 59]


def test_solve_ladder_refuses_stages_the_exact_engine_cannot_take() -> None:
    coeffs, targets = product_problems(2, 10, seed=6)
    usable = np.ones(coeffs.shape, dtype=bool)
    with pytest.raises(InvalidProblemError, match="stages"):
        solve_ladder(get_solver("mitm"), coeffs, targets, usable, TOL, stages=(24, 44))


@pytest.mark.parametrize("bad", [-1e-9, math.nan, math.inf, -math.inf])
def test_tolerance_must_be_finite_and_non_negative(bad: float) -> None:
    with pytest.raises(InvalidProblemError, match=rf"tolerance .*{bad!r}"):
        get_solver("auto", tolerance=bad)


@pytest.mark.parametrize("bad", ["1e-9", None, True])
def test_tolerance_must_be_a_number(bad: object) -> None:
    with pytest.raises(InvalidProblemError, match="tolerance must be a number"):
        get_solver("auto", tolerance=bad)


def test_auto_reports_the_tolerance_it_worked_to() -> None:
    coeffs, targets = product_problems(8, 30, seed=7)
    assert get_solver("auto").solve(coeffs, targets).tolerance == 0.0
    assert get_solver("auto", tolerance=1e-8).solve(coeffs, targets).tolerance == 1e-8
    assert "ladder" not in get_solver("auto", tolerance=0.0).solve(coeffs, targets).info


def _refusing_mip(*args: object, **kwargs: object) -> Solver:
    raise AssertionError("the MIP chain was called")
