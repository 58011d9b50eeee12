"""Construction L — input blocks with kept offsets: every coefficient usable, exactly linear on a box.

Pensia's input blocks (construction I) feed hidden unit (j, t) from input x_j alone, but its ReLU splits
the unit's use by the sign of u·x_j, so each weight gets two problems of about n/2 coefficients each (and
construction O wastes the half with U < 0). Here each unit also keeps a non-negative random offset beta:

    relu(u·x_j + beta) = u·x_j + beta    whenever  beta >= need(u, j) = max(0, -u·lo_j, -u·hi_j),

i.e. for every x_j in the layer's input box [lo_j, hi_j] (:mod:`ticketsolver.construction.box` computes
boxes that hold for g's own activations). Where need = 0 (u > 0 on a box with lo_j >= 0, or u < 0 with
hi_j <= 0) the offset is pruned: the unit is linear without it. Otherwise the unit is *usable* iff its
random beta covers the need, and then beta is kept. With beta ~ U[0, a_beta] and
a_beta = OFFSET_FACTOR · a_U · max_j max(|lo_j|, |hi_j|), a unit of a signed column qualifies with
probability >= 1 - 1/(2·OFFSET_FACTOR) (0.875 at 4), and on a non-negative column every u > 0 qualifies
too, so a weight gets ~0.9·n usable coefficients instead of ~n/2.

Weight w_ij is then one subset sum over c_t = V[i,(j,t)]·u_(j,t) for the usable t: the pair computes
y_i = sum_j (sum_S c_t) x_j + K_i with the constant K_i = sum of V[i,(j,t)]·beta_(j,t) over the chosen t whose
offset is kept. A bias block of ``bias_units`` units relu(beta_b) = beta_b (fed by nothing, beta_b >= 0 so
always linear) matches the target bias *minus that constant*: one subset sum per output over
c_t = V[i,(b,t)]·beta_(b,t), target b_i - K_i. The bias block exists whether or not the target has a bias.

All tensors are draw 0 of their law (U, V uniform on [-a, a]; beta uniform on [0, a_beta]): the ticket is a
pruning of one i.i.d. random network, chosen without re-randomisation.

From an ER sparse source (densities p_U, p_V) a coefficient is usable only where both its entries exist:
u_(j,t) = U[(j,t),j] and V[i,(j,t)] (the bias block's: V[i,(b,t)]; beta stays dense). A weight then has about
0.9·n·p_U·p_V usable coefficients and an output's bias problem bias_units·p_V, which :func:`offset_scales` sizes
the scales and the bias block for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ticketsolver.construction.layout import DrawCache, PairLayout
from ticketsolver.construction.output_blocks import _stats
from ticketsolver.construction.rounds import RoundProgress, solve_with_resampling
from ticketsolver.construction.solution import PairSolution
from ticketsolver.solvers import Solver
from ticketsolver.source import RandomSource

__all__ = ["OFFSET_FACTOR", "OffsetBlocks", "offset_scales", "solve_offset_blocks"]

#: a_beta / (a_U · h_max): larger qualifies more units but makes the constants to cancel larger
OFFSET_FACTOR = 4.0
#: a unit's offset must exceed its need by this relative margin (float32 rounding of u·x + beta)
NEED_MARGIN = 1e-5
#: the bias block reaches this multiple of the estimated constant (4 standard deviations) plus |b|
BIAS_REACH_MARGIN = 1.25


def offset_scales(
    weight: np.ndarray,
    bias: np.ndarray | None,
    lo: np.ndarray,
    hi: np.ndarray,
    n: int,
    margin: float,
    densities: dict[str, float] | None = None,
) -> tuple[dict[str, float], int]:
    """Scales of U, V, beta and the bias block's width for target ``weight`` (d_out, d_in) on box [lo, hi].

    With all ~n coefficients c = v·u (v, u uniform on [-a, a]) usable, the positive ones sum to ~n·a²/8, so
    a² = 8·margin·max|w| / n puts the largest |w| at 1/margin of the reach. The bias block must reach
    |b_i - K_i|: K_i sums ~m terms v·beta of standard deviation a·a_beta/3 (m = n/2 chosen units per
    column times the fraction whose offset is kept), and the bias block's positive coefficients sum to
    ~bias_units·a·a_beta/8. An ER sparse source (``densities`` of U and V) leaves n·p_U·p_V candidates per weight
    in place of n, and p_V of the bias block's units: the same formulas with those counts.
    """
    p_u, p_v = (1.0, 1.0) if not densities else (densities.get("U", 1.0), densities.get("V", 1.0))
    if p_u * p_v < 1.0:
        n_w: float = n * p_u * p_v
    else:
        n_w = n  # dense: the very arithmetic of every dense ticket so far
    w_max = max(float(np.abs(weight).max()), 1e-12)
    a = math.sqrt(8.0 * margin * w_max / n_w)
    h = np.maximum(np.abs(lo), np.abs(hi))
    h_max = float(h.max()) if h.size else 0.0
    a_beta = OFFSET_FACTOR * a * h_max if h_max > 0 else a
    signed = (lo < 0) & (hi > 0)
    one_sided = ~signed & (h > 0)
    offset_terms = n_w / 2 * (float(signed.sum()) + 0.5 * float(one_sided.sum()))
    b_max = 0.0 if bias is None else float(np.abs(bias).max())
    reach = BIAS_REACH_MARGIN * (4.0 * math.sqrt(offset_terms) / 3.0 + b_max / (a * a_beta))
    bias_units = max(n, math.ceil(8.0 * reach / p_v))
    return {"U": a, "V": a, "beta": a_beta}, bias_units


@dataclass(frozen=True)
class OffsetBlocks:
    """An L pair's random values as its subset sums see them (draw 0), and which units are usable.

    ``u`` (d_in, n): the diagonal U[(j, t), j]; ``beta`` (d_in, n) their offsets and ``beta_bias`` (bias_units,)
    the bias block's; ``v_all`` (d_out, hidden) V and ``v`` (d_out, d_in, n) its input-block part; ``offset``
    (d_in, n): the unit needs its offset on [lo, hi]; ``usable`` (d_in, n): it is linear there (no need, or
    its offset covers the need with NEED_MARGIN) and, from a sparse source, its U entry exists; ``v_exists``
    (d_out, hidden): V's ER mask of a sparse source, None when V is dense.
    """

    u: np.ndarray
    beta: np.ndarray
    beta_bias: np.ndarray
    v_all: np.ndarray
    v: np.ndarray
    offset: np.ndarray
    usable: np.ndarray
    v_exists: np.ndarray | None = None
    er: dict[str, np.ndarray] = field(default_factory=dict)  # the ER masks of a sparse source (none: dense)

    @classmethod
    def draw(cls, layout: PairLayout, source: RandomSource, lo: np.ndarray, hi: np.ndarray) -> OffsetBlocks:
        d_out, d_in, n = layout.d_out, layout.d_in, layout.n
        split = d_in * n
        tensor = DrawCache(layout, source)
        cols = np.arange(d_in)
        if layout.sparse:  # its U holds 0 outside the ER mask, and U's mask is needed whole anyway (er, below)
            u = tensor("U")[:split].reshape(d_in, n, d_in)[cols, :, cols].astype(np.float64)
        else:  # only U's diagonal: a d_in-th of U, bit-identical to the entries of the whole draw
            u = layout.offset_diagonal(source).astype(np.float64)
        beta_all = tensor("beta").astype(np.float64)
        v_all = tensor("V")
        need = np.maximum(0.0, np.maximum(-u * lo[:, None], -u * hi[:, None]))  # (d_in, n)
        offset = need > 0
        beta = beta_all[:split].reshape(d_in, n)
        usable = ~offset | (beta >= need * (1.0 + NEED_MARGIN))
        er_u = tensor.exists("U")
        if er_u is not None:  # u = 0 outside U's ER mask would need no offset: it is no coefficient at all
            usable &= er_u[:split].reshape(d_in, n, d_in)[cols, :, cols]
        return cls(
            u=u,
            beta=beta,
            beta_bias=beta_all[split:],
            v_all=v_all,
            v=v_all[:, :split].reshape(d_out, d_in, n),
            offset=offset,
            usable=usable,
            v_exists=tensor.exists("V"),
            er=tensor.er,
        )

    def weight_problems(self, units: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Coefficients (S, n), usable (S, n) and targets (S,) of weights ``units`` (flat index i·d_in + j)."""
        out, col = np.divmod(units, weight.shape[1])
        usable = self.usable[col]
        if self.v_exists is not None:
            d_in, n = self.u.shape
            usable = usable & self.v_exists[:, : d_in * n].reshape(-1, d_in, n)[out, col]
        return self.v[out, col].astype(np.float64) * self.u[col], usable, weight[out, col]

    def bias_usable(self) -> np.ndarray:
        """(d_out, bias_units): the bias block's usable units per output (beta > 0, and V's entry exists)."""
        usable = np.broadcast_to(self.beta_bias > 0, (self.v_all.shape[0], self.beta_bias.size))
        if self.v_exists is not None:
            usable = usable & self.v_exists[:, self.v_all.shape[1] - self.beta_bias.size :]
        return usable


#: float64 entries of V per step of :func:`_constants` (bounds its temporaries; the sums do not depend on it)
CONSTANT_CHUNK = 1 << 22


def _constants(v: np.ndarray, offset_beta: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """K_i = sum over (j, t) of V[i, (j, t)]·beta_(j, t)·chosen[i, j, t] in float64, a few output rows at a time:
    each row's sum is the same reduction over its own (d_in, n) entries whatever the number of rows beside it, so
    the result equals ``(v.astype(np.float64) * offset_beta * chosen).sum((1, 2))`` without its full-size
    float64 temporaries (three of d_out·d_in·n entries)."""
    d_out = v.shape[0]
    rows = max(1, CONSTANT_CHUNK // max(1, offset_beta.size))
    out = np.empty(d_out, dtype=np.float64)
    for start in range(0, d_out, rows):
        part = slice(start, start + rows)
        out[part] = (v[part].astype(np.float64) * offset_beta * chosen[part]).sum((1, 2))
    return out


def solve_offset_blocks(
    layout: PairLayout,
    source: RandomSource,
    weight: np.ndarray,
    bias: np.ndarray | None,
    solver: Solver,
    lo: np.ndarray,
    hi: np.ndarray,
    progress: RoundProgress | None = None,
    bias_solver: Solver | None = None,
) -> PairSolution:
    """Choose the masks of an L pair for the dense-view target ``weight`` (d_out, d_in) on box [lo, hi].

    ``bias_solver`` solves the bias block's problems (``bias_units`` coefficients each) when ``solver``
    cannot take that many (the exact engines stop at 40); default ``solver``.
    """
    d_out, d_in, n, nb = layout.d_out, layout.d_in, layout.n, layout.bias_units
    split = d_in * n  # hidden units of the input blocks; the bias block follows
    blocks = OffsetBlocks.draw(layout, source, lo, hi)
    v, v_all, offset = blocks.v, blocks.v_all, blocks.offset
    beta, beta_bias = blocks.beta, blocks.beta_bias

    def weight_problems(units: np.ndarray, draw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coeffs, use, targets = blocks.weight_problems(units, weight)
        return coeffs[:, None], use[:, None], targets[:, None]

    total = d_out * d_in + d_out  # weight problems, then one bias problem per output: one fraction over both

    def phase(offset: int) -> RoundProgress | None:
        if progress is None:
            return None
        return lambda round_, done, _: progress(round_, offset + done, total)

    w = solve_with_resampling(solver, d_out * d_in, weight_problems, 0, 0.0, phase(0))
    chosen = w.masks[:, 0].reshape(d_out, d_in, n)
    constants = _constants(v, np.where(offset, beta, 0.0), chosen)  # K_i

    target_bias = -constants if bias is None else bias - constants
    coeffs_bias = v_all[:, split:].astype(np.float64) * beta_bias
    usable_bias = blocks.bias_usable()

    def bias_problems(units: np.ndarray, draw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return coeffs_bias[units][:, None], usable_bias[units][:, None], target_bias[units][:, None]

    b = solve_with_resampling(bias_solver or solver, d_out, bias_problems, 0, 0.0, phase(d_out * d_in))
    bias_chosen = b.masks[:, 0]  # (d_out, nb)
    effective_bias = constants + (coeffs_bias * bias_chosen).sum(1)

    v_mask = np.concatenate([chosen.reshape(d_out, split), bias_chosen], axis=1)
    used = np.asarray(v_mask.any(0), dtype=bool)  # (hidden,): units that feed some output
    u_mask = used[:split].reshape(d_in, n).copy()  # held form: U's diagonal (layout.mask_shapes)
    beta_mask = np.concatenate([(used[:split].reshape(d_in, n) & offset).reshape(-1), used[split:]])
    bias_errors = np.abs(effective_bias - (0.0 if bias is None else bias))
    stats = _stats(w, b)
    stats["examined_values"] = layout.source_params(blocks.er)
    stats["offsets_kept"] = int(beta_mask[:split].sum())
    stats["constant_abs_max"] = float(np.abs(constants).max())
    stats["bias_units"] = nb
    return PairSolution(
        masks={"U": u_mask, "beta": beta_mask, "V": v_mask},
        draws=np.zeros(layout.draw_shape, dtype=np.uint8),
        weight_errors=w.errors.reshape(d_out, d_in),
        bias_errors=bias_errors,
        usable=w.usable[:, 0].reshape(d_out, d_in),
        stats=stats,
    )
