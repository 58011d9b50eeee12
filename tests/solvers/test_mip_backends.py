"""The MIP backends (gurobi, cpsat, cbc) against the exact references, and Gurobi's fallback to CP-SAT.

Every answer is checked for honesty (masks only on usable entries, errors recomputed from the masks)
and, where the backend says ``optimal``, for being within its stated tolerance of brute force (n <= 14)
or of the exact meet-in-the-middle engine (n = 21, slow).
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from ticketsolver.errors import InvalidProblemError, ProblemTooLargeError, SolverUnavailableError
from ticketsolver.solvers import Solutions, Solver, SolveStatus, get_solver

from .backends import BACKENDS, PACKAGES, make_backend, require

STATUSES = {s.value for s in SolveStatus}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Solver:
    return make_backend(request.param)


@pytest.fixture(scope="module")
def bruteforce() -> Solver:
    return get_solver("bruteforce")


def assert_honest(sol: Solutions, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray | None) -> None:
    """Masks only on usable entries; values and errors are what the masks achieve; failed means empty."""
    u = np.ones(coeffs.shape, dtype=bool) if usable is None else usable
    assert not (sol.masks & ~u).any()
    values = (np.where(u, coeffs, 0.0) * sol.masks).sum(1)
    np.testing.assert_allclose(sol.values, values, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sol.errors, np.abs(targets - values), rtol=0, atol=1e-12)
    assert set(sol.status) <= STATUSES
    assert not sol.masks[sol.status == SolveStatus.FAILED.value].any()
    assert sol.tolerance > 0


def assert_matches_reference(sol: Solutions, ref: Solutions, exact: bool) -> None:
    """Optimal answers within the stated tolerance of the exact optimum; nothing beats it."""
    assert (sol.status == SolveStatus.OPTIMAL.value).all(), sol.status
    assert (sol.errors >= ref.errors - 1e-12).all()
    assert (sol.errors <= ref.errors + sol.tolerance).all(), (sol.errors - ref.errors, sol.tolerance)
    if exact:  # no near-ties in these instances: the very same optimum
        np.testing.assert_allclose(sol.errors, ref.errors, rtol=0, atol=1e-9)


def random_batch(seed: int, b: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (b, n)), rng.uniform(-1, 1, b)


def awkward_case(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]:
    """(coeffs, targets, usable, exact) of problems that tend to break subset-sum backends."""
    rng = np.random.default_rng(7)
    if name == "zeros_and_duplicates":
        row = np.array([0.0, 0.0, 0.5, 0.5, -0.25, -0.25, 0.125, 0.125, 0.3, 0.3, 0.0, -0.7])
        return np.tile(row, (4, 1)), np.array([0.61, -0.2, 1.33, 0.0]), None, True
    if name == "all_positive":
        coeffs = rng.uniform(0, 1, (4, 12))
        targets = np.array([-0.3, 0.0, 2.345, coeffs[3].sum() + 0.5])  # below, at, inside, above reach
        return coeffs, targets, None, True
    if name == "beyond_reach":
        return rng.uniform(-1, 1, (3, 13)), np.array([100.0, -100.0, 37.5]), None, True
    if name == "single_coefficient":
        return np.array([[0.7], [0.7], [-0.7], [0.0]]), np.array([0.2, 0.5, -0.5, 0.3]), None, True
    if name == "exact_subset_sums":
        coeffs = rng.uniform(-1, 1, (4, 14))
        chosen = rng.random((4, 14)) < 0.5
        return coeffs, (coeffs * chosen).sum(1), None, True
    if name == "partly_unusable":
        coeffs = rng.uniform(-1, 1, (5, 14))
        usable = rng.random((5, 14)) < 0.6
        usable[3] = False  # no usable coefficient at all: the empty subset is the only answer
        usable[4] = True
        coeffs[~usable] = np.nan  # padding may hold anything; it must never be chosen
        return coeffs, rng.uniform(-1, 1, 5), usable, True
    if name == "wide_magnitudes":
        coeffs = np.sign(rng.uniform(-1, 1, (3, 12))) * 10.0 ** rng.uniform(-3, 2, (3, 12))
        return coeffs, np.array([3.14159, -27.0, 0.001]), None, False
    raise AssertionError(name)


AWKWARD = [
    "zeros_and_duplicates",
    "all_positive",
    "beyond_reach",
    "single_coefficient",
    "exact_subset_sums",
    "partly_unusable",
    "wide_magnitudes",
]


@pytest.mark.parametrize("n", [1, 5, 10, 14])
def test_mip_backend_matches_bruteforce_on_random_problems(backend: Solver, bruteforce: Solver, n: int) -> None:
    coeffs, targets = random_batch(seed=n, b=4, n=n)
    sol = backend.solve(coeffs, targets)
    assert_honest(sol, coeffs, targets, None)
    assert sol.solver == backend.name and (sol.backends == backend.name).all()
    assert_matches_reference(sol, bruteforce.solve(coeffs, targets), exact=True)


@pytest.mark.parametrize("case", AWKWARD)
def test_mip_backend_matches_bruteforce_on_awkward_problems(backend: Solver, bruteforce: Solver, case: str) -> None:
    coeffs, targets, usable, exact = awkward_case(case)
    sol = backend.solve(coeffs, targets, usable)
    assert_honest(sol, coeffs, targets, usable)
    assert_matches_reference(sol, bruteforce.solve(coeffs, targets, usable), exact=exact)


@pytest.mark.parametrize("name", BACKENDS)
def test_time_limited_answers_are_honest_and_not_called_optimal(name: str) -> None:
    coeffs, targets = random_batch(seed=30, b=2, n=30)
    limited = make_backend(name, time_limit=0.01)
    sol = limited.solve(coeffs, targets)
    assert_honest(sol, coeffs, targets, None)
    # no backend proves an n = 30 optimum in 10 ms; whatever it found is reported as such
    assert set(sol.status) <= {"time_limit", "feasible", "failed"}


@pytest.mark.slow
@pytest.mark.parametrize("name", BACKENDS)
def test_mip_backend_is_within_its_tolerance_of_mitm_at_n21(name: str) -> None:
    try:
        mitm = get_solver("mitm")
    except ImportError as exc:
        pytest.skip(f"the exact 'mitm' engine is not available: {exc}")
    # Gurobi with 1e-9 tolerances takes ~10-60 s per problem here; a limit it never reaches
    solver = make_backend(name, time_limit=600)
    coeffs, targets = random_batch(seed=21, b=3, n=21)
    sol = solver.solve(coeffs, targets)
    assert_honest(sol, coeffs, targets, None)
    assert_matches_reference(sol, mitm.solve(coeffs, targets), exact=False)


# --- CP-SAT's integer scaling ---------------------------------------------------------------------


@pytest.mark.ortools
def test_cpsat_states_its_scale_and_an_honest_rounding_tolerance(bruteforce: Solver) -> None:
    coeffs, targets = random_batch(seed=3, b=6, n=12)
    sol = make_backend("cpsat", scale=1e3).solve(coeffs, targets)
    assert sol.info["scale"] == 1e3
    assert sol.tolerance >= (12 + 1) / 1e3  # each of 12 coefficients and the target rounded by 0.5e-3
    assert_honest(sol, coeffs, targets, None)
    ref = bruteforce.solve(coeffs, targets)
    assert (sol.errors <= ref.errors + sol.tolerance).all()
    assert (sol.errors > ref.errors + 1e-9).any()  # so coarse a scale does miss optima: the bound is needed


@pytest.mark.ortools
def test_cpsat_refuses_values_that_do_not_fit_int64_after_scaling() -> None:
    solver = make_backend("cpsat", scale=1e9)
    with pytest.raises(ProblemTooLargeError, match="scale"):
        solver.solve(np.full((1, 4), 1e7), np.array([1.0]))


# --- arguments and missing packages ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "bad"),
    [
        ("cpsat", {"time_limit": 0}, "time_limit"),
        ("cpsat", {"threads": 0}, "threads"),
        ("cpsat", {"scale": -1.0}, "scale"),
        ("cpsat", {"scale": math.nan}, "scale"),
        ("cpsat", {"seed": -1}, "seed"),
        ("gurobi", {"time_limit": -5}, "time_limit"),
        ("gurobi", {"threads": 0}, "threads"),
        ("gurobi", {"fallback_time_limit": 0.0}, "fallback_time_limit"),
        ("cbc", {"time_limit": math.inf}, "time_limit"),
        ("cbc", {"threads": -2}, "threads"),
        ("cbc", {"threads": "2"}, "threads"),
        ("gurobi", {"fallback": "no"}, "fallback"),
        ("gurobi", {"time_limit": "60"}, "time_limit"),
    ],
)
def test_constructors_reject_bad_arguments_by_name(name: str, options: dict[str, object], bad: str) -> None:
    with pytest.raises(InvalidProblemError, match=bad):
        get_solver(name, **options)


@pytest.mark.parametrize(("name", "options"), [("cpsat", {}), ("cbc", {}), ("gurobi", {"fallback": False})])
def test_missing_package_raises_an_error_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, name: str, options: dict[str, object]
) -> None:
    module, extra = PACKAGES[name]
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(SolverUnavailableError, match=rf"ticketsolver\[{extra}\]"):
        get_solver(name, **options).solve(np.array([[0.5, 0.25]]), np.array([0.3]))


def test_gurobi_raises_when_its_fallback_is_missing_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "gurobipy", None)
    monkeypatch.setitem(sys.modules, "ortools.sat.python.cp_model", None)
    with pytest.raises(SolverUnavailableError, match=r"ticketsolver\[ortools\]"):
        get_solver("gurobi").solve(np.array([[0.5, 0.25]]), np.array([0.3]))


# --- Gurobi's fallback to CP-SAT, on real failures ------------------------------------------------


def assert_fell_back(sol: Solutions, rows: list[int], reason: str) -> None:
    assert [f["problem"] for f in sol.info["fallbacks"]] == rows
    assert all(reason in f["reason"] for f in sol.info["fallbacks"])
    assert sol.solver == "gurobi"
    assert [b for b, name in enumerate(sol.backends) if name == "cpsat"] == rows
    assert sol.info["scale"] == 1e9


@pytest.mark.ortools
def test_gurobi_falls_back_to_cpsat_when_gurobipy_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, bruteforce: Solver
) -> None:
    require("cpsat")
    monkeypatch.setitem(sys.modules, "gurobipy", None)
    coeffs, targets = random_batch(seed=11, b=3, n=10)
    with caplog.at_level(logging.WARNING, logger="ticketsolver.solvers"):
        sol = get_solver("gurobi").solve(coeffs, targets)
    assert_fell_back(sol, [0, 1, 2], "gurobipy")
    assert "to cpsat" in caplog.text and "gurobipy" in caplog.text
    assert_honest(sol, coeffs, targets, None)
    assert_matches_reference(sol, bruteforce.solve(coeffs, targets), exact=True)


@pytest.mark.gurobi
@pytest.mark.ortools
def test_gurobi_falls_back_to_cpsat_when_unlicensed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bruteforce: Solver
) -> None:
    require("gurobi")
    require("cpsat")
    monkeypatch.setenv("GRB_LICENSE_FILE", str(tmp_path / "no-such-gurobi.lic"))  # a real licence error
    coeffs, targets = random_batch(seed=12, b=2, n=10)
    sol = get_solver("gurobi").solve(coeffs, targets)
    assert_fell_back(sol, [0, 1], "licence")
    assert_matches_reference(sol, bruteforce.solve(coeffs, targets), exact=True)
    with pytest.raises(SolverUnavailableError, match="licence"):
        get_solver("gurobi", fallback=False).solve(coeffs, targets)


@pytest.mark.gurobi
@pytest.mark.ortools
def test_gurobi_falls_back_per_problem_when_a_model_exceeds_the_size_limited_licence() -> None:
    require("gurobi")
    require("cpsat")
    coeffs, targets = random_batch(seed=13, b=2, n=2001)
    usable = np.ones(coeffs.shape, dtype=bool)
    usable[0, 12:] = False  # problem 0 fits the pip licence (2,000 variables), problem 1 does not
    sol = get_solver("gurobi", time_limit=10, fallback_time_limit=2).solve(coeffs, targets, usable)
    if not sol.info["fallbacks"]:
        pytest.skip("an unrestricted Gurobi licence is installed: nothing exceeds it")
    assert_fell_back(sol, [1], "size-limited")
    assert sol.backends.tolist() == ["gurobi", "cpsat"]
    assert sol.status[0] == "optimal" and sol.status[1] in {"optimal", "time_limit"}
    assert_honest(sol, coeffs, targets, usable)


@pytest.mark.gurobi
@pytest.mark.ortools
def test_gurobi_falls_back_when_time_runs_out_without_a_solution(bruteforce: Solver) -> None:
    require("gurobi")
    require("cpsat")
    coeffs, targets = random_batch(seed=14, b=2, n=12)
    sol = get_solver("gurobi", time_limit=1e-9, fallback_time_limit=10).solve(coeffs, targets)
    assert_fell_back(sol, [0, 1], "without a solution")
    assert_matches_reference(sol, bruteforce.solve(coeffs, targets), exact=True)


@pytest.mark.gurobi
def test_gurobi_without_fallback_marks_problems_without_a_solution_failed() -> None:
    require("gurobi")
    coeffs, targets = random_batch(seed=14, b=2, n=12)
    sol = get_solver("gurobi", time_limit=1e-9, fallback=False).solve(coeffs, targets)
    assert sol.status.tolist() == ["failed", "failed"]
    assert sol.backends.tolist() == ["gurobi", "gurobi"]
    assert sol.info["fallbacks"] == [] and [f["problem"] for f in sol.info["failed"]] == [0, 1]
    assert_honest(sol, coeffs, targets, None)
    np.testing.assert_array_equal(sol.errors, np.abs(targets))


@pytest.mark.gurobi
def test_gurobi_prints_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    solver = make_backend("gurobi")
    solver.solve(np.array([[0.5, 0.25, -0.125]]), np.array([0.375]))
    solver.solve(np.array([[0.5, 0.25, -0.125]]), np.array([0.3]))  # the same Env, reused
    out, err = capfd.readouterr()
    assert out == "" and err == ""
