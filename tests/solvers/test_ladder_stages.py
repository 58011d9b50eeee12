"""How a ladder stage splits a problem into free and fixed coefficients, against the rule written in NumPy.

The rule (ticketsolver/solvers/ladder.py): each usable coefficient gets the key splitmix64(bits ^ position salt) >> 1,
the salt being splitmix64(position ^ splitmix64(stage)); unusable entries get 2^64 - 1; the min(k, m) usable
coefficients with the smallest keys (ties by position) are free, packed in key order, the rest of the usable ones
are fixed. The compiled stage must make exactly that choice (it decides which subsets a build keeps), on weight-like
rows of 30 and on bias-like rows of thousands (another sorting path).
"""

from __future__ import annotations

import numpy as np
import pytest

from ticketsolver.solvers import ladder

MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def reference_stage(coeffs: np.ndarray, usable: np.ndarray, m: int, stage: int):
    salt = splitmix64(np.array([stage], dtype=np.uint64))
    position = splitmix64(np.arange(coeffs.shape[1], dtype=np.uint64) ^ salt)
    keys = np.where(usable, splitmix64(coeffs.view(np.uint64) ^ position) >> np.uint64(1), MASK64)
    width = min(m, coeffs.shape[1])
    free_idx = np.argsort(keys, axis=1, kind="stable")[:, :width]
    free_usable = np.arange(width)[None, :] < np.minimum(usable.sum(1), m)[:, None]
    packed = np.where(free_usable, np.take_along_axis(coeffs, free_idx, axis=1), 0.0)
    free = np.zeros(usable.shape, dtype=bool)
    np.put_along_axis(free, free_idx, free_usable, axis=1)
    return free_idx, free_usable, packed, usable & ~free


@pytest.mark.parametrize(("rows", "n", "m"), [(300, 30, 26), (300, 30, 40), (7, 5, 26), (6, 2500, 26), (4, 900, 40)])
@pytest.mark.parametrize("stage", [0, 3])
def test_the_compiled_stage_frees_the_coefficients_the_documented_keys_choose(rows, n, m, stage) -> None:
    rng = np.random.default_rng([rows, n, m, stage])
    coeffs = rng.uniform(-1, 1, (rows, n)) * rng.uniform(-1, 1, (rows, n))
    coeffs[0, : n // 2] = 0.5  # repeated values: equal bits, keys differ by position only
    usable = rng.random((rows, n)) < rng.uniform(0.3, 1.0, (rows, 1))
    usable[1] = False  # nothing usable
    width = min(m, n)
    got = (
        np.empty((rows, width), dtype=np.int64),
        np.empty((rows, width), dtype=bool),
        np.empty((rows, width), dtype=np.float64),
        np.empty((rows, n), dtype=bool),
    )
    ladder._choose_free(coeffs, coeffs.view(np.uint64), usable, ladder._stage_positions(n, stage), m, *got)
    for name, have, want in zip(
        ("free_idx", "free_usable", "packed", "fixed"), got, reference_stage(coeffs, usable, m, stage), strict=True
    ):
        np.testing.assert_array_equal(have, want, err_msg=name)


@pytest.mark.parametrize("n", [1, 9, 64, 65, 3000])
def test_stable_order_is_numpys_stable_argsort(n: int) -> None:
    rng = np.random.default_rng(n)
    for values in (rng.normal(size=n), rng.integers(0, 4, n).astype(np.float64), np.full(n, np.inf)):
        order = np.empty(n, dtype=np.int64)
        ladder._stable_order(values, order)
        np.testing.assert_array_equal(order, np.argsort(values, kind="stable"))
