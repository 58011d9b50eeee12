"""The exact engines (numba and torch meet-in-the-middle) against brute force, and the solver interface.

Brute force enumerates every subset, so it is the reference; both mitm engines must reach its optimum to
the last bit on random and awkward problems, and agree with each other at sizes brute force cannot reach.
"""

from __future__ import annotations

import numpy as np
import pytest

from ticketsolver.errors import InvalidProblemError, ProblemTooLargeError
from ticketsolver.solvers import SolveStatus, available_solvers, get_solver

ENGINES = ["mitm_numba", "mitm_torch"]


def awkward_problems(n: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, coeffs, targets, usable) families that break careless implementations."""
    b = 40
    signed = rng.uniform(-1, 1, (b, n))
    positive = rng.uniform(0, 1, (b, n))
    zeros = signed.copy()
    zeros[:, ::3] = 0.0
    dup = np.repeat(rng.uniform(-1, 1, (b, 1)), n, axis=1)
    dup[:, ::2] = rng.uniform(-1, 1, (b, (n + 1) // 2))
    trained = rng.normal(0, 0.2, b)
    all_usable = np.ones((b, n), dtype=bool)
    partly = rng.random((b, n)) < 0.6
    partly[0] = False  # a row with nothing usable: the empty subset is the only answer
    return [
        ("signed", signed, trained, all_usable),
        ("all positive", positive, np.abs(trained), all_usable),
        ("zeros", zeros, trained, all_usable),
        ("duplicates", dup, trained, all_usable),
        ("beyond reach", signed, np.full(b, 100.0) * np.sign(trained), all_usable),
        ("exact hit", signed, signed[:, : max(1, n // 2)].sum(1), all_usable),
        ("partly unusable", signed, trained, partly),
    ]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 11, 14])
def test_mitm_matches_bruteforce(engine: str, n: int) -> None:
    rng = np.random.default_rng(n)
    reference = get_solver("bruteforce")
    solver = get_solver(engine)
    for name, coeffs, targets, usable in awkward_problems(n, rng):
        expected = reference.solve(coeffs, targets, usable)
        got = solver.solve(coeffs, targets, usable)
        np.testing.assert_array_equal(got.errors, expected.errors, err_msg=f"{engine}, n={n}, {name}")
        assert not (got.masks & ~usable).any(), f"{name}: an unusable entry was chosen"
        assert (got.status == SolveStatus.OPTIMAL).all()


@pytest.mark.parametrize("n", [16, 21, 26, 31])
def test_numba_and_torch_engines_agree_beyond_bruteforce(n: int) -> None:
    rng = np.random.default_rng(100 + n)
    b = 64 if n <= 26 else 8
    coeffs = rng.uniform(-1, 1, (b, n))
    targets = rng.normal(0, 0.2, b)
    usable = rng.random((b, n)) < 0.9
    a = get_solver("mitm_numba").solve(coeffs, targets, usable)
    t = get_solver("mitm_torch", device="cpu").solve(coeffs, targets, usable)
    np.testing.assert_array_equal(a.errors, t.errors)


def test_mitm_is_exact_at_n21_against_bruteforce_on_a_sample() -> None:
    rng = np.random.default_rng(21)
    coeffs = rng.uniform(-1, 1, (3, 21))
    targets = rng.normal(0, 0.2, 3)
    expected = get_solver("bruteforce", max_n=21).solve(coeffs, targets)
    np.testing.assert_array_equal(get_solver("mitm").solve(coeffs, targets).errors, expected.errors)


def test_reported_errors_are_the_recomputed_ones() -> None:
    rng = np.random.default_rng(1)
    coeffs = rng.uniform(-1, 1, (500, 20))
    targets = rng.normal(0, 0.3, 500)
    sol = get_solver("mitm").solve(coeffs, targets)
    np.testing.assert_array_equal(sol.errors, np.abs(targets - (coeffs * sol.masks).sum(1)))
    np.testing.assert_array_equal(sol.values, (coeffs * sol.masks).sum(1))
    assert sol.masks.dtype == bool and sol.masks.shape == coeffs.shape


def test_large_batches_with_mixed_usable_counts_are_solved_independently() -> None:
    # lanes of four problems share one usable count; a batch of every count exercises padding
    rng = np.random.default_rng(2)
    n = 12
    coeffs = rng.uniform(-1, 1, (203, n))
    targets = rng.normal(0, 0.3, 203)
    usable = np.arange(n)[None, :] < rng.integers(0, n + 1, 203)[:, None]
    a = get_solver("mitm").solve(coeffs, targets, usable)
    single = [get_solver("mitm").solve(coeffs[i : i + 1], targets[i : i + 1], usable[i : i + 1]) for i in range(203)]
    np.testing.assert_array_equal(a.errors, np.concatenate([s.errors for s in single]))
    np.testing.assert_array_equal(a.errors, get_solver("bruteforce").solve(coeffs, targets, usable).errors)


@pytest.mark.parametrize("threads", [1, 2])
def test_results_do_not_depend_on_thread_count(threads: int) -> None:
    rng = np.random.default_rng(3)
    coeffs = rng.uniform(-1, 1, (1000, 18))
    targets = rng.normal(0, 0.2, 1000)
    one = get_solver("mitm_numba", threads=1).solve(coeffs, targets)
    many = get_solver("mitm_numba", threads=threads).solve(coeffs, targets)
    np.testing.assert_array_equal(one.masks, many.masks)


def test_only_usable_entries_enter_the_search_so_n_above_40_works_when_few_are_usable() -> None:
    rng = np.random.default_rng(4)
    coeffs = rng.uniform(-1, 1, (5, 60))
    usable = np.zeros((5, 60), dtype=bool)
    usable[:, ::5] = True  # 12 usable
    targets = rng.normal(0, 0.2, 5)
    sol = get_solver("mitm").solve(coeffs, targets, usable)
    ref = get_solver("bruteforce").solve(coeffs, targets, usable)
    np.testing.assert_array_equal(sol.errors, ref.errors)


@pytest.mark.parametrize("engine", ENGINES)
def test_more_than_40_usable_is_a_typed_error_naming_the_mip_backends(engine: str) -> None:
    coeffs = np.ones((1, 41))
    with pytest.raises(ProblemTooLargeError, match="gurobi"):
        get_solver(engine).solve(coeffs, np.zeros(1))


def test_auto_routes_large_problems_to_the_mip_chain() -> None:
    pytest.importorskip("ortools")
    rng = np.random.default_rng(5)
    coeffs = rng.uniform(-1, 1, (3, 42))
    usable = np.ones((3, 42), dtype=bool)
    usable[:2, 20:] = False  # two small problems, one with 42 usable
    targets = rng.normal(0, 0.2, 3)
    sol = get_solver("auto", mip_time_limit=5).solve(coeffs, targets, usable)
    assert sol.backends[0] == "mitm" and sol.backends[1] == "mitm"
    assert sol.backends[2] in ("gurobi", "cpsat")
    exact = get_solver("mitm").solve(coeffs[:2], targets[:2], usable[:2])
    np.testing.assert_array_equal(sol.errors[:2], exact.errors)


@pytest.mark.parametrize(
    ("coeffs", "targets", "usable", "match"),
    [
        (np.ones((2, 3)), np.zeros(3), None, "rows"),
        (np.ones(3), np.zeros(3), None, r"\(B, n\)"),
        (np.ones((2, 3)), np.zeros((2, 1)), None, r"\(B,\)"),
        (np.ones((0, 3)), np.zeros(0), None, "empty"),
        (np.ones((2, 0)), np.zeros(2), None, "n = 0"),
        (np.array([[1.0, np.nan]]), np.zeros(1), None, "NaN"),
        (np.array([[1.0, np.inf]]), np.zeros(1), None, "NaN or inf"),
        (np.ones((1, 2)), np.array([np.nan]), None, "not finite"),
        (np.ones((1, 2)), np.zeros(1), np.ones((1, 3), dtype=bool), "shape"),
        (np.ones((1, 2)), np.zeros(1), np.ones((1, 2)), "bool"),
        (np.array([["a", "b"]]), np.zeros(1), None, "numeric"),
    ],
)
@pytest.mark.parametrize("engine", ["mitm", "mitm_torch", "bruteforce"])
def test_malformed_batches_raise_typed_errors(engine, coeffs, targets, usable, match) -> None:
    with pytest.raises(InvalidProblemError, match=match):
        get_solver(engine).solve(coeffs, targets, usable)


def test_nan_in_an_unusable_entry_is_padding_not_an_error() -> None:
    coeffs = np.array([[0.5, np.nan, 0.25]])
    usable = np.array([[True, False, True]])
    sol = get_solver("mitm").solve(coeffs, np.array([0.75]), usable)
    assert sol.masks.tolist() == [[True, False, True]] and sol.errors[0] == 0.0


def test_absurd_magnitudes_are_refused_not_mis_solved() -> None:
    with pytest.raises(InvalidProblemError, match="range"):
        get_solver("mitm").solve(np.array([[1e300, 1.0]]), np.zeros(1))


def test_unknown_solver_names_the_known_ones() -> None:
    with pytest.raises(InvalidProblemError, match="mitm"):
        get_solver("simplex")
    assert {"mitm", "gurobi", "cpsat", "cbc", "bruteforce", "auto"} <= set(available_solvers())


@pytest.mark.parametrize("bad", [{"threads": 0}, {"threads": 10_000}])
def test_solver_options_are_validated(bad: dict) -> None:
    with pytest.raises(ValueError, match="threads"):
        get_solver("mitm_numba", **bad)


@pytest.mark.gpu
def test_torch_engine_on_cuda_matches_numba() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    rng = np.random.default_rng(6)
    coeffs = rng.uniform(-1, 1, (4096, 21))
    targets = rng.normal(0, 0.2, 4096)
    gpu = get_solver("mitm_torch", device="cuda").solve(coeffs, targets)
    np.testing.assert_array_equal(gpu.errors, get_solver("mitm_numba").solve(coeffs, targets).errors)
