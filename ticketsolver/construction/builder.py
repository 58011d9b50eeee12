"""The builder: a target network in, the pruned pair of every layer out (:class:`BuildResult`).

Construction stage of the pipeline (problems -> solvers -> construction -> ticket): :func:`construct` walks the
target's normal form (Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d, Flatten), replaces every
Linear/Conv2d by a pair of random layers, chooses each random tensor's scale from the layer's weights,
solves the subset sums, and returns everything the ticket needs to regenerate the pruned network;
:func:`ticketsolver.pipeline.build_ticket` turns that into a :class:`~ticketsolver.ticket.Ticket`.

Two kinds of build:

- *pure* (the default, ``resample=0``): one i.i.d. random network, every tensor its law at draw 0.
  Every layer uses construction L (offset blocks, all ~n coefficients usable), linear on the box of its
  input, which is propagated from the input box (declared, else :data:`DEFAULT_INPUT_BOX`) through the
  pairs already built (:mod:`ticketsolver.construction.box`). The subset sums are solved to ``tolerance``.
- *re-randomised* (``resample=R > 0``, opt-in): constructions O (input provably >= 0) and I (elsewhere),
  each unit redrawn up to R times while its error exceeds ``tolerance`` (IteRand). Far smaller errors at
  the same n, but the network's random values are then chosen with knowledge of the target; the ticket
  says so (``source_kind`` "rerandomized", ``examined_values``).

Either kind can draw from an Erdős–Rényi sparse source (``source_density`` p < 1, Gadhikar et al. 2023): every
pair's U and V get a density by ``density_policy`` (:mod:`ticketsolver.construction.sparsity`), a coefficient is
usable only where its random entries exist, and the scales are sized for the usable count that leaves.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from ticketsolver.config import PURE_TOLERANCE, BuildConfig
from ticketsolver.construction.box import DEFAULT_INPUT_BOX, IntervalWalk
from ticketsolver.construction.input_blocks import solve_input_blocks
from ticketsolver.construction.layout import ConvGeometry, PairLayout
from ticketsolver.construction.offset_blocks import offset_scales, solve_offset_blocks
from ticketsolver.construction.output_blocks import solve_output_blocks
from ticketsolver.construction.resume import fingerprint, load_pair, save_pair
from ticketsolver.construction.solution import PairSolution
from ticketsolver.construction.sparsity import layer_densities
from ticketsolver.construction.steps import describe_step
from ticketsolver.errors import ConstructionError
from ticketsolver.solvers import Solver, get_solver
from ticketsolver.source import RandomSource

if TYPE_CHECKING:
    from ticketsolver.graph import GraphTarget
    from ticketsolver.models import Target

__all__ = ["SCALE_MARGINS", "BuildResult", "LayerProgress", "choose_scales", "construct", "solver_options"]

log = logging.getLogger("ticketsolver.construction")

#: (pair, layer fraction done in [0, 1], message) — called as solving advances
LayerProgress = Callable[[int, float, str], None]

#: default scale margin per construction: reach of a block's subset sums in units of the layer's max |w|. L's ~0.9·n
#: coefficients of either sign reach far, and a large margin keeps in reach the rare weight whose coefficients lean
#: one way, at little cost in precision from n = 30 on. Max relative error on data, n = 30: LeNet5 margin 4 / 8 / 16 ->
#: 8.8e-6 / 1.7e-6 / 3.2e-6; the signed-input BatchNorm CNN margin 8 / 12 / 16 -> 1.1e-4 / 3.5e-5 / 2.7e-5. The float32
#: rounding of L's cancelled constants grows with the margin (data, float32: 4.0e-4 at 8, 1.1e-3 at 16 on LeNet5).
#: O and I have ~n/2 usable coefficients of one sign, and resampling repairs their tail.
SCALE_MARGINS: dict[str, float] = {"offset_blocks": 12.0, "output_blocks": 1.5, "input_blocks": 1.5}
#: refuse random sources that would not fit in memory
MAX_SOURCE_PARAMS = 400_000_000


@dataclass(frozen=True)
class BuildResult:
    """Everything a construction yields: the pieces of the ticket, in the order the network runs them.

    ``steps`` lists the network's operations: a kept module described by
    :func:`~ticketsolver.construction.steps.describe_step`, or ``{"op": "pair", "pair": k}`` for the k-th
    pruned pair, whose layout and solution are ``layouts[k]`` and ``solutions[k]``.
    """

    config: BuildConfig  # the configuration built with (its None defaults resolved)
    input_shape: tuple[int, ...]  # per-sample input shape of the network
    input_box: tuple[float, float] | None  # the box the pairs were built for (None: none, re-randomised builds)
    steps: list[dict[str, Any]]
    layouts: list[PairLayout]
    solutions: list[PairSolution]
    record: dict[str, Any]  # the manifest's "build" entry: config, solver, target facts, per-pair statistics


def choose_scales(
    weight: np.ndarray, bias: np.ndarray | None, n: int, margin: float, densities: dict[str, float] | None = None
) -> dict[str, float]:
    """Scales of U, V (and beta) so that a block's subset sums reach ``margin`` x the largest |w|.

    With k ~ n/2 usable coefficients c = v·u (u > 0 or |u|), half of them positive, the sum of the
    positive ones is ~ k/8 · a_U a_V. Taking a_U = a_V = a: a^2 = 16·margin·max|w| / n. The bias problems
    use c = v·beta, so a_beta = 16·margin·max|b| / (n·a). Larger scales reach further but space the sums
    more coarsely; resampling repairs the few weights beyond reach. An ER sparse source (``densities`` of U
    and V) leaves n·p_U·p_V candidates per weight and n·p_V per bias: the same formulas with those counts.
    """
    p_u, p_v = (1.0, 1.0) if not densities else (densities.get("U", 1.0), densities.get("V", 1.0))
    n_w: float = n * p_u * p_v if p_u * p_v < 1.0 else n  # dense: the arithmetic of every dense ticket so far
    n_b: float = n * p_v if p_v < 1.0 else n
    w_max = max(float(np.abs(weight).max()), 1e-12)
    a = math.sqrt(16.0 * margin * w_max / n_w)
    scales = {"U": a, "V": a}
    if bias is not None:
        b_max = max(float(np.abs(bias).max()), 1e-12)
        scales["beta"] = 16.0 * margin * b_max / (n_b * a)
    return scales


def _target_arrays(pair: int, module: nn.Linear | nn.Conv2d) -> tuple[np.ndarray, np.ndarray | None]:
    """The target layer's dense-view weight (d_out, d_in) and bias, float64; refuses NaN/inf."""
    weight = module.weight.detach().double().cpu().numpy()
    bias = None if module.bias is None else module.bias.detach().double().cpu().numpy()
    if not np.isfinite(weight).all() or (bias is not None and not np.isfinite(bias).all()):
        raise ConstructionError(f"layer {pair} ({type(module).__name__}) has NaN or inf weights")
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise ConstructionError(f"layer {pair}: grouped convolutions (groups={module.groups}) are not supported")
    return weight.reshape(weight.shape[0], -1), bias


def _layout_for(
    pair: int,
    flat: np.ndarray,
    bias: np.ndarray | None,
    conv: ConvGeometry | None,
    construction: str,
    n: int,
    margin: float,
    box: tuple[np.ndarray, np.ndarray] | None = None,
    densities: dict[str, float] | None = None,
    bias_units: int | None = None,
) -> PairLayout:
    """The pair's layout; ``densities`` of an ER sparse source, ``bias_units`` (L) fixed by a plan."""
    units = 0
    if construction == "offset_blocks":
        assert box is not None
        scales, units = offset_scales(flat, bias, box[0], box[1], n, margin, densities)
        units = units if bias_units is None else bias_units
    else:
        scales = choose_scales(flat, bias, n, margin, densities)
    layout = PairLayout(
        pair=pair,
        construction=construction,  # type: ignore[arg-type]
        kind="conv2d" if conv else "linear",
        d_out=flat.shape[0],
        d_in=flat.shape[1],
        n=n,
        has_bias=bias is not None,
        scales=scales,
        conv=conv,
        bias_units=units,
        densities=dict(densities or {}),
    )
    return layout


def _check_source_size(layout: PairLayout, construction: str) -> None:
    # the dense count: a sparse source's tensors are regenerated whole too (0 outside the ER mask)
    if layout.dense_params() > MAX_SOURCE_PARAMS:
        raise ConstructionError(
            f"layer {layout.pair}: the random source would hold {layout.dense_params():,} parameters "
            f"(limit {MAX_SOURCE_PARAMS:,}); lower n"
            + (
                " or declare a non-negative input domain so construction O applies"
                if construction == "input_blocks"
                else ""
            )
        )


def _choose_construction(config: BuildConfig, nonnegative: bool, index: int) -> str:
    """L for every layer of a pure build; O where the input is provably >= 0 and I elsewhere when
    re-randomising; or the construction the config forces, where it is valid."""
    if config.construction == "auto":
        if config.pure:
            return "offset_blocks"
        return "output_blocks" if nonnegative else "input_blocks"
    if config.construction == "output_blocks" and not nonnegative:
        raise ConstructionError(f"layer {index}: output blocks need inputs >= 0, which are not guaranteed")
    return config.construction


#: a planned pair: the ER densities of its U and V, and (construction L) the bias block's width they were set for
@dataclass(frozen=True)
class _TargetLayer:
    """A target Linear/Conv2d as the builder sees it: its arrays, geometry, construction, margin and input box."""

    weight: np.ndarray  # (d_out, d_in) float64
    bias: np.ndarray | None
    conv: ConvGeometry | None
    construction: str
    margin: float
    column_box: tuple[np.ndarray, np.ndarray] | None  # L only: the box of each column's input


def _target_layer(
    config: BuildConfig, module: nn.Linear | nn.Conv2d, index: int, pair: int, nonnegative: bool, walk: Any
) -> _TargetLayer:
    """The construction, arrays (refusing NaN/inf and unsupported convs before anything else), geometry, scale
    margin and, for L, the input box of target layer ``pair`` (module ``index``)."""
    construction = _choose_construction(config, nonnegative, index)
    weight, bias = _target_arrays(pair, module)
    conv = ConvGeometry.of(module)
    column_box = None
    if construction == "offset_blocks":
        assert walk is not None
        column_box = walk.column_box(conv, weight.shape[1])
    margin = config.scale_margin if config.scale_margin is not None else SCALE_MARGINS[construction]
    return _TargetLayer(weight, bias, conv, construction, margin, column_box)


_PlannedPair = tuple[dict[str, float], int | None]


def _plan_sparse_source(
    target: Target, config: BuildConfig, box: tuple[float, float] | None
) -> list[_PlannedPair] | None:
    """Every pair's ER densities: p for U and V (``uniform``), or the policy's over all random layers' shapes.

    A policy other than uniform needs the shapes of every random layer before the first is built, and an L pair's
    width includes its bias block, whose size depends on the pair's input box and on the densities themselves.
    So the plan walks the target once: boxes through the *target's* layers (g's layers, built later, match them
    up to the construction's error), the layouts at density p, the policy on their shapes, the layouts again at
    those densities, and the policy once more on the shapes they give. The build then uses those bias-block
    widths and densities together, so the densities are the policy's for the network actually built. None for a
    dense source (no plan, nothing changes).
    """
    p, policy = config.source_density, config.density_policy
    if p >= 1.0:
        return None
    pairs = sum(isinstance(m, nn.Linear | nn.Conv2d) for m in target.module)
    if policy == "uniform":
        return [({"U": p, "V": p}, None)] * pairs
    nonnegative = box is not None and box[0] >= 0
    walk = IntervalWalk.from_box(box, tuple(target.input_shape)) if config.pure and box is not None else None
    layers: list[_TargetLayer] = []
    for index, module in enumerate(target.module):
        if not isinstance(module, nn.Linear | nn.Conv2d):
            nonnegative = nonnegative or isinstance(module, nn.ReLU)
            if walk is not None:
                walk.through_module(module)
            continue
        t = _target_layer(config, module, index, len(layers), nonnegative, walk)
        layers.append(t)
        if walk is not None:
            k = len(layers) - 1
            geometry = _layout_for(k, t.weight, t.bias, t.conv, t.construction, config.n, t.margin, t.column_box)
            walk.through_affine(geometry, t.weight, None, t.bias)
        nonnegative = False
    densities = [{"U": p, "V": p} for _ in layers]
    for _ in range(2):
        layouts = [
            _layout_for(k, t.weight, t.bias, t.conv, t.construction, config.n, t.margin, t.column_box, densities[k])
            for k, t in enumerate(layers)
        ]
        shapes = [shape for layout in layouts for shape in layout.weight_shapes().values()]  # U, V of each pair
        flat = layer_densities(p, shapes, policy)
        densities = [{"U": flat[2 * k], "V": flat[2 * k + 1]} for k in range(len(layouts))]
    return [
        (d, layout.bias_units if layout.construction == "offset_blocks" else None)
        for d, layout in zip(densities, layouts, strict=True)
    ]


def _solve_pair(
    layout: PairLayout,
    source: RandomSource,
    weight: np.ndarray,
    bias: np.ndarray | None,
    solver: Solver,
    config: BuildConfig,
    column_box: tuple[np.ndarray, np.ndarray] | None,
    on_round: Callable[[int, int, int], None],
) -> PairSolution:
    assert config.tolerance is not None
    if layout.construction == "offset_blocks":
        assert column_box is not None
        bias_solver = None
        if solver.name in _SMALL_EXACT and layout.bias_units > 40:
            bias_solver = get_solver("auto", tolerance=config.tolerance or PURE_TOLERANCE)
        return solve_offset_blocks(layout, source, weight, bias, solver, *column_box, on_round, bias_solver=bias_solver)
    if layout.construction == "output_blocks":
        solution = solve_output_blocks(
            layout, source, weight, bias, solver, config.resample, config.tolerance, on_round
        )
    else:
        solution = solve_input_blocks(
            layout,
            source,
            weight,
            bias,
            solver,
            config.resample,
            config.tolerance,
            on_round,
            block_draws=config.block_draws or 0,
        )
    return solution


def solve_or_resume(
    layout: PairLayout,
    source: RandomSource,
    weight: np.ndarray,
    bias: np.ndarray | None,
    solver: Solver,
    config: BuildConfig,
    column_box: tuple[np.ndarray, np.ndarray] | None,
    on_round: Callable[[int, int, int], None],
    resume: Path | None,
    stats: dict[str, Any],
) -> PairSolution:
    """Pair ``layout.pair`` solved, or reused from ``resume`` when stored there for this very configuration, layout
    and target arrays (its fingerprint); a new solution records its seconds and ``stats``, and is stored in
    ``resume``."""
    config_record = config.to_dict()
    stamp = fingerprint(config_record, layout, weight, bias) if resume is not None else ""
    solution = load_pair(resume, layout.pair, stamp, layout.mask_shapes()) if resume is not None else None
    if solution is None:
        t0 = time.perf_counter()
        solution = _solve_pair(layout, source, weight, bias, solver, config, column_box, on_round)
        solution.stats["seconds"] = time.perf_counter() - t0
        solution.stats.update(stats)
        if resume is not None:
            save_pair(resume, layout.pair, solution, stamp)
    return solution


def solver_options(config: BuildConfig) -> dict[str, Any]:
    """Constructor options of the configured backend: ``auto`` of a pure build solves to the build's
    tolerance (the ladder of :mod:`ticketsolver.solvers.ladder`); every other backend solves exactly."""
    if config.solver == "auto" and config.pure and config.tolerance:
        return {"tolerance": config.tolerance}
    return {}


def _make_solver(config: BuildConfig) -> Solver:
    return get_solver(config.solver, **solver_options(config))


#: exact backends limited to 40 usable coefficients: L's bias block (hundreds of units) goes to the ladder
_SMALL_EXACT = ("mitm", "mitm_numba", "mitm_torch", "bruteforce")


def construct(
    target: Target,
    config: BuildConfig,
    *,
    progress: LayerProgress | None = None,
    solve_with: Solver | None = None,
    resume_dir: str | os.PathLike[str] | None = None,
) -> BuildResult:
    """Replace every Linear/Conv2d of the target by a pruned pair of random layers.

    Args:
        target: the trained network in normal form.
        config: how to build (see :class:`~ticketsolver.config.BuildConfig`).
        progress: called with (pair, fraction of that layer done, message) as the solver reports solved problems; an
            exception it raises aborts the build (how a service cancels one).
        solve_with: the solver instance to use instead of ``get_solver(config.solver)`` (e.g. one that spreads
            chunks over a cluster); the record still names ``config.solver``. Exact solvers give identical
            results whatever executes them.
        resume_dir: store each finished layer there, and reuse the layers already stored for this very
            target and configuration (an interrupted build resumes where it stopped).

    Raises:
        ConstructionError: unsupported or non-finite layers, a source too large, no layer to approximate.
        SolverError: the subset-sum backend failed.
    """
    if config.depth == "L+1":
        from ticketsolver.construction.shallow import construct_shallow

        return construct_shallow(target, config, progress=progress, solve_with=solve_with, resume_dir=resume_dir)
    solver = solve_with if solve_with is not None else _make_solver(config)
    config_record = config.to_dict()
    resume = None if resume_dir is None else Path(resume_dir)
    source = RandomSource(config.seed)
    report = progress or (lambda *_: None)
    start = time.perf_counter()

    rounds = config.resample + 1
    box = config.input_domain
    origin = "declared" if box is not None else None
    if box is None and config.pure:
        box, origin = DEFAULT_INPUT_BOX, "default"
    nonnegative = box is not None and box[0] >= 0
    walk = IntervalWalk.from_box(box, tuple(target.input_shape)) if config.pure and box is not None else None
    plan = _plan_sparse_source(target, config, box)
    steps: list[dict[str, Any]] = []
    layouts: list[PairLayout] = []
    solutions: list[PairSolution] = []
    target_params = 0
    for index, module in enumerate(target.module):
        if not isinstance(module, nn.Linear | nn.Conv2d):
            steps.append(describe_step(module))
            nonnegative = nonnegative or isinstance(module, nn.ReLU)
            if walk is not None:
                walk.through_module(module)
            continue
        pair = len(layouts)
        t = _target_layer(config, module, index, pair, nonnegative, walk)
        weight, bias, construction, column_box = t.weight, t.bias, t.construction, t.column_box
        densities, bias_units = plan[pair] if plan is not None else ({}, None)
        layout = _layout_for(
            pair, weight, bias, t.conv, construction, config.n, t.margin, column_box, densities, bias_units
        )
        _check_source_size(layout, construction)
        target_params += weight.size + (0 if bias is None else bias.size)

        def on_round(round_: int, done: int, total: int, pair: int = pair) -> None:
            report(pair, min((round_ + done / max(total, 1)) / rounds, 1.0), f"round {round_}")

        solution = solve_or_resume(
            layout, source, weight, bias, solver, config, column_box, on_round, resume, {"module_index": index}
        )
        if walk is not None:
            # the box of the next layer holds for g: propagate through the pair just built (exactly linear on
            # its own box), not through the target layer
            walk.through_pair(layout, layout.to_module(layout.source_tensors(source), solution.masks))
        report(pair, 1.0, "done")
        steps.append({"op": "pair", "pair": pair})
        layouts.append(layout)
        solutions.append(solution)
        nonnegative = False
    if not layouts:
        raise ConstructionError("the target has no Linear or Conv2d layer to approximate")
    if origin is not None:
        log.info("input box %s (%s)", list(box or ()), origin)
    record = build_record(config_record, solver, target, target_params, origin, start, solutions)
    return BuildResult(config, tuple(target.input_shape), box, steps, layouts, solutions, record)


def build_record(
    config_record: dict[str, Any],
    solver: Solver,
    target: Target | GraphTarget,
    target_params: int,
    origin: str | None,
    start: float,
    solutions: list[PairSolution],
    **extra: Any,
) -> dict[str, Any]:
    """The manifest's ``build`` entry of a construction: its config, solver, target facts, input-box origin, seconds
    since ``start`` (``time.perf_counter``), one summary per unit (``pairs``), and ``extra`` entries."""
    return {
        "config": config_record,
        "solver": solver.name,
        "arch": target.arch,
        "source": target.source,
        "target_params": target_params,
        "input_domain_origin": origin,
        "seconds": time.perf_counter() - start,
        "pairs": [solution.summary() for solution in solutions],
        **extra,
    }
