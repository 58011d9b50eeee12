"""Exact meet-in-the-middle in torch, for CUDA (and any other torch device, the CPU included).

The GPU formulation trades the CPU engine's merges for operations a GPU does well: every subset sum of a
half by doubling (``sums = cat(sums, sums + c_i)``; the column index *is* the subset's bit pattern), a
batched sort of the right half, and ``searchsorted`` of ``target - left`` in it; the closest pair is one
of the two neighbours of each insertion point. Problems are grouped by usable count (only usable entries
enter the search) and processed in chunks sized to a memory budget.
"""

from __future__ import annotations

import numpy as np
import torch

from ticketsolver.errors import InvalidProblemError
from ticketsolver.solvers.base import RawSolution, Solver, SolveStatus
from ticketsolver.solvers.mitm import check_mitm_limit

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
    """Exact meet-in-the-middle with torch; the default ``mitm`` engine where CUDA is present.

    Args:
        device: torch device ("cuda", "cuda:1", "cpu"); default: cuda when available, else cpu.
        max_elements: memory budget, in float64 elements of the largest intermediate, per chunk.
    """

    name = "mitm"
    tolerance = 0.0

    def __init__(self, device: str | torch.device | None = None, max_elements: int = 1 << 25) -> None:
        if max_elements < 1 << 12:
            raise ValueError(f"max_elements must be at least 4096, got {max_elements}")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.max_elements = max_elements

    def _solve_batch(self, coeffs: np.ndarray, targets: np.ndarray, usable: np.ndarray) -> RawSolution:
        counts = usable.sum(1)
        check_mitm_limit(int(counts.max()))
        if not (np.abs(coeffs).sum(1) + np.abs(targets) < 1e250).all():
            raise InvalidProblemError("coefficients or targets too large for exact float64 search")
        masks = np.zeros(coeffs.shape, dtype=bool)
        # move usable entries to the front of each row, keeping their order
        order = np.argsort(~usable, axis=1, kind="stable")
        packed = np.take_along_axis(coeffs, order, axis=1)
        for k in np.unique(counts):
            if k == 0:
                continue
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
        return RawSolution(
            masks=masks,
            status=np.full(len(targets), SolveStatus.OPTIMAL.value),
            info={"engine": "torch", "device": str(self.device)},
        )
