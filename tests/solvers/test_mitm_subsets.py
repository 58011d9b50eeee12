"""Which subset the numba meet-in-the-middle engine returns, not only how good it is.

The engine's answer is pinned down by its documented algorithm: the usable coefficients split into the first
k // 2 and the rest, each half's subset sums sorted (each sum added in index order), a two-pointer scan that keeps
the *first* closest pair, and each half's sum read back as its smallest subset code. The reference here does all
of that in plain NumPy and Python, recovering subsets by enumerating codes in increasing order — what the engine
did before it kept its merge levels and read subsets back by binary search. Ties between different subsets of
equal sums (integer, few-digit and repeated coefficients) are where a recovery could pick another subset; the masks
must be identical there too, so builds keep choosing the same subsets.
"""

from __future__ import annotations

import numpy as np
import pytest

from ticketsolver.solvers import get_solver

BIG = 1e300


def _sums_in_index_order(c: np.ndarray) -> np.ndarray:
    """sums[code] = the sum of the coefficients whose bits are set in code, added in increasing index order."""
    sums = np.zeros(1)
    for value in c:
        sums = np.concatenate([sums, sums + value])
    return sums


def _smallest_code(c: np.ndarray, value: float) -> int:
    return int(np.flatnonzero(_sums_in_index_order(c) == value)[0])


def _reference_mask(coeffs: np.ndarray, target: float, usable: np.ndarray) -> np.ndarray:
    index = np.flatnonzero(usable)
    k = index.size
    mask = np.zeros(coeffs.shape, dtype=bool)
    if k == 0:
        return mask
    m1 = k // 2
    c1, c2 = coeffs[index[:m1]], coeffs[index[m1:]]
    left = np.concatenate([np.sort(_sums_in_index_order(c1)), [BIG]])
    right = np.concatenate([[-BIG], np.sort(_sums_in_index_order(c2))])
    i, j, best, pair = 0, right.size - 1, np.inf, (0, 0)
    for _ in range(left.size - 1 + right.size - 1 - 1):
        total = left[i] + right[j]
        distance = abs(target - total)
        if distance < best:
            best, pair = distance, (i, j)
        if total <= target:
            i += 1
        else:
            j -= 1
    code1, code2 = _smallest_code(c1, left[pair[0]]), _smallest_code(c2, right[pair[1]])
    for bit in range(m1):
        mask[index[bit]] = bool(code1 >> bit & 1)
    for bit in range(k - m1):
        mask[index[m1 + bit]] = bool(code2 >> bit & 1)
    return mask


def _families(k: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray]]:
    b = 48
    products = rng.uniform(-1, 1, (b, k)).astype(np.float32).astype(np.float64) * rng.uniform(-1, 1, (b, k)).astype(
        np.float32
    ).astype(np.float64)  # as the constructions make them
    integers = rng.integers(-3, 4, (b, k)).astype(np.float64)  # many subsets share each sum, zeros too
    decimals = np.round(rng.normal(0, 1, (b, k)), 2)  # sums that differ in the last bit, and collide after rounding
    repeated = np.repeat(np.round(rng.uniform(-1, 1, (b, 3)), 1), -(-k // 3), axis=1)[:, :k]
    return [
        ("products", products, rng.normal(0, 0.3, b)),
        ("integers", integers, rng.integers(-8, 9, b) + rng.choice([0.0, 0.5], b)),
        ("decimals", decimals, rng.normal(0, 1, b)),
        ("repeated", repeated, np.round(rng.normal(0, 1, b), 1)),
    ]


@pytest.mark.parametrize("k", [1, 2, 3, 6, 9, 12, 15, 16])
def test_numba_mitm_returns_the_subset_its_algorithm_defines(k: int) -> None:
    rng = np.random.default_rng(k)
    engine = get_solver("mitm_numba")
    for name, coeffs, targets in _families(k, rng):
        usable = rng.random(coeffs.shape) < 0.85
        usable[: coeffs.shape[0] // 2] = True
        solution = engine.solve(coeffs, targets, usable)
        for row in range(coeffs.shape[0]):
            expected = _reference_mask(coeffs[row], float(targets[row]), usable[row])
            assert np.array_equal(solution.masks[row], expected), (name, row)


def test_the_subsets_do_not_depend_on_threads_batching_or_padding_lanes() -> None:
    rng = np.random.default_rng(5)
    coeffs = np.round(rng.normal(0, 1, (203, 14)), 2)
    targets = rng.normal(0, 1, 203)
    usable = rng.random(coeffs.shape) < 0.9
    whole = get_solver("mitm_numba").solve(coeffs, targets, usable).masks
    one = get_solver("mitm_numba", threads=1)
    for start in range(0, 203, 7):  # groups of 7: lanes padded differently
        part = one.solve(coeffs[start : start + 7], targets[start : start + 7], usable[start : start + 7]).masks
        assert np.array_equal(part, whole[start : start + 7])
