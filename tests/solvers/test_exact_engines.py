"""The exact engines (numba and torch meet-in-the-middle) against brute force, and the solver interface.

Brute force enumerates every subset, so it is the reference; both mitm engines must reach its optimum to
the last bit on random and awkward problems, and agree with each other at sizes brute force cannot reach.
The torch engine is device-agnostic code: it is checked here on the CPU, and on CUDA where there is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from ticketsolver.errors import InvalidProblemError, ProblemTooLargeError, TicketSolverError
from ticketsolver.solvers import Solver, SolveStatus, available_solvers, get_solver

ENGINES = ["mitm_numba", "mitm_torch"]


def exact_engine(name: str, **options: object) -> Solver:
    """An exact engine by registry name; the torch one on the CPU, so these tests check it anywhere."""
    if name == "mitm_torch":
        options.setdefault("device", "cpu")
    return get_solver(name, **options)


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
    solver = exact_engine(engine)
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
    a = exact_engine("mitm_numba").solve(coeffs, targets, usable)
    t = exact_engine("mitm_torch").solve(coeffs, targets, usable)
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
        exact_engine(engine).solve(coeffs, np.zeros(1))


def test_auto_routes_large_problems_to_the_mip_chain() -> None:
    pytest.importorskip("ortools")
    rng = np.random.default_rng(5)
    coeffs = rng.uniform(-1, 1, (3, 42))
    usable = np.ones((3, 42), dtype=bool)
    usable[:2, 20:] = False  # two small problems, one with 42 usable
    targets = rng.normal(0, 0.2, 3)
    sol = get_solver("auto", mip_time_limit=5).solve(coeffs, targets, usable)
    assert sol.backends[0] == "mitm" and sol.backends[1] == "mitm"  # whichever engine: named as asked
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
        exact_engine(engine).solve(coeffs, targets, usable)


def test_nan_in_an_unusable_entry_is_padding_not_an_error() -> None:
    coeffs = np.array([[0.5, np.nan, 0.25]])
    usable = np.array([[True, False, True]])
    sol = get_solver("mitm").solve(coeffs, np.array([0.75]), usable)
    assert sol.masks.tolist() == [[True, False, True]] and sol.errors[0] == 0.0


def test_absurd_magnitudes_are_refused_not_mis_solved() -> None:
    with pytest.raises(InvalidProblemError, match="range"):
        get_solver("mitm").solve(np.array([[1e300, 1.0]]), np.zeros(1))


def test_unknown_solver_names_the_known_ones() -> None:
    for name in ("simplex", "", None, "MITM"):
        with pytest.raises(InvalidProblemError, match="choose one of auto, bruteforce"):
            get_solver(name)  # type: ignore[arg-type]
    assert {"mitm", "mitm_numba", "mitm_torch", "gurobi", "cpsat", "cbc", "bruteforce", "auto"} <= set(
        available_solvers()
    )


@pytest.mark.parametrize("bad", [{"threads": 0}, {"threads": 10_000}, {"threads": 1.5}, {"threads": True}])
def test_solver_options_are_validated(bad: dict) -> None:
    with pytest.raises(InvalidProblemError, match="threads"):
        get_solver("mitm_numba", **bad)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("mitm_numba", {"device": "cpu"}, "no option 'device'; it takes: threads"),
        ("mitm_torch", {"threads": 2}, "no option 'threads'; it takes: device, max_elements"),
        ("bruteforce", {"tolerance": 1e-9}, "no option 'tolerance'"),
        ("cpsat", {"timelimit": 5}, "no option 'timelimit'; it takes: time_limit, threads, scale, seed"),
        ("mitm", {"engine": "gpu"}, "engine must be one of 'numba', 'torch'"),
        ("mitm", {"engine": "numba", "device": "cuda"}, r"get_solver\('mitm_torch', device='cuda'\)"),
        ("mitm", {"engine": "torch", "threads": 2}, r"get_solver\('mitm_numba', threads=...\)"),
        ("mitm", {"engine": "numba", "max_elements": 4096}, r"get_solver\('mitm', engine='torch', ...\)"),
        ("mitm_torch", {"device": "no-such-device"}, "device must be a torch device"),
        ("mitm_torch", {"device": "cpu", "max_elements": 16}, "max_elements"),
    ],
)
def test_options_a_solver_does_not_take_are_typed_errors_naming_the_right_call(
    name: str, options: dict, match: str
) -> None:
    with pytest.raises(InvalidProblemError, match=match):
        get_solver(name, **options)


@pytest.mark.parametrize(
    "options",
    [{"engine": "torch"}, {"engine": "torch", "device": "cpu"}, {"engine": "numba"}, {"device": "cpu"}, {}],
)
def test_mitm_takes_an_engine_and_answers_exactly_under_its_own_name(options: dict) -> None:
    # get_solver("mitm", engine="torch") used to reach NumbaMitmSolver(engine=...), a TypeError, without CUDA
    torch = pytest.importorskip("torch")
    solver = get_solver("mitm", **options)
    rng = np.random.default_rng(7)
    coeffs, targets = rng.uniform(-1, 1, (40, 12)), rng.normal(0, 0.2, 40)
    sol = solver.solve(coeffs, targets)
    wanted = options.get("engine") or ("torch" if torch.cuda.is_available() and not options else "numba")
    assert sol.info["engine"] == wanted and sol.solver == "mitm" and (sol.backends == "mitm").all()
    np.testing.assert_array_equal(sol.errors, get_solver("bruteforce").solve(coeffs, targets).errors)


@pytest.mark.parametrize("name", ["mitm", "mitm_numba", "mitm_torch", "auto", "bruteforce"])
@pytest.mark.parametrize("options", [{"engine": "torch"}, {"device": "cpu", "engine": "numba"}, {"bogus": 1}])
def test_get_solver_never_raises_a_bare_type_error(name: str, options: dict) -> None:
    try:
        get_solver(name, **options)
    except TicketSolverError:
        pass  # refused with a typed error, or built: both fine; a TypeError is not


def test_the_two_engines_share_their_limits_and_import_neither_each_other_nor_the_chooser() -> None:
    folder = Path(__file__).parents[2] / "ticketsolver" / "solvers"
    for module, others in (("mitm", {"mitm_torch", "exact"}), ("mitm_torch", {"mitm", "exact"})):
        tree = ast.parse((folder / f"{module}.py").read_text())
        imported = {
            name.split(".")[-1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom | ast.Import)
            for name in ([node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names])
        }
        assert "limits" in imported and not imported & others, (module, imported)


def test_the_torch_engine_is_registered_under_its_own_name_and_runs_on_the_cpu() -> None:
    solver = get_solver("mitm_torch", device="cpu")
    rng = np.random.default_rng(8)
    coeffs, targets = rng.uniform(-1, 1, (64, 18)), rng.normal(0, 0.2, 64)
    sol = solver.solve(coeffs, targets)
    assert sol.solver == "mitm_torch" and sol.info == {"engine": "torch", "device": "cpu"} and sol.tolerance == 0.0
    np.testing.assert_array_equal(sol.errors, get_solver("mitm_numba").solve(coeffs, targets).errors)


@pytest.mark.gpu
def test_torch_engine_on_cuda_matches_numba_and_bruteforce() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    rng = np.random.default_rng(6)
    coeffs = rng.uniform(-1, 1, (4096, 21))
    targets = rng.normal(0, 0.2, 4096)
    gpu = get_solver("mitm_torch", device="cuda").solve(coeffs, targets)
    assert gpu.info["device"].startswith("cuda")
    np.testing.assert_array_equal(gpu.errors, get_solver("mitm_numba").solve(coeffs, targets).errors)
    for n in (1, 5, 14):
        small = np.random.default_rng(n)
        for name, c, t, u in awkward_problems(n, small):
            expected = get_solver("bruteforce").solve(c, t, u).errors
            np.testing.assert_array_equal(get_solver("mitm_torch", device="cuda").solve(c, t, u).errors, expected, name)


@pytest.mark.gpu
def test_mitm_uses_the_torch_engine_on_cuda_under_the_name_mitm() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    sol = get_solver("mitm").solve(np.array([[0.5, 0.25, -0.125]]), np.array([0.375]))
    assert sol.info["engine"] == "torch" and sol.solver == "mitm" and sol.errors[0] == 0.0
