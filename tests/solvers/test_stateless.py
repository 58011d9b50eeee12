"""Solvers hold configuration, never the state of a batch: a batch's tolerance comes back with that batch.

One solver instance serves a whole build (and, in a service, threads at once), so a tolerance written on
the solver by one batch would be reported by the next, or by a batch running beside it.
"""

from __future__ import annotations

import copy
import math
import threading
from typing import Any

import numpy as np
import pytest

from ticketsolver.solvers import Solutions, Solver, available_solvers, get_solver

from .backends import BACKENDS, PACKAGES, make_backend, require

#: how long a thread waits for the other one before the test fails rather than hangs
WAIT_S = 120.0


def product_problems(b: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients v*u scaled as a construction scales them, targets like trained weights."""
    rng = np.random.default_rng([seed, k])
    a = math.sqrt(8 * 1.5 * 0.3 / k)
    coeffs = rng.uniform(-a, a, (b, k)) * rng.uniform(-a, a, (b, k))
    return coeffs, np.clip(rng.normal(0, 0.1, b), -0.3, 0.3)


def mixed_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two problems for the exact engine (20 usable) and two beyond it (42 usable): auto's MIP chain."""
    coeffs, targets = product_problems(4, 42, seed=8)
    usable = np.ones(coeffs.shape, dtype=bool)
    usable[:2, 20:] = False
    return coeffs, targets, usable


def require_mip_chain() -> None:
    """auto's MIP chain runs Gurobi, else CP-SAT: one of them must be installed."""
    try:
        require("gurobi")
    except pytest.skip.Exception:
        require("cpsat")


def test_an_exact_batch_after_a_mip_batch_reports_tolerance_zero() -> None:
    # The regression: auto used to record a MIP batch's tolerance with self.tolerance = max(self.tolerance,
    # mip tolerance), and its exact path returned none of its own, so every later exact batch reported the
    # MIP's (2.2e-8 after CP-SAT at k = 21) although mitm had solved it exactly.
    require_mip_chain()
    coeffs, targets, usable = mixed_batch()
    small, small_targets = product_problems(6, 20, seed=9)
    solver = get_solver("auto", mip_time_limit=1)
    mixed = solver.solve(coeffs, targets, usable)
    assert mixed.backends[0] == mixed.backends[1] == "mitm"
    assert set(mixed.backends[2:]) <= {"gurobi", "cpsat"} and mixed.tolerance > 0
    exact = solver.solve(small, small_targets)
    assert exact.tolerance == 0.0 and (exact.backends == "mitm").all()
    assert solver.tolerance == 0.0  # what was asked, untouched


def test_one_auto_solver_serves_two_threads_each_with_its_own_tolerance() -> None:
    # Thread A solves a batch with a MIP part; when its first MIP problem is done it waits while thread B
    # solves an exact batch on the very same solver instance. Each result must carry its own tolerance.
    require_mip_chain()
    coeffs, targets, usable = mixed_batch()
    small, small_targets = product_problems(6, 20, seed=9)
    solver = get_solver("auto", mip_time_limit=1)
    results: dict[str, Solutions] = {}
    errors: list[BaseException] = []
    b_may_start, b_done = threading.Event(), threading.Event()

    def a_progress(done: int, total: int) -> None:
        if done > 2 and not b_may_start.is_set():  # the exact part and one MIP problem are done
            b_may_start.set()
            assert b_done.wait(WAIT_S), "thread B did not finish"

    def run(key: str, *args: Any, **kwargs: Any) -> None:
        try:
            if key == "B":
                assert b_may_start.wait(WAIT_S), "thread A never reached its MIP part"
            results[key] = solver.solve(*args, **kwargs)
        except BaseException as exc:  # re-raised in the main thread
            errors.append(exc)
        finally:
            if key == "B":
                b_done.set()

    threads = [
        threading.Thread(target=run, args=("A", coeffs, targets, usable), kwargs={"progress": a_progress}),
        threading.Thread(target=run, args=("B", small, small_targets)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * WAIT_S)
    if errors:
        raise errors[0]
    assert results["A"].tolerance > 0 and results["B"].tolerance == 0.0
    assert set(results["A"].backends[2:]) <= {"gurobi", "cpsat"}


@pytest.mark.parametrize("name", BACKENDS)
def test_a_mip_backend_used_from_two_threads_gives_each_batch_its_own_tolerance(name: str) -> None:
    # A MIP backend's tolerance grows with the batch's magnitude |w| + sum |c| (gurobi, cbc) and its usable
    # count (cpsat). Two batches that differ in both, solved at once on one instance (each waits for the
    # other after its first problem), must each report what a fresh solver reports for that batch alone.
    rng = np.random.default_rng(11)
    small = rng.uniform(-1, 1, (3, 4)), rng.uniform(-1, 1, 3)
    large = 1000 * rng.uniform(-1, 1, (3, 14)), 1000 * rng.uniform(-1, 1, 3)
    expected = {key: make_backend(name).solve(*batch).tolerance for key, batch in (("small", small), ("large", large))}
    assert expected["large"] > 2 * expected["small"]
    solver = make_backend(name)
    both_running = threading.Barrier(2, timeout=WAIT_S)
    results: dict[str, float] = {}
    errors: list[BaseException] = []

    def run(key: str, batch: tuple[np.ndarray, np.ndarray]) -> None:
        def progress(done: int, total: int) -> None:
            if done == 1:
                both_running.wait()

        try:
            results[key] = solver.solve(*batch, progress=progress).tolerance
        except BaseException as exc:
            errors.append(exc)
            both_running.abort()

    threads = [threading.Thread(target=run, args=item) for item in (("small", small), ("large", large))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(2 * WAIT_S)
    if errors:
        raise errors[0]
    assert results == expected


def _available(name: str) -> Solver:
    if name in PACKAGES:
        return make_backend(name, time_limit=5)
    if name == "mitm_torch":
        return get_solver(name, device="cpu")
    return get_solver(name)


@pytest.mark.parametrize("name", available_solvers())
def test_solving_writes_nothing_on_the_solver(name: str) -> None:
    solver = _available(name)
    coeffs, targets = product_problems(5, 12, seed=12)
    solver.solve(coeffs, targets)  # resources a backend starts on first use (Gurobi's Env) now exist
    before = copy.copy(vars(solver))
    solver.solve(100 * coeffs[:3], targets[:3])
    solver.solve(coeffs[:, :6], targets, progress=lambda done, total: None)
    after = vars(solver)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key] is value or after[key] == value, f"{name}: {key} changed while solving"
