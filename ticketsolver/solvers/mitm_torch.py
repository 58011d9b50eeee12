"""Exact meet-in-the-middle in torch: the same optimum as the numba engine, on any torch device (CUDA, CPU).

The GPU formulation trades the CPU engine's merges for operations a GPU does well: every subset sum of a
half by doubling (``sums = cat(sums, sums + c_i)``; the column index *is* the subset's bit pattern), a
batched sort of the right half, and ``searchsorted`` of ``target - left`` in it; the closest pair is one
of the two neighbours of each insertion point. Problems are grouped by usable count (only usable entries
enter the search) and processed in chunks sized to a memory budget; progress is reported after each chunk.
The code is device-agnostic: the tests run it on the CPU against brute force and the numba engine.
"""

from __future__ import annotations

import numpy as np
import torch

from ticketsolver.errors import InvalidProblemError, SolverUnavailableError
from ticketsolver.solvers.base import Progress, RawSolution, Solver, SolveStatus
from ticketsolver.solvers.limits import check_magnitude, check_usable_count

__all__ = ["TorchMitmSolver"]


def _subset_sums(coeffs: torch.Tensor) -> torch.Tensor:
    """(B, m) -> (B, 2^m): column s holds the sum of the coefficients whose bits are set in s."""
    sums = torch.zeros(coeffs.shape[0], 1, dtype=coeffs.dtype, device=coeffs.device)
    for i in range(coeffs.shape[1]):
        sums = torch.cat([sums, sums + coeffs[:, i : i + 1]], dim=1)
    return sums


def _bits(codes: torch.Tensor, m: int) -> torch.Tensor:
    """(B,) subset codes -> (B, m) bool."""
    shifts = torch.arange(m, device=codes.device)
    return ((codes[:, None] >> shifts) & 1).bool()


def _solve_group(coeffs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Exact masks (B, k) for problems with exactly k usable coefficients each."""
    k = coeffs.shape[1]
    m1 = k // 2
    left = _subset_sums(coeffs[:, :m1])  # (B, 2^m1), unsorted
    right, right_codes = torch.sort(_subset_sums(coeffs[:, m1:]), dim=1)  # (B, 2^m2)
    want = (targets[:, None] - left).contiguous()
    pos = torch.searchsorted(right, want)  # first right >= want
    size2 = right.shape[1]
    # the closest right sum is the one just below or the one at/above `want` (indices clamped into range)
    below, above = (pos - 1).clamp(0, size2 - 1), pos.clamp(0, size2 - 1)
    err_below = (want - torch.gather(right, 1, below)).abs()
    err_above = (want - torch.gather(right, 1, above)).abs()
    take = err_above < err_below  # ties keep the lower candidate, as a scan from below would
    best_err = torch.where(take, err_above, err_below)
    best = torch.where(take, above, below)
    i = best_err.argmin(dim=1)  # best left subset per problem
    j = best.gather(1, i[:, None])[:, 0]
    left_codes = i
    right_code = right_codes.gather(1, j[:, None])[:, 0]
    return torch.cat([_bits(left_codes, m1), _bits(right_code, k - m1)], dim=1)


class TorchMitmSolver(Solver):
    """Exact meet-in-the-middle with torch (registered as ``mitm_torch``); ``mitm`` uses it where CUDA is present.

    Args:
        device: torch device ("cuda", "cuda:1", "cpu"); default: cuda when available, else cpu.
        max_elements: memory budget, in float64 elements of the largest intermediate, per chunk.

    Raises:
        InvalidProblemError: a device torch does not know, ``max_elements`` below 4096.
        SolverUnavailableError: a CUDA device asked for where torch has none.

    Example:
        >>> import numpy as np
        >>> sol = TorchMitmSolver(device="cpu").solve(np.array([[0.5, 0.25, -0.125]]), np.array([0.375]))
        >>> sol.masks.tolist(), sol.solver, sol.tolerance, sol.info["device"]
        ([[True, False, True]], 'mitm_torch', 0.0, 'cpu')
    """

    name = "mitm_torch"
    tolerance = 0.0

    def __init__(self, device: str | torch.device | None = None, max_elements: int = 1 << 25) -> None:
        if isinstance(max_elements, bool) or not isinstance(max_elements, (int, np.integer)) or max_elements < 4096:
            raise InvalidProblemError(f"max_elements must be an int of at least 4096, got {max_elements!r}")
        try:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except (RuntimeError, TypeError) as exc:
            raise InvalidProblemError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from exc
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SolverUnavailableError(f"device {device!r} asked for, but torch sees no CUDA device; use 'cpu'")
        self.max_elements = int(max_elements)

    def _solve_batch(
        self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray, progress: Progress
    ) -> RawSolution:
        counts = usable.sum(1)
        check_usable_count(int(counts.max()))
        check_magnitude(coeffs, targets, usable)
        masks = np.zeros(coeffs.shape, dtype=bool)
        done = int(np.count_nonzero(counts == 0))  # nothing to choose: the empty subset, already in masks
        # move usable entries to the front of each row, keeping their order
        order = np.argsort(~usable, axis=1, kind="stable")
        packed = np.take_along_axis(coeffs, order, axis=1)
        for k in np.unique(counts[counts > 0]):
            rows = np.flatnonzero(counts == k)
            per_problem = 3 << (k - k // 2)  # right sums, their codes, and the candidates
            chunk = max(1, self.max_elements // per_problem)
            for start in range(0, rows.size, chunk):
                sel = rows[start : start + chunk]
                c = torch.from_numpy(packed[sel, :k]).to(self.device)
                t = torch.from_numpy(targets[sel]).to(self.device)
                chosen = _solve_group(c, t).cpu().numpy()
                sub = masks[sel]  # fancy indexing copies: scatter into the copy, then write it back
                np.put_along_axis(sub, order[sel, :k], chosen, axis=1)
                masks[sel] = sub
                done += sel.size
                progress(done, len(targets))
        return RawSolution(
            masks=masks,
            status=np.full(len(targets), SolveStatus.OPTIMAL.value),
            info={"engine": "torch", "device": str(self.device)},
            tolerance=0.0,
        )
