"""Construction I — input blocks (Pensia et al. 2020), for inputs of any sign.

Hidden units (d_in + has_bias)·n; block j = units (j, 1..n) is fed only by x_j (U pruned to its block
diagonal), and the bias block only by its bias beta. Since relu(u·x_j) = u·x_j+ for u > 0 and |u|·x_j- for
u < 0, weight w_ij is matched by two subset sums over c_t = V[i,(j,t)]·|U[(j,t),j]|: over t with U > 0 for
target w_ij (serves x_j > 0), and over t with U < 0 for target -w_ij (serves x_j < 0; the pair computes
W- x- with W- ~ -W). The bias b_i: over c_t = V[i,(bias,t)]·beta_t for beta > 0. U is shared across
outputs; V's entries belong to one weight each, so a redraw replaces that weight's n entries of V.
"""

from __future__ import annotations

import numpy as np

from ticketsolver.construction.layout import DrawCache, PairLayout
from ticketsolver.construction.output_blocks import _stats
from ticketsolver.construction.rounds import RoundProgress, RoundsResult, solve_with_resampling
from ticketsolver.construction.solution import PairSolution
from ticketsolver.solvers import Solver
from ticketsolver.source import RandomSource

__all__ = ["solve_input_blocks"]


def solve_input_blocks(
    layout: PairLayout,
    source: RandomSource,
    weight: np.ndarray,
    bias: np.ndarray | None,
    solver: Solver,
    resample: int,
    tolerance: float,
    progress: RoundProgress | None = None,
) -> PairSolution:
    """Choose the masks of an input-blocks pair for the dense-view target ``weight`` (d_out, d_in)."""
    d_out, d_in, n = layout.d_out, layout.d_in, layout.n
    blocks = layout.draw_shape[1]  # d_in (+ 1 bias block)
    tensor = DrawCache(layout, source)
    cols = np.arange(d_in)
    u_diag = tensor("U").reshape(blocks, n, d_in)[cols, :, cols].astype(np.float64)  # (d_in, n)
    beta_bias = tensor("beta").reshape(blocks, n)[d_in].astype(np.float64) if layout.has_bias else None

    def v_blocks(draw: int) -> np.ndarray:
        return tensor("V", draw).reshape(d_out, blocks, n)

    def weight_problems(units: np.ndarray, draw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out, col = np.divmod(units, d_in)
        v = v_blocks(draw)[out, col].astype(np.float64)  # (S, n)
        u = u_diag[col]  # (S, n)
        c = v * np.abs(u)
        coeffs = np.stack([c, c], axis=1)  # problem 0 serves x+, problem 1 serves x-
        usable = np.stack([u > 0, u < 0], axis=1)
        w = weight[out, col]
        return coeffs, usable, np.stack([w, -w], axis=1)

    def bias_problems(units: np.ndarray, draw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert bias is not None and beta_bias is not None
        v = v_blocks(draw)[units, d_in].astype(np.float64)
        return (v * beta_bias)[:, None], np.broadcast_to(beta_bias > 0, v.shape)[:, None], bias[units][:, None]

    w = solve_with_resampling(solver, d_out * d_in, weight_problems, resample, tolerance, progress)
    v_mask = np.zeros((d_out, blocks, n), dtype=bool)
    v_mask[:, :d_in] = w.masks.any(axis=1).reshape(d_out, d_in, n)  # the two problems use disjoint t
    draws = np.zeros(layout.draw_shape, dtype=np.uint8)
    draws[:, :d_in] = w.draws.reshape(d_out, d_in)
    b: RoundsResult | None = None
    if bias is not None:
        b = solve_with_resampling(solver, d_out, bias_problems, resample, tolerance, progress)
        v_mask[:, d_in] = b.masks[:, 0]
        draws[:, d_in] = b.draws
    used = v_mask.any(axis=0)  # (blocks, n): hidden units that feed some output
    u_mask = np.zeros((blocks, n, d_in), dtype=bool)
    u_mask[cols, :, cols] = used[:d_in]  # only the block-diagonal entry of a used unit is kept
    masks = {"U": u_mask.reshape(blocks * n, d_in), "V": v_mask.reshape(d_out, blocks * n)}
    if layout.has_bias:
        beta_mask = np.zeros((blocks, n), dtype=bool)
        beta_mask[d_in] = used[d_in]
        masks["beta"] = beta_mask.reshape(blocks * n)
    return PairSolution(
        masks=masks,
        draws=draws,
        weight_errors=w.errors.reshape(d_out, d_in),
        bias_errors=None if b is None else b.errors,
        usable=w.usable.min(axis=1).reshape(d_out, d_in),
        stats=_stats(w, b),
    )
