"""Exact meet-in-the-middle (Horowitz–Sahni) subset-sum engine, compiled with numba, parallel over cores.

For one problem with k usable coefficients the search splits them into halves of k//2 and k - k//2,
builds the sorted list of every subset sum of each half by *merging* (adding coefficient i merges the
list with a shifted copy of itself: linear time, no sort), then scans both lists with two pointers for
the pair whose sum is closest to the target. Every level of the merges is kept (they take as much room as the
two buffers a merge needs), so the subset behind a chosen sum is read back from them by binary search, level by
level, in O(k^2). Work and memory are O(2^(k/2)) per problem; the answer is the exact optimum of the float64
problem. Problems are spread over all cores in contiguous chunks, each chunk owning its buffers, so memory stays
bounded by threads x 2^(k/2) whatever the batch size. A large batch runs as a few kernel calls of similar work,
with progress reported after each.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange

from ticketsolver.errors import InvalidProblemError
from ticketsolver.solvers.base import Progress, RawSolution, Solver, SolveStatus
from ticketsolver.solvers.limits import check_magnitude, check_usable_count

__all__ = ["NumbaMitmSolver"]


# The kernels process LANES = 4 independent problems (same usable count) in lockstep, written out by
# hand: a merge or scan step of one problem is a chain load -> add -> compare -> index update whose
# latency dominates, and four independent chains in one loop body overlap it. Loops have fixed trip
# counts, so lanes never diverge, and data-dependent choices compile to branch-free code: the merged
# value is min(x, y) (minsd), pointers advance by the comparison's 0/1, and the merge carries no subset
# bits (LLVM turned that select back into a branch that mispredicts half the time on random data).
# Subsets are recovered afterwards from the chosen sums (see _recover_subset). Indices are unsigned, which
# spares every access NumPy's negative-index wraparound. Measured on this machine (CPU time, one thread,
# n = 21): 74 us/problem for a masks-carrying 4-lane merge, 16 us for this one. Eight lanes (or four problems
# with two independent chains each) measured no faster at k = 24..28: the loop is then throughput-bound.
#
# Layout of one half's buffer row: level i (the 2^i sorted sums of the first i coefficients) starts at
# _level_start(i) = 2^i + 2i, with -BIG just before it and +BIG just after it, for i = 0..m; 2^(m+1) + 2m + 1
# entries in all, about the two 2^m buffers a ping-pong merge needs.
LANES = 4
BIG = 1e300  # sentinels; limits.MAGNITUDE_LIMIT keeps every subset sum far from them
_ONE = np.uint64(1)
#: work (sum over problems of 2^(k/2)) per kernel call and thread: ~0.2 s at any k, the progress step
WORK_PER_CALL = 1 << 24
#: one parallel kernel at a time per process: numba's workqueue threading layer aborts on concurrent
#: launches, and two launches that each use every core gain nothing from overlapping
_KERNEL_LOCK = threading.Lock()


@njit(cache=True, nogil=True, inline="always")
def _merge_step(src, dst, q, a, b, c):  # pragma: no cover - compiled
    """dst[q] = the smaller head of src[a:] and src[b:] + c; return the advanced (a, b)."""
    x = src[a]
    y = src[b] + c
    t = np.uint64(x <= y)
    dst[q] = min(x, y)
    return a + t, b + (_ONE - t)


@njit(cache=True, nogil=True, inline="always")
def _level_start(i):  # pragma: no cover - compiled
    """Index of level i (the sorted sums of the first i coefficients) in a half's buffer row."""
    return (1 << i) + 2 * i


@njit(cache=True, nogil=True)
def _sorted_sums4(c, m, bufs):  # pragma: no cover - compiled
    """Every subset sum of c[lane, :m], ascending, for 4 lanes, with every level of the merges kept.

    Level i + 1 merges level i with a copy shifted by c_i: linear time, no sort; the +BIG sentinel after
    level i lets each merge run exactly 2·size steps. Level m, the result, starts at _level_start(m).
    """
    for p in range(LANES):
        bufs[p, 0] = -BIG
        bufs[p, 1] = 0.0  # level 0: the empty subset
        bufs[p, 2] = BIG
    r0, r1, r2, r3 = bufs[0], bufs[1], bufs[2], bufs[3]
    src = np.uint64(_level_start(0))
    size = 1
    for i in range(m):
        dst = np.uint64(_level_start(i + 1))
        for p in range(LANES):
            bufs[p, dst - _ONE] = -BIG
        k0, k1, k2, k3 = c[0, i], c[1, i], c[2, i], c[3, i]
        a0 = a1 = a2 = a3 = src
        b0 = b1 = b2 = b3 = src
        for q in range(dst, dst + np.uint64(2 * size)):
            a0, b0 = _merge_step(r0, r0, q, a0, b0, k0)
            a1, b1 = _merge_step(r1, r1, q, a1, b1, k1)
            a2, b2 = _merge_step(r2, r2, q, a2, b2, k2)
            a3, b3 = _merge_step(r3, r3, q, a3, b3, k3)
        size *= 2
        for p in range(LANES):
            bufs[p, dst + np.uint64(size)] = BIG
        src = dst


@njit(cache=True, nogil=True, inline="always")
def _scan_step(left, right, target, i, j, best, bi, bj):  # pragma: no cover - compiled
    """One two-pointer step of one lane; returns the updated (i, j, best, bi, bj).

    The pointer moves on ``sum <= target``, which for finite values is ``target - sum >= 0`` without the
    subtraction's latency in the loop-carried chain (load, add, compare, index; ~10% faster scans).
    """
    s = left[i] + right[j]
    up = np.uint64(s <= target)
    ad = abs(target - s)
    better = ad < best
    best = min(ad, best)
    bi = i if better else bi
    bj = j if better else bj
    return i + up, j - (_ONE - up), best, bi, bj


@njit(cache=True, nogil=True)
def _closest_pairs4(s1, s2, m1, m2, t, out):  # pragma: no cover - compiled
    """For each lane, the (i, j) minimising |t - s1[i] - s2[j]|, over the last levels of both halves.

    s1 holds its 2^m1 sums ascending from _level_start(m1) (+BIG after them); s2 holds 2^m2 from
    _level_start(m2) (-BIG before them). Two pointers, s1 from the left and s2 from the right, visit every
    pair that can be closest. The scan runs exactly 2^m1 + 2^m2 - 1 steps: after one list is exhausted its
    pointer rests on a sentinel whose distance is ~BIG, and within that many steps both never do, so no index
    leaves its level and no sentinel pair (BIG - BIG) is ever compared.
    """
    l0, l1, l2, l3 = s1[0], s1[1], s1[2], s1[3]
    r0, r1, r2, r3 = s2[0], s2[1], s2[2], s2[3]
    zero = np.uint64(0)
    i0 = i1 = i2 = i3 = np.uint64(_level_start(m1))
    j0 = j1 = j2 = j3 = np.uint64(_level_start(m2) + (1 << m2) - 1)
    e0 = e1 = e2 = e3 = np.inf
    x0 = x1 = x2 = x3 = zero
    y0 = y1 = y2 = y3 = zero
    for _ in range((1 << m1) + (1 << m2) - 1):
        i0, j0, e0, x0, y0 = _scan_step(l0, r0, t[0], i0, j0, e0, x0, y0)
        i1, j1, e1, x1, y1 = _scan_step(l1, r1, t[1], i1, j1, e1, x1, y1)
        i2, j2, e2, x2, y2 = _scan_step(l2, r2, t[2], i2, j2, e2, x2, y2)
        i3, j3, e3, x3, y3 = _scan_step(l3, r3, t[3], i3, j3, e3, x3, y3)
    out[0, 0], out[0, 1] = s1[0, x0], s2[0, y0]
    out[1, 0], out[1, 1] = s1[1, x1], s2[1, y1]
    out[2, 0], out[2, 1] = s1[2, x2], s2[2, y2]
    out[3, 0], out[3, 1] = s1[3, x3], s2[3, y3]


@njit(cache=True, nogil=True)
def _first_at_least(row, base, size, v, shift):  # pragma: no cover - compiled
    """The first index x in [0, size) with row[base + x] + shift >= v (size if none); x -> fl(row + shift) is
    non-decreasing over a sorted level, so binary search applies."""
    lo = 0
    hi = size
    while lo < hi:
        mid = (lo + hi) >> 1
        if row[base + mid] + shift < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(cache=True, nogil=True)
def _enumerate_subset(c, m, value, sums):  # pragma: no cover - compiled
    """The bits of the first subset of c[:m], in increasing code order, whose sum is exactly ``value``.

    Enumerating subsets by doubling (sums[code | 2^i] = sums[code] + c[i]) adds coefficients in
    increasing index order, exactly as the merge did, so the merged value reappears bit for bit.
    """
    sums[0] = 0.0
    if value == 0.0:
        return 0
    size = 1
    for i in range(m):
        ci = c[i]
        for q in range(size):
            v = sums[q] + ci
            sums[size + q] = v
            if v == value:
                return size + q
        size *= 2
    return -1  # unreachable for a merged value


@njit(cache=True, nogil=True)
def _recover_subset(row, c, m, value, scratch):  # pragma: no cover - compiled
    """The bits of the smallest subset code of c[:m] whose sum, added in index order, is exactly ``value`` (a
    sum of level m of ``row``, whose levels :func:`_sorted_sums4` kept): :func:`_enumerate_subset`'s answer,
    in O(m^2) instead of O(2^m).

    Level i + 1 is level i merged with level i shifted by c_i, so from the top: if ``value`` is in level i, a
    subset without c_i gives it, and every such code is smaller than any with bit i; else it is fl(x + c_i) for
    some x of level i, and the search goes on with x. Where two distinct sums of level i both round to that
    value (coefficients of few digits, repeated values) the smallest code may come through either, and the
    enumeration decides (in ``scratch``, 2^m entries).
    """
    code = 0
    v = value
    for i in range(m - 1, -1, -1):
        base = _level_start(i)
        size = 1 << i
        x = _first_at_least(row, base, size, v, 0.0)
        if x < size and row[base + x] == v:
            continue  # bit i = 0
        ci = c[i]
        x = _first_at_least(row, base, size, v, ci)
        if x >= size or row[base + x] + ci != v:
            return _enumerate_subset(c, m, value, scratch)  # unreachable for a merged value
        above = _first_at_least(row, base, size, np.nextafter(row[base + x], np.inf), 0.0)
        if above < size and row[base + above] + ci == v:
            return _enumerate_subset(c, m, value, scratch)  # two sums of level i lead to v
        code |= 1 << i
        v = row[base + x]
    return code


@njit(cache=True, nogil=True)
def _solve_range(coeffs, targets, usable, counts, order, out_masks, half_max, start, stop):  # pragma: no cover
    """Solve problems order[start:stop] in groups of LANES with equal usable count."""
    n = coeffs.shape[1]
    size = _level_start(half_max) + (1 << half_max) + 1  # levels 0..half_max and their sentinels
    bufs = np.empty((2, LANES, size), dtype=np.float64)
    scratch = np.empty(1 << half_max, dtype=np.float64)  # for the rare recovery by enumeration
    c1 = np.zeros((LANES, n), dtype=np.float64)
    c2 = np.zeros((LANES, n), dtype=np.float64)
    idx = np.empty((LANES, n), dtype=np.int64)
    lane_problem = np.empty(LANES, dtype=np.int64)
    lane_target = np.empty(LANES, dtype=np.float64)
    chosen = np.empty((LANES, 2), dtype=np.float64)
    g = start
    while g < stop:
        k = counts[order[g]]
        filled = 0
        while filled < LANES and g < stop and counts[order[g]] == k:
            lane_problem[filled] = order[g]
            filled += 1
            g += 1
        for p in range(filled, LANES):  # pad a short group with copies of its first problem
            lane_problem[p] = lane_problem[0]
        m1 = k // 2
        m2 = k - m1
        for p in range(LANES):
            b = lane_problem[p]
            lane_target[p] = targets[b]
            q = 0
            for i in range(n):
                out_masks[b, i] = False
                if usable[b, i]:
                    idx[p, q] = i
                    q += 1
            for i in range(m1):
                c1[p, i] = coeffs[b, idx[p, i]]
            for i in range(m2):
                c2[p, i] = coeffs[b, idx[p, m1 + i]]
        if k == 0:
            continue
        _sorted_sums4(c1, m1, bufs[0])
        _sorted_sums4(c2, m2, bufs[1])
        _closest_pairs4(bufs[0], bufs[1], m1, m2, lane_target, chosen)
        for p in range(filled):
            b = lane_problem[p]
            w1 = _recover_subset(bufs[0, p], c1[p], m1, chosen[p, 0], scratch)
            w2 = _recover_subset(bufs[1, p], c2[p], m2, chosen[p, 1], scratch)
            for t in range(m1):
                if (w1 >> t) & 1:
                    out_masks[b, idx[p, t]] = True
            for t in range(m2):
                if (w2 >> t) & 1:
                    out_masks[b, idx[p, m1 + t]] = True


@njit(cache=True, parallel=True)
def _solve_ordered(coeffs, targets, usable, counts, order, out_masks, half_max, n_chunks):  # pragma: no cover
    """Spread contiguous chunks of ``order`` (problems sorted by usable count) over the cores."""
    batch = order.shape[0]
    for chunk in prange(n_chunks):
        start = chunk * batch // n_chunks
        stop = (chunk + 1) * batch // n_chunks
        _solve_range(coeffs, targets, usable, counts, order, out_masks, half_max, start, stop)


class NumbaMitmSolver(Solver):
    """Exact meet-in-the-middle on the CPU (numba, all cores); the ``mitm`` engine where no GPU is present.

    Args:
        threads: number of threads (default: all of numba's threads, i.e. all cores).

    Raises:
        InvalidProblemError: ``threads`` outside [1, number of cores].
        ProblemTooLargeError: (from solve) a problem has more than :data:`~ticketsolver.solvers.limits.MAX_N`
            usable coefficients.

    Example:
        >>> import numpy as np
        >>> sol = NumbaMitmSolver(threads=1).solve(np.array([[0.5, 0.25, -0.125]]), np.array([0.375]))
        >>> sol.masks.tolist(), sol.solver, sol.tolerance, sol.info["engine"]
        ([[True, False, True]], 'mitm', 0.0, 'numba')
    """

    name = "mitm"
    tolerance = 0.0

    def __init__(self, threads: int | None = None) -> None:
        limit = numba.config.NUMBA_NUM_THREADS  # type: ignore[attr-defined]  # set at import from the machine
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or not 1 <= threads <= limit
        ):
            raise InvalidProblemError(f"threads must be an int in [1, {limit}], got {threads!r}")
        self.threads = threads

    def _solve_batch(
        self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, progress: Progress
    ) -> RawSolution:
        counts = usable.sum(1)
        k_max = int(counts.max())
        check_usable_count(k_max)
        check_magnitude(coeffs, targets, usable)
        masks = np.zeros(coeffs.shape, dtype=bool)
        order = np.argsort(counts, kind="stable")
        threads = self.threads or numba.get_num_threads()
        bounds = _call_bounds(counts[order], WORK_PER_CALL * threads)
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            k_call = int(counts[order[stop - 1]])  # the largest count of this call: it sizes the buffers
            half_max = max(1, k_call - k_call // 2)
            # several chunks per thread balance uneven rows; never more chunks than problems
            n_chunks = max(1, min(stop - start, 8 * threads))
            with _KERNEL_LOCK:
                previous = numba.get_num_threads()
                numba.set_num_threads(threads)
                try:
                    _solve_ordered(coeffs, targets, usable, counts, order[start:stop], masks, half_max, n_chunks)
                finally:
                    numba.set_num_threads(previous)
            progress(int(stop), len(targets))
        return RawSolution(
            masks=masks,
            status=np.full(len(targets), SolveStatus.OPTIMAL.value),
            info={"engine": "numba", "threads": threads, "max_usable": k_max},
            tolerance=0.0,
        )


def _call_bounds(sorted_counts: np.ndarray, budget: int) -> list[int]:
    """Boundaries [0, ..., B] of kernel calls over problems sorted by usable count, each call holding
    about ``budget`` work (2^(k/2) per problem with k usable coefficients) and at least one problem."""
    work = np.cumsum(np.exp2(sorted_counts / 2))
    cuts = np.searchsorted(work, np.arange(1, int(work[-1] // budget) + 1) * float(budget), side="right")
    return sorted({0, *(int(c) for c in cuts if 0 < c < len(work)), len(work)})
