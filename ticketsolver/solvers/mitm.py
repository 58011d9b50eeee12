"""Exact meet-in-the-middle (Horowitz–Sahni) subset-sum engine, compiled with numba, parallel over cores.

For one problem with k usable coefficients the search splits them into halves of k//2 and k - k//2,
builds the sorted list of every subset sum of each half by *merging* (adding coefficient i merges the
list with a shifted copy of itself: linear time, no sort), then scans both lists with two pointers for
the pair whose sum is closest to the target. Work and memory are O(2^(k/2)) per problem; the answer is
the exact optimum of the float64 problem. Problems are spread over all cores in contiguous chunks, each
chunk owning its buffers, so memory stays bounded by threads x 2^(k/2) whatever the batch size. A large
batch runs as a few kernel calls of similar work, with progress reported after each.
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
# n = 21): 74 us/problem for a masks-carrying 4-lane merge, 16 us for this one.
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


@njit(cache=True, nogil=True)
def _sorted_sums4(c, m, offset, bufs, spare):  # pragma: no cover - compiled
    """Every subset sum of c[lane, :m], ascending, for 4 lanes; returns the buffer holding them.

    The result occupies [offset, offset + 2^m) of each lane's row, followed by a +BIG sentinel; with
    offset = 1, index 0 holds -BIG, a sentinel for a pointer scanning down. Adding coefficient i merges
    the list with a copy shifted by c_i: linear time, no sort; the sentinel lets each merge run exactly
    2·size steps.
    """
    for p in range(LANES):
        bufs[p, 0] = -BIG
        spare[p, 0] = -BIG
        bufs[p, offset] = 0.0
        bufs[p, offset + 1] = BIG
    src, dst = bufs, spare
    start = np.uint64(offset)
    size = 1
    for i in range(m):
        s0, s1, s2, s3 = src[0], src[1], src[2], src[3]
        d0, d1, d2, d3 = dst[0], dst[1], dst[2], dst[3]
        k0, k1, k2, k3 = c[0, i], c[1, i], c[2, i], c[3, i]
        a0 = a1 = a2 = a3 = start
        b0 = b1 = b2 = b3 = start
        for q in range(start, start + np.uint64(2 * size)):
            a0, b0 = _merge_step(s0, d0, q, a0, b0, k0)
            a1, b1 = _merge_step(s1, d1, q, a1, b1, k1)
            a2, b2 = _merge_step(s2, d2, q, a2, b2, k2)
            a3, b3 = _merge_step(s3, d3, q, a3, b3, k3)
        size *= 2
        for p in range(LANES):
            dst[p, offset + size] = BIG
        src, dst = dst, src
    return src


@njit(cache=True, nogil=True, inline="always")
def _scan_step(left, right, target, i, j, best, bi, bj):  # pragma: no cover - compiled
    """One two-pointer step of one lane; returns the updated (i, j, best, bi, bj)."""
    d = target - (left[i] + right[j])
    ad = abs(d)
    better = ad < best
    best = min(ad, best)
    bi = i if better else bi
    bj = j if better else bj
    up = np.uint64(d >= 0.0)
    return i + up, j - (_ONE - up), best, bi, bj


@njit(cache=True, nogil=True)
def _closest_pairs4(s1, s2, m1, m2, t, out):  # pragma: no cover - compiled
    """For each lane, the (i, j) minimising |t - s1[i] - s2[j]|.

    s1 holds its 2^m1 sums ascending at offset 0 (+BIG after them); s2 holds 2^m2 at offset 1 (-BIG
    before them). Two pointers, s1 from the left and s2 from the right, visit every pair that can be
    closest. The scan runs exactly 2^m1 + 2^m2 - 1 steps: after one list is exhausted its pointer rests
    on a sentinel whose distance is ~BIG, and within that many steps both never do, so no index leaves
    its buffer and no sentinel pair (BIG - BIG) is ever compared.
    """
    l0, l1, l2, l3 = s1[0], s1[1], s1[2], s1[3]
    r0, r1, r2, r3 = s2[0], s2[1], s2[2], s2[3]
    zero = np.uint64(0)
    i0 = i1 = i2 = i3 = zero
    j0 = j1 = j2 = j3 = np.uint64(1 << m2)
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
def _recover_subset(c, m, value, sums):  # pragma: no cover - compiled
    """The bits of a subset of c[:m] whose sum is exactly ``value`` (a sum the merge produced).

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
def _solve_range(coeffs, targets, usable, counts, order, out_masks, half_max, start, stop):  # pragma: no cover
    """Solve problems order[start:stop] in groups of LANES with equal usable count."""
    n = coeffs.shape[1]
    size = (1 << half_max) + 2  # + a sentinel on each side
    bufs = np.empty((4, LANES, size), dtype=np.float64)
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
        s1 = _sorted_sums4(c1, m1, 0, bufs[0], bufs[1])
        s2 = _sorted_sums4(c2, m2, 1, bufs[2], bufs[3])
        _closest_pairs4(s1, s2, m1, m2, lane_target, chosen)
        scratch = bufs[0, 0]  # the sorted lists are no longer needed
        for p in range(filled):
            b = lane_problem[p]
            w1 = _recover_subset(c1[p], m1, chosen[p, 0], scratch)
            w2 = _recover_subset(c2[p], m2, chosen[p, 1], scratch)
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
