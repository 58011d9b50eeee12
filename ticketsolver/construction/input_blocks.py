"""Construction I — input blocks (Pensia et al. 2020), for inputs of any sign.

Hidden units (d_in + has_bias)·n; block j = units (j, 1..n) is fed only by x_j (U pruned to its block
diagonal), and the bias block only by its bias beta. Since relu(u·x_j) = u·x_j+ for u > 0 and |u|·x_j- for
u < 0, weight w_ij is matched by two subset sums over c_t = V[i,(j,t)]·|U[(j,t),j]|: over t with U > 0 for
target w_ij (serves x_j > 0), and over t with U < 0 for target -w_ij (serves x_j < 0; the pair computes
W- x- with W- ~ -W). The bias b_i: over c_t = V[i,(bias,t)]·beta_t for beta > 0. U is shared across
outputs; V's entries belong to one weight each, and within a weight's block the entries at U > 0 serve
only its x+ problem, those at U < 0 only its x- problem. So the two problems are separate resampling
units: each redraws its own entries of V and keeps its own best draw. (One draw for both would keep the
draw minimising the larger of two errors: with R draws the typical error falls like 1/sqrt(R), not 1/R.)

From an ER sparse source a coefficient is usable only where both its entries exist: U[(j,t),j] (0 outside U's ER
mask, so neither U > 0 nor U < 0 holds there, and a block's sign balance counts existing entries only) and
V[i,(j,t)] (for the bias: V[i,(bias,t)]; beta stays dense).
"""

from __future__ import annotations

import numpy as np

from ticketsolver.construction.layout import DrawCache, PairLayout
from ticketsolver.construction.output_blocks import _stats, examined_values
from ticketsolver.construction.rounds import RoundProgress, RoundsResult, solve_with_resampling
from ticketsolver.construction.solution import PairSolution
from ticketsolver.solvers import Solver
from ticketsolver.source import RandomSource

__all__ = ["solve_input_blocks"]


def _balanced_blocks(
    layout: PairLayout, source: RandomSource, extra_draws: int, u_exists: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Per input block, the draw whose U signs are most balanced; for the bias block, the beta draw with
    the most positive entries. Returns (draw per block, U's diagonal (d_in, n), the bias block's beta).

    In construction I, U is shared by every output: a block j with k positive entries gives each weight of
    column j k usable coefficients for x+ and n - k for x-, whatever V is. Resampling V cannot change that,
    so before solving each block takes, among draws 0..extra_draws of its own rows (recorded, like every
    draw), the one maximising min(k, n - k) — the weaker of its two problems. Ties keep the earlier draw.
    ``u_exists`` (H, d_in): U's ER mask of a sparse source (entries outside it hold 0 in every draw).
    """
    n, d_in, blocks = layout.n, layout.d_in, layout.draw_shape[1]
    cols = np.arange(d_in)
    best = np.zeros(blocks, dtype=np.uint8)
    u_diag = np.zeros((d_in, n))
    score = np.full(d_in, -1)
    beta_bias = None
    beta_score = -1
    diag_exists = None if u_exists is None else u_exists.reshape(blocks, n, d_in)[cols, :, cols]
    for d in range(extra_draws + 1):
        diag = layout.tensor(source, "U", d).reshape(blocks, n, d_in)[cols, :, cols].astype(np.float64)
        if diag_exists is not None:
            diag[~diag_exists] = 0.0
        positive = (diag > 0).sum(1)
        balance = np.minimum(positive, (diag < 0).sum(1))
        better = balance > score
        best[:d_in][better] = d
        u_diag[better] = diag[better]
        score[better] = balance[better]
        if layout.has_bias:
            beta = layout.tensor(source, "beta", d).reshape(blocks, n)[d_in].astype(np.float64)
            if (beta > 0).sum() > beta_score:
                best[d_in], beta_bias, beta_score = d, beta, int((beta > 0).sum())
    return best, u_diag, beta_bias


def solve_input_blocks(
    layout: PairLayout,
    source: RandomSource,
    weight: np.ndarray,
    bias: np.ndarray | None,
    solver: Solver,
    resample: int,
    tolerance: float,
    progress: RoundProgress | None = None,
    block_draws: int = 0,
) -> PairSolution:
    """Choose the masks of an input-blocks pair for the dense-view target ``weight`` (d_out, d_in).

    ``block_draws`` extra draws of each input block's U rows are considered, the most sign-balanced kept
    (see :func:`_balanced_blocks`); 0 keeps draw 0 everywhere.
    """
    d_out, d_in, n = layout.d_out, layout.d_in, layout.n
    blocks = layout.draw_shape[1]  # d_in (+ 1 bias block)
    tensor = DrawCache(layout, source)
    chosen_blocks, u_diag, beta_bias = _balanced_blocks(layout, source, block_draws, tensor.exists("U"))
    er_v = tensor.exists("V")
    v_exists = None if er_v is None else er_v.reshape(d_out, blocks, n)

    def v_blocks(draw: int) -> np.ndarray:
        return tensor("V", draw).reshape(d_out, blocks, n)

    def weight_problems(units: np.ndarray, draw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # unit = (weight, sign): sign 0 is the x+ problem (t with U > 0), sign 1 the x- problem (U < 0)
        weight_index, sign = np.divmod(units, 2)
        out, col = np.divmod(weight_index, d_in)
        v = v_blocks(draw)[out, col].astype(np.float64)  # (S, n)
        u = u_diag[col]  # (S, n)
        usable = np.where(sign[:, None] == 0, u > 0, u < 0)
        if v_exists is not None:
            usable &= v_exists[out, col]
        w = np.where(sign == 0, weight[out, col], -weight[out, col])
        return (v * np.abs(u))[:, None], usable[:, None], w[:, None]

    def bias_problems(units: np.ndarray, draw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        assert bias is not None and beta_bias is not None
        v = v_blocks(draw)[units, d_in].astype(np.float64)
        usable = np.broadcast_to(beta_bias > 0, v.shape)
        if v_exists is not None:
            usable = usable & v_exists[units, d_in]
        return (v * beta_bias)[:, None], usable[:, None], bias[units][:, None]

    w = solve_with_resampling(solver, 2 * d_out * d_in, weight_problems, resample, tolerance, progress)
    cols = np.arange(d_in)
    v_mask = np.zeros((d_out, blocks, n), dtype=bool)
    v_mask[:, :d_in] = w.masks[:, 0].reshape(d_out, d_in, 2, n).any(axis=2)  # the two problems use disjoint t
    draws = np.zeros(layout.draw_shape, dtype=np.uint8)  # rows: x+ (and bias), x-, input blocks
    by_sign = w.draws.reshape(d_out, d_in, 2)
    draws[:d_out, :d_in] = by_sign[..., 0]
    draws[d_out : 2 * d_out, :d_in] = by_sign[..., 1]
    draws[2 * d_out] = chosen_blocks
    b: RoundsResult | None = None
    if bias is not None:
        b = solve_with_resampling(solver, d_out, bias_problems, resample, tolerance, progress)
        v_mask[:, d_in] = b.masks[:, 0]
        draws[:d_out, d_in] = b.draws
    used = np.any(v_mask, axis=0)  # (blocks, n): hidden units that feed some output
    u_mask = np.zeros((blocks, n, d_in), dtype=bool)
    u_mask[cols, :, cols] = used[:d_in]  # only the block-diagonal entry of a used unit is kept
    masks: dict[str, np.ndarray] = {"U": u_mask.reshape(blocks * n, d_in), "V": v_mask.reshape(d_out, blocks * n)}
    if layout.has_bias:
        beta_mask = np.zeros((blocks, n), dtype=bool)
        beta_mask[d_in] = used[d_in]
        masks["beta"] = beta_mask.reshape(blocks * n)
    return PairSolution(
        masks=masks,
        draws=draws,
        weight_errors=w.errors.reshape(d_out, d_in, 2).max(axis=2),
        bias_errors=None if b is None else b.errors,
        usable=w.usable[:, 0].reshape(d_out, d_in, 2).min(axis=2),
        stats={
            **_stats(w, b),
            # each extra block draw compares the n diagonal U values of every input block (and the bias block's beta)
            "examined_values": examined_values(
                layout, w, b, extra=block_draws * n * (d_in + int(bias is not None)), er=tensor.er
            ),
        },
    )
