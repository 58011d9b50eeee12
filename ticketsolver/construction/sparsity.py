"""Erdős–Rényi sparse random sources: the density of each random layer (docs/design.md section 2.8).

Gadhikar, Mukherjee and Burkholz (ICML 2023, "Why random pruning is all we need to start sparse") show that strong
tickets exist inside Erdős–Rényi (ER) sparse random networks: entry e of random layer l exists with probability
p_l, and the ticket's mask lies inside that ER mask. A sparse build (``BuildConfig.source_density`` p < 1) gives
every pair's two random layers (U, and V) a density from p and the shapes of all random layers of the network,
by one of the four layer-wise policies of the paper's code (RelationalML/sparse_to_sparse); the construction then
draws each layer's ER mask from the seed (:meth:`~ticketsolver.source.RandomSource.er_mask`). As in that code, the
masks cover the weights (2-D and 4-D tensors); biases (beta) stay dense. Shapes are the torch layers' weight
shapes, a conv's with its kernel dimensions (``PairLayout.weight_shapes``).

With N_l the entries of layer l, N = sum_l N_l and L layers, every policy keeps sum_l p_l N_l = p N:

- ``uniform``: p_l = p. STR/main.py (``er_sparse_method == 'uniform'``: ``set_er_mask(args.er_sparse_init)``);
  ER_DST/sparselearning/core.py, ``Masking.init`` (``sparse_init == 'ER_init'``).
- ``erk``: p_l = eps * (sum of the shape's dimensions) / N_l (Erdős–Rényi-Kernel, power scale 1), eps fixing the
  total. ER_DST/sparselearning/core.py, ``Masking.init`` (``sparse_init == 'ERK'``): a layer whose p_l would exceed
  1 is made dense and eps is recomputed over the others, largest raw probabilities first, until none exceeds 1.
  (STR/main.py's ``'ERK'`` clamps at 1 without recomputing eps; both agree when nothing is capped.)
- ``balanced``: the same number of nonzeros X = p N / L in every layer, p_l = X / N_l. STR/main.py
  (``er_sparse_method == 'balanced'``) and ER_DST/sparselearning/core.py (``'ER_same_params_per_layer'``), which
  cap p_l at 1 and stop there; here the nonzeros a capped (small) layer cannot hold are shared equally by the
  others (X recomputed over the uncapped layers, as core.py's ERK recomputes eps), so the total stays p N. The
  two agree whenever no layer is capped.
- ``pyramidal``: p_l = r^l for the l-th layer in network order (l = 1..L), r in (0, 1) the root of
  sum_l N_l r^l = p N. ER_DST/sparselearning/core.py, ``get_pyramid_sparsity``, and STR/main.py
  (``'pyramidal'``), which take the root from ``np.roots``; here it is found by bisection (the polynomial
  increases on (0, 1) from -p N to (1 - p) N, so the root is unique). No p_l exceeds 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ticketsolver.config import DENSITY_POLICIES, DensityPolicy
from ticketsolver.errors import ConfigError

__all__ = ["DENSITY_POLICIES", "DensityPolicy", "expected_nonzeros", "layer_densities"]


def layer_densities(density: float, shapes: Sequence[Sequence[int]], policy: str = "uniform") -> list[float]:
    """The density p_l of every random layer (weight shapes in network order) for overall density ``density``.

    Args:
        density: p in (0, 1]; 1 gives every layer density 1 (a dense source) whatever the policy.
        shapes: the weight shape of every random layer, in the order the network runs them.
        policy: one of :data:`DENSITY_POLICIES` (module docstring: formulas and where in the paper's code).

    Returns:
        One density in (0, 1] per layer; sum_l p_l N_l = density * sum_l N_l up to float rounding.

    Raises:
        ConfigError: a density outside (0, 1], an unknown policy, no layers or an empty one.

    Example:
        >>> layer_densities(0.5, [(10, 10), (10, 1000)], "balanced")  # the small layer cannot hold its half
        [1.0, 0.495]
    """
    if isinstance(density, bool) or not 0.0 < float(density) <= 1.0:
        raise ConfigError(f"the source density must be a number in (0, 1], got {density!r}")
    if policy not in DENSITY_POLICIES:
        raise ConfigError(f"unknown density policy {policy!r}; expected one of {', '.join(DENSITY_POLICIES)}")
    sizes = [math.prod(int(d) for d in shape) for shape in shapes]
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"density policies need at least one non-empty layer, got shapes {list(shapes)}")
    p = float(density)
    if p == 1.0 or policy == "uniform":
        return [p] * len(sizes)
    if policy == "erk":
        return _erk(p, sizes, [float(sum(int(d) for d in shape)) / n for shape, n in zip(shapes, sizes, strict=True)])
    if policy == "balanced":
        return _balanced(p, sizes)
    return _pyramidal(p, sizes)


def expected_nonzeros(densities: Sequence[float], shapes: Sequence[Sequence[int]]) -> float:
    """sum_l p_l N_l: the expected number of ER nonzeros of layers of these shapes and densities."""
    return sum(p * math.prod(shape) for p, shape in zip(densities, shapes, strict=True))


def _erk(p: float, sizes: list[int], raw: list[float]) -> list[float]:
    """core.py's ERK loop: eps = rhs / divisor over the layers not yet dense; while eps times the largest raw
    probability exceeds 1, the layers with that raw probability become dense."""
    dense: set[int] = set()
    while True:
        rest = [i for i in range(len(sizes)) if i not in dense]
        rhs = sum(sizes[i] * p for i in rest) - sum(sizes[i] * (1.0 - p) for i in dense)
        divisor = sum(raw[i] * sizes[i] for i in rest)
        epsilon = rhs / divisor
        top = max(raw[i] for i in rest)
        if epsilon * top <= 1.0:
            break
        dense |= {i for i in rest if raw[i] == top}
    return [1.0 if i in dense else epsilon * raw[i] for i in range(len(sizes))]


def _balanced(p: float, sizes: list[int]) -> list[float]:
    """X = p N / L nonzeros per layer, p_l = X / N_l; layers with X >= N_l are dense and X is recomputed over the
    rest (never all of them when p < 1: capped layers hold at most what they are given)."""
    total = sum(sizes)
    dense: set[int] = set()
    while True:
        rest = [i for i in range(len(sizes)) if i not in dense]
        share = (p * total - sum(sizes[i] for i in dense)) / len(rest)
        capped = {i for i in rest if share / sizes[i] >= 1.0}
        if not capped:
            break
        dense |= capped
    return [1.0 if i in dense else share / sizes[i] for i in range(len(sizes))]


def _pyramidal(p: float, sizes: list[int]) -> list[float]:
    """r in (0, 1) with sum_l N_l r^l = p N (bisection to the last bit), then p_l = r^l."""
    goal = p * sum(sizes)

    def excess(r: float) -> float:
        return sum(n * r ** (level + 1) for level, n in enumerate(sizes)) - goal

    lo, hi = 0.0, 1.0
    while True:
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if excess(mid) < 0.0 else (lo, mid)
    r = lo if abs(excess(lo)) <= abs(excess(hi)) else hi
    return [r ** (level + 1) for level in range(len(sizes))]
