"""Trusted reference computations for the construction tests, written from docs/design.md section 2 alone.

Nothing here calls the construction code: random tensors come from ``RandomSource`` keys (or are passed in),
effective weights are the block sums of the design text, and subset-sum optima are found by enumeration.
"""

from __future__ import annotations

import itertools

import numpy as np

from ticketsolver.construction.layout import PairLayout
from ticketsolver.source import RandomSource


def kept(tensors: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """source * mask in float64."""
    return {name: np.where(masks[name], tensors[name].astype(np.float64), 0.0) for name in tensors}


def effective_weights(
    layout: PairLayout, tensors: dict[str, np.ndarray], masks: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(W+, W-, b') of a pair from its block sums (dense view; W- is None for construction O).

    O: W'[l, j] = sum_t V[l, (l, t)] U[(l, t), j] and b'[l] = sum_t V[l, (l, t)] beta[(l, t)].
    I: W'+[i, j] = sum_t V[i, (j, t)] relu(U[(j, t), j]), W'- with relu(-U), b'[i] = sum_t V[i, (bias, t)] beta.
    Only block-diagonal entries enter: the structure tests check that nothing else is kept.
    """
    k = kept(tensors, masks)
    d_out, d_in, n = layout.d_out, layout.d_in, layout.n
    if layout.construction == "output_blocks":
        u = k["U"].reshape(d_out, n, d_in)
        v_diag = k["V"].reshape(d_out, d_out, n)[np.arange(d_out), np.arange(d_out)]  # (d_out, n)
        w = np.einsum("lt,ltj->lj", v_diag, u)
        b = np.einsum("lt,lt->l", v_diag, k["beta"].reshape(d_out, n)) if layout.has_bias else None
        return w, None, b
    blocks = d_in + int(layout.has_bias)
    cols = np.arange(d_in)
    u_diag = k["U"].reshape(blocks, n, d_in)[cols, :, cols]  # (d_in, n)
    v = k["V"].reshape(d_out, blocks, n)
    w_pos = np.einsum("ijt,jt->ij", v[:, :d_in], np.maximum(u_diag, 0))
    w_neg = np.einsum("ijt,jt->ij", v[:, :d_in], np.maximum(-u_diag, 0))
    b = v[:, d_in] @ np.maximum(k["beta"].reshape(blocks, n)[d_in], 0) if layout.has_bias else None
    return w_pos, w_neg, b


def per_weight(layout: PairLayout, unit_errors: np.ndarray) -> np.ndarray:
    """Per-unit errors folded to one per weight (and bias): I's weight error is the larger of its two problems."""
    if layout.construction == "output_blocks":
        return unit_errors
    d_out = layout.d_out
    out = unit_errors[:d_out].copy()
    out[:, : layout.d_in] = np.maximum(out[:, : layout.d_in], unit_errors[d_out:, : layout.d_in])
    return out


def realised_unit_errors(
    layout: PairLayout,
    tensors: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    weight: np.ndarray,
    bias: np.ndarray | None,
) -> np.ndarray:
    """Per resampling unit |target - subset sum| as the masks realise it, laid out like the ticket's draws.

    O: (d_out, d_in [+ 1 bias column]). I: (2·d_out, d_in [+ 1]): row i holds weight (i, j)'s x+ problem
    (W'+ ~ W) and bias i, row d_out + i its x- problem (W'- ~ -W), whose bias column is 0.
    """
    w_pos, w_neg, b = effective_weights(layout, tensors, masks)
    errors = np.abs(w_pos - weight)
    if w_neg is not None:
        errors = np.concatenate([errors, np.abs(w_neg + weight)])
    if bias is not None:
        assert b is not None
        bias_column = np.zeros(errors.shape[0])
        bias_column[: layout.d_out] = np.abs(b - bias)
        errors = np.concatenate([errors, bias_column[:, None]], axis=1)
    return errors


def realised_errors(
    layout: PairLayout,
    tensors: dict[str, np.ndarray],
    masks: dict[str, np.ndarray],
    weight: np.ndarray,
    bias: np.ndarray | None,
) -> np.ndarray:
    """Per weight (and bias) |target - subset sum| as the masks realise it: (d_out, d_in [+ 1 bias column])."""
    return per_weight(layout, realised_unit_errors(layout, tensors, masks, weight, bias))


def closest_subset_sum(coefficients: np.ndarray, target: float) -> float:
    """min over subsets S of |target - sum_S c|, by enumeration (a few dozen coefficients at most)."""
    c = np.asarray(coefficients, dtype=np.float64)
    if c.size == 0:
        return abs(target)
    bits = np.array(list(itertools.product((0.0, 1.0), repeat=c.size)))
    return float(np.abs(target - bits @ c).min())


def optimal_unit_errors(
    layout: PairLayout, tensors: dict[str, np.ndarray], weight: np.ndarray, bias: np.ndarray | None
) -> np.ndarray:
    """Per unit the best error any mask could reach on these tensors (layout of realised_unit_errors).

    O: weight (l, j) over c_t = V[l, (l, t)] U[(l, t), j] for U > 0; bias over V beta for beta > 0.
    I: weight (i, j) over c_t = V[i, (j, t)] |U[(j, t), j]|, t with U > 0 for w (row i) and t with U < 0
    for -w (row d_out + i).
    """
    t64 = {name: value.astype(np.float64) for name, value in tensors.items()}
    d_out, d_in, n = layout.d_out, layout.d_in, layout.n
    columns = d_in + int(layout.has_bias)
    if layout.construction == "output_blocks":
        out = np.zeros((d_out, columns))
        u = t64["U"].reshape(d_out, n, d_in)
        v = t64["V"].reshape(d_out, d_out, n)
        for row, j in np.ndindex(d_out, d_in):
            c = v[row, row] * u[row, :, j]
            out[row, j] = closest_subset_sum(c[u[row, :, j] > 0], weight[row, j])
        if bias is not None:
            beta = t64["beta"].reshape(d_out, n)
            for row in range(d_out):
                c = v[row, row] * beta[row]
                out[row, d_in] = closest_subset_sum(c[beta[row] > 0], bias[row])
        return out
    out = np.zeros((2 * d_out, columns))
    u = t64["U"].reshape(columns, n, d_in)
    v = t64["V"].reshape(d_out, columns, n)
    for i, j in np.ndindex(d_out, d_in):
        uj = u[j, :, j]
        c = v[i, j] * np.abs(uj)
        out[i, j] = closest_subset_sum(c[uj > 0], weight[i, j])
        out[d_out + i, j] = closest_subset_sum(c[uj < 0], -weight[i, j])
    if bias is not None:
        beta = t64["beta"].reshape(columns, n)[d_in]
        for i in range(d_out):
            out[i, d_in] = closest_subset_sum((v[i, d_in] * beta)[beta > 0], bias[i])
    return out


def optimal_errors(
    layout: PairLayout, tensors: dict[str, np.ndarray], weight: np.ndarray, bias: np.ndarray | None
) -> np.ndarray:
    """Per weight (and bias) the best error any mask could reach: (d_out, d_in [+ 1 bias column])."""
    return per_weight(layout, optimal_unit_errors(layout, tensors, weight, bias))


def draw_tensors(layout: PairLayout, seed: int, draw: int) -> dict[str, np.ndarray]:
    """Every random tensor of the pair at one draw, straight from the stream keys."""
    source = RandomSource(seed)
    return {
        name: source.tensor(layout.pair, name, shape, layout.scales[name], draw)
        for name, shape in layout.shapes().items()
    }


def tensors_with_draws(layout: PairLayout, seed: int, draws: np.ndarray) -> dict[str, np.ndarray]:
    """The tensors the network holds: draw 0, with each redrawn unit's own entries taken from its draw.

    A unit's own entries (docs/design.md section 2.6): O weight (l, j) -> U[(l, t), j] for all t; O bias l ->
    beta[(l, t)]. Construction I's draws have 2·d_out + 1 rows: its last row holds each input block's
    draw (block j < d_in -> the rows U[(j, t), :]; the bias block -> beta[(bias, t)]), applied first; then
    row i < d_out, column j < d_in is weight (i, j)'s x+ problem -> V[i, (j, t)] for t with U[(j, t), j] > 0;
    row d_out + i is its x- problem -> the other t; column d_in of row i is bias i -> V[i, (bias, t)].
    """
    tensors = draw_tensors(layout, seed, 0)
    d_out, d_in, n = layout.d_out, layout.d_in, layout.n
    if layout.construction == "output_blocks":
        for (row, col), draw in np.ndenumerate(draws):
            if draw == 0:
                continue
            redrawn = draw_tensors(layout, seed, int(draw))
            if col < d_in:
                tensors["U"].reshape(d_out, n, d_in)[row, :, col] = redrawn["U"].reshape(d_out, n, d_in)[row, :, col]
            else:
                tensors["beta"].reshape(d_out, n)[row] = redrawn["beta"].reshape(d_out, n)[row]
        return tensors
    blocks = d_in + int(layout.has_bias)
    for col, draw in enumerate(draws[2 * d_out]):
        if draw:
            redrawn = draw_tensors(layout, seed, int(draw))
            if col < d_in:
                tensors["U"].reshape(blocks, n, d_in)[col] = redrawn["U"].reshape(blocks, n, d_in)[col]
            else:
                tensors["beta"].reshape(blocks, n)[col] = redrawn["beta"].reshape(blocks, n)[col]
    u = tensors["U"].reshape(blocks, n, d_in)
    v = tensors["V"].reshape(d_out, blocks, n)
    for (row, col), draw in np.ndenumerate(draws[: 2 * d_out]):
        if draw == 0:
            continue
        redrawn = draw_tensors(layout, seed, int(draw))["V"].reshape(d_out, blocks, n)
        i = row % d_out
        for t in range(n):
            serves_plus = col == d_in or u[col, t, col] > 0
            if serves_plus == (row < d_out):
                v[i, col, t] = redrawn[i, col, t]
    return tensors
