"""Construction O — output blocks (da Cunha et al. 2022), for layers whose input is >= 0.

Hidden units d_out·n; block l = units (l, 1..n) feeds only output l (V pruned to its block diagonal).
Weight w_lj is matched by the subset sum over c_t = V[l,(l,t)]·U[(l,t),j] for t with U > 0: every kept
term is >= 0 on inputs x >= 0, so the ReLU is the identity and y_l = sum_j (sum_S c_t) x_j exactly. The
bias b_l is matched over c_t = V[l,(l,t)]·beta_(l,t) for beta > 0. Each U entry (and each beta entry)
belongs to one target entry, so every problem is independent and a redraw touches one unit only.

From an ER sparse source a coefficient is usable only where both its entries exist: U[(l,t),j] (its value is 0
outside U's ER mask, so U > 0 already excludes it) and V[l,(l,t)].
"""

from __future__ import annotations

import numpy as np

from ticketsolver.construction.layout import DrawCache, PairLayout
from ticketsolver.construction.rounds import RoundProgress, RoundsResult, solve_with_resampling
from ticketsolver.construction.solution import PairSolution
from ticketsolver.solvers import Solver
from ticketsolver.source import RandomSource

__all__ = ["solve_output_blocks"]


def solve_output_blocks(
    layout: PairLayout,
    source: RandomSource,
    weight: np.ndarray,
    bias: np.ndarray | None,
    solver: Solver,
    resample: int,
    tolerance: float,
    progress: RoundProgress | None = None,
) -> PairSolution:
    """Choose the masks of an output-blocks pair for the dense-view target ``weight`` (d_out, d_in)."""
    d_out, d_in, n = layout.d_out, layout.d_in, layout.n
    rows = np.arange(d_out)
    tensor = DrawCache(layout, source)
    v = tensor("V").reshape(d_out, d_out, n)[rows, rows].astype(np.float64)  # (d_out, n)
    er_v = tensor.exists("V")
    v_exists = None if er_v is None else er_v.reshape(d_out, d_out, n)[rows, rows]  # (d_out, n)

    def weight_problems(units: np.ndarray, draw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out, col = np.divmod(units, d_in)
        u = tensor("U", draw).reshape(d_out, n, d_in)[out, :, col].astype(np.float64)  # (S, n)
        usable = u > 0  # an entry outside U's ER mask holds 0
        if v_exists is not None:
            usable &= v_exists[out]
        return (v[out] * u)[:, None], usable[:, None], weight[out, col][:, None]

    def bias_problems(units: np.ndarray, draw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        beta = tensor("beta", draw).reshape(d_out, n)[units].astype(np.float64)
        assert bias is not None
        usable = beta > 0
        if v_exists is not None:
            usable &= v_exists[units]
        return (v[units] * beta)[:, None], usable[:, None], bias[units][:, None]

    w = solve_with_resampling(solver, d_out * d_in, weight_problems, resample, tolerance, progress)
    u_mask = w.masks[:, 0].reshape(d_out, d_in, n).transpose(0, 2, 1)  # (d_out, n, d_in)
    hidden_used = u_mask.any(axis=2)  # (d_out, n)
    masks: dict[str, np.ndarray] = {"U": np.ascontiguousarray(u_mask).reshape(d_out * n, d_in)}
    draws = np.zeros(layout.draw_shape, dtype=np.uint8)
    draws[:, :d_in] = w.draws.reshape(d_out, d_in)
    b: RoundsResult | None = None
    if bias is not None:
        b = solve_with_resampling(solver, d_out, bias_problems, resample, tolerance, progress)
        beta_mask = b.masks[:, 0]  # (d_out, n)
        hidden_used |= beta_mask
        masks["beta"] = beta_mask.reshape(d_out * n)
        draws[:, d_in] = b.draws
    v_mask = np.zeros((d_out, d_out, n), dtype=bool)
    v_mask[rows, rows] = hidden_used  # a V entry is kept where its hidden unit carries anything
    masks["V"] = v_mask.reshape(d_out, d_out * n)
    return PairSolution(
        masks=masks,
        draws=draws,
        weight_errors=w.errors.reshape(d_out, d_in),
        bias_errors=None if b is None else b.errors,
        usable=w.usable[:, 0].reshape(d_out, d_in),
        stats={**_stats(w, b), "examined_values": examined_values(layout, w, b, er=tensor.er)},
    )


def examined_values(
    layout: PairLayout, *results: RoundsResult | None, extra: int = 0, er: dict[str, np.ndarray] | None = None
) -> int:
    """Random values the build drew and compared for this pair: the source once (an ER sparse source's
    nonzeros, counted from its masks ``er``), plus the n values of each unit redraw (O: a weight's U column in its
    block, a bias's beta block; I: a problem's V entries of its block), plus ``extra`` (I's block draws). Equals
    ``source_params`` when nothing was redrawn."""
    redraws = sum(r.redraws for r in results if r is not None)
    return layout.source_params(er) + redraws * layout.n + extra


def _stats(*results: RoundsResult | None) -> dict[str, object]:
    """Solver statistics summed over the weight and bias rounds."""
    status: dict[str, int] = {}
    backends: dict[str, int] = {}
    problems, seconds = 0, 0.0
    for r in results:
        if r is None:
            continue
        problems += r.problems_solved
        seconds += r.seconds
        for k, c in r.status_counts.items():
            status[k] = status.get(k, 0) + c
        for k, c in r.backends.items():
            backends[k] = backends.get(k, 0) + c
    return {"problems_solved": problems, "solve_seconds": seconds, "status": status, "backends": backends}
