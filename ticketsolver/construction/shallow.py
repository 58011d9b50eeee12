"""Depth L+1: one random layer per target layer, plus a first layer of input copies (docs/design.md section 2.9).

Burkholz (NeurIPS 2022, "Most activation functions can win the lottery without excessive depth"; ICML 2022 for
convolutional and residual networks) shows a target of depth L is contained in a random network of depth L + 1:
the first random layer makes many randomly scaled copies of each input unit, and each following random layer
computes one target layer *and* the copies the next one needs. The public reference code only emulates it (fresh
coefficients per problem, the last layer copied from the target); this module builds it for real, from one i.i.d.
random network, as a pruned network g that runs.

- **Stage 0** (two random layers, unit 0) is an L pair (:mod:`ticketsolver.construction.offset_blocks`) for a
  *virtual* target layer: the first target layer with every output row repeated ``n`` times, then ``n`` rows of zero
  weights whose bias is a positive constant kappa. Its first layer holds the scaled copies ``u·x_j + beta`` of the
  inputs (linear on the input box); its second computes n independent approximations of each first-layer output
  (each row solves its own subset sums over the same copies) and n constant units.
- **Stage k >= 1** (one random layer, unit k) reads the previous stage's output: n copies of every channel of the
  target's activation, then the constant channels (the target's ReLU, pooling and Flatten act channel-wise in
  between). Output copy (o, s') of target output o computes ``sum_i W[o, i] h_i`` with weight ``W[o, i]`` matched by a
  subset sum over the n entries ``V[(o, s'), (i, s)]``, s = 1..n, that read the copies of input i: every entry
  belongs to exactly one problem, every coefficient is usable (both signs: the layer has no ReLU of its own; the
  target's ReLU follows it and acts on each copy). The bias ``b_o`` (and the next stage's constants) is a subset sum
  over the entries reading the constant channels, times their values. A conv stage reads constants only through
  kernel taps that never touch the zero padding, so every bias is the same at every position. The last stage has
  one copy (the network's output) and no constants.

The random layers are uniform on [-a, a]: stage 0 as construction L; stage k with ``a = 4·margin·max|W|/n`` (the
positive entries of n coefficients sum to ~n·a/4 = margin·max|W|). The constants' value kappa is chosen so the bias
problems reach ``margin`` times the largest |b| (or the next constant) with their ``constants·taps`` coefficients.
Every random tensor is draw 0 of its law: a pure (i.i.d.) source only.

The price of the shallower network is its width: stage k holds ``(n·d_out + c)·(n·d_in + c·P)`` random entries,
about n² times the target layer (2L pairs: about 2·n·d_in times the target's rows for L). ``benchmarks/depth.py``
measures the trade-off.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from ticketsolver.config import PURE_TOLERANCE, BuildConfig
from ticketsolver.construction.box import DEFAULT_INPUT_BOX, IntervalWalk
from ticketsolver.construction.copies import CopyPlan, CopyStage
from ticketsolver.construction.layout import ConvGeometry, PairLayout
from ticketsolver.construction.offset_blocks import solve_offset_blocks
from ticketsolver.construction.output_blocks import _stats
from ticketsolver.construction.resume import fingerprint, load_pair, save_pair
from ticketsolver.construction.rounds import RoundProgress, solve_with_resampling
from ticketsolver.construction.solution import PairSolution
from ticketsolver.construction.steps import describe_step
from ticketsolver.errors import ConstructionError
from ticketsolver.solvers import Solver, get_solver
from ticketsolver.source import RandomSource

if TYPE_CHECKING:
    from ticketsolver.construction.builder import BuildResult, LayerProgress
    from ticketsolver.models import Target
    from ticketsolver.ticket.layer import LayerLayout

__all__ = ["COPY_MARGIN", "construct_shallow"]

#: default reach of a copy stage's subset sums, in units of the layer's max |w| (and of its bias problems). A copy's
#: error reaches the next stage through ~margin·max|W| per input, so the margin that keeps weights in reach also
#: amplifies upstream errors. LeNet5 on digits, max relative output error (float64, 256 test images): n = 24, margin
#: 4 / 8 -> 7.3e-3 / 6.8e-3 (the tail of unreachable weights at 4, amplification at 8); n = 30, margin 4 -> 1.8e-5.
COPY_MARGIN = 4.0
#: modules a depth-L+1 build keeps between stages: each acts channel by channel, so copies stay copies
_KEPT = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten)


@dataclass(frozen=True)
class _Stage:
    """One target layer as the L+1 builder sees it."""

    index: int  # module index in the target
    weight: np.ndarray  # (d_out, d_in) float64, dense view
    bias: np.ndarray | None
    conv: ConvGeometry | None
    channels_in: int  # C
    positions: int  # P
    in_shape: tuple[int, ...]  # the target activation's shape at the layer's input (no batch)
    out_shape: tuple[int, ...]
    relu_after: bool  # a ReLU runs between this stage and the next (the constants pass through it)


def _stages(target: Target) -> list[_Stage]:
    """The target's layers with the shapes of their activations, refusing what L+1 cannot carry copies through."""
    from ticketsolver.construction.builder import _target_arrays

    h = torch.zeros(1, *target.input_shape)
    stages: list[_Stage] = []
    carried: int | None = None  # target channels in the current activation (None before the first layer)
    relu_since = False
    with torch.no_grad():
        for index, module in enumerate(target.module):
            if isinstance(module, nn.Linear | nn.Conv2d):
                weight, bias = _target_arrays(len(stages), module)
                if isinstance(module, nn.Conv2d):
                    channels, positions = module.in_channels, math.prod(module.kernel_size)  # type: ignore[arg-type]
                else:
                    channels = carried if carried is not None else weight.shape[1]
                    positions = weight.shape[1] // channels
                if carried is not None and (channels != carried or channels * positions != weight.shape[1]):
                    raise ConstructionError(
                        f"layer {len(stages)} (module {index}): its {weight.shape[1]} inputs do not split into the "
                        f"{carried} channels the previous layer makes; depth L+1 cannot place its copies"
                    )
                if stages:
                    stages[-1] = replace(stages[-1], relu_after=relu_since)
                out = module(h)
                stages.append(
                    _Stage(
                        index,
                        weight,
                        bias,
                        ConvGeometry.of(module),
                        channels,
                        positions,
                        tuple(h.shape[1:]),
                        tuple(out.shape[1:]),
                        False,
                    )
                )
                carried, relu_since, h = weight.shape[0], False, out
                continue
            if not isinstance(module, _KEPT):
                raise ConstructionError(f"module {index} ({type(module).__name__}) is not supported by depth L+1")
            if isinstance(module, nn.AvgPool2d) and any(np.atleast_1d(module.padding)):
                raise ConstructionError(
                    f"module {index}: AvgPool2d with padding averages zeros into the constant channels that carry "
                    "the biases of depth L+1; use depth 2L"
                )
            relu_since = relu_since or isinstance(module, nn.ReLU)
            h = module(h)
    if not stages:
        raise ConstructionError("the target has no Linear or Conv2d layer to approximate")
    return stages


def _constant_taps(stage: _Stage) -> np.ndarray:
    """Dense-view positions of a stage's kernel that never read the zero padding (all positions of a Linear)."""
    if stage.conv is None:
        return np.arange(stage.positions)
    g = stage.conv
    inside = []
    for axis in range(2):
        size_in, size_out = stage.in_shape[1 + axis], stage.out_shape[1 + axis]
        taps = np.arange(g.kernel_size[axis]) * g.dilation[axis] - g.padding[axis]
        inside.append((taps >= 0) & ((size_out - 1) * g.stride[axis] + taps <= size_in - 1))
    return np.flatnonzero(np.outer(inside[0], inside[1]).reshape(-1))


def _plans(stages: list[_Stage], n: int) -> list[CopyPlan]:
    """Copies and constants of every stage: n copies out of every stage but the last; n constant channels out of
    a stage whose successor has a bias or constants of its own to make."""
    plans: list[CopyPlan] = []
    last = len(stages) - 1
    constants_out = [0] * len(stages)
    for k in range(last - 1, -1, -1):
        needs = stages[k + 1].bias is not None or constants_out[k + 1] > 0
        constants_out[k] = n if needs else 0
    for k, s in enumerate(stages):
        plans.append(
            CopyPlan(
                unit=k,
                kind="conv2d" if s.conv is not None else "linear",
                d_out=s.weight.shape[0],
                d_in=s.weight.shape[1],
                channels_in=s.channels_in,
                positions=s.positions,
                copies_in=0 if k == 0 else n,
                constants_in=0 if k == 0 else constants_out[k - 1],
                copies_out=1 if k == last else n,
                constants_out=constants_out[k],
            )
        )
    return plans


def _copy_scale(weight: np.ndarray, n: int, margin: float) -> float:
    """Bound a of a copy stage's uniform entries: the positive ones of n coefficients sum to ~n·a/4."""
    return 4.0 * margin * max(float(np.abs(weight).max()), 1e-12) / n


def _kappas(stages: list[_Stage], plans: list[CopyPlan], scales: list[float], margin: float) -> list[float]:
    """The value kappa[k] that the constants feeding stage k are built to (kappa[0] unused).

    Stage k's bias problems have ``constants_in·taps`` coefficients v·kappa, whose positive ones sum to
    ~count·a·kappa/4: kappa puts ``margin`` times the largest target (|b| or the next constants' kappa) in reach.
    """
    kappa = [0.0] * (len(stages) + 1)
    for k in range(len(stages) - 1, 0, -1):
        plan = plans[k]
        if plan.constants_in == 0:
            continue
        reach = max(
            0.0 if stages[k].bias is None else float(np.abs(stages[k].bias).max()),  # type: ignore[arg-type]
            kappa[k + 1] if plan.constants_out else 0.0,
            1e-12,
        )
        count = plan.constants_in * _constant_taps(stages[k]).size
        kappa[k] = 4.0 * margin * reach / (count * scales[k])
    return kappa


def _stage_progress(report: LayerProgress, k: int) -> Callable[[int, int, int], None]:
    return lambda _round, done, total: report(k, min(done / max(total, 1), 1.0), "solving")


def _solve_first(
    stage: _Stage,
    plan: CopyPlan,
    kappa_next: float,
    config: BuildConfig,
    source: RandomSource,
    solver: Solver,
    bias_solver: Solver | None,
    box: tuple[float, float],
    before: list[nn.Module],
    input_shape: tuple[int, ...],
    progress: RoundProgress,
) -> tuple[PairLayout, PairSolution]:
    """Stage 0: an L pair for the first layer with its rows repeated ``copies_out`` times and constant rows."""
    from ticketsolver.construction.builder import SCALE_MARGINS, _layout_for

    walk = IntervalWalk.from_box(box, input_shape)
    for module in before:
        walk.through_module(module)
    lo, hi = walk.column_box(stage.conv, stage.weight.shape[1])
    weight = np.concatenate(
        [np.repeat(stage.weight, plan.copies_out, axis=0), np.zeros((plan.constants_out, stage.weight.shape[1]))]
    )
    bias_rows = np.zeros(stage.weight.shape[0]) if stage.bias is None else stage.bias
    bias = np.concatenate([np.repeat(bias_rows, plan.copies_out), np.full(plan.constants_out, kappa_next)])
    target_bias = bias if stage.bias is not None or plan.constants_out > 0 else None
    margin = config.scale_margin if config.scale_margin is not None else SCALE_MARGINS["offset_blocks"]
    layout = _layout_for(0, weight, target_bias, stage.conv, "offset_blocks", config.n, margin, (lo, hi))
    return layout, solve_offset_blocks(
        layout, source, weight, target_bias, solver, lo, hi, progress, bias_solver=bias_solver
    )


def _solve_copy_stage(
    stage: _Stage,
    plan: CopyPlan,
    layout: LayerLayout,
    constants: np.ndarray,
    kappa_out: float,
    source: RandomSource,
    solver: Solver,
    bias_solver: Solver,
    progress: RoundProgress,
) -> PairSolution:
    """Stage k >= 1: the masks of one random layer that reads copies and makes copies (see the module docstring)."""
    n, rows, copies_rows = plan.copies_in, plan.rows, plan.d_out * plan.copies_out
    c, p = plan.channels_in, plan.positions
    v = layout.tensor(source, "weight").astype(np.float64).reshape(rows, plan.channels, p)
    v_copies = v[:copies_rows, : c * n].reshape(copies_rows, c, n, p)
    weight = stage.weight.reshape(plan.d_out, c, p)
    per_row = c * p
    total = copies_rows * per_row + rows

    def weight_problems(units: np.ndarray, draw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        row, rest = np.divmod(units, per_row)
        i, q = np.divmod(rest, p)
        coeffs = v_copies[row, i, :, q]
        targets = weight[row // plan.copies_out, i, q]
        return coeffs[:, None], np.ones(coeffs.shape, dtype=bool)[:, None], targets[:, None]

    w = solve_with_resampling(
        solver, copies_rows * per_row, weight_problems, 0, 0.0, lambda r, d, _t: progress(r, d, total)
    )
    mask = np.zeros((rows, plan.channels, p), dtype=bool)
    chosen = w.masks[:, 0].reshape(copies_rows, c, p, n).transpose(0, 1, 3, 2)
    mask[:copies_rows, : c * n] = chosen.reshape(copies_rows, c * n, p)

    # the bias of every copy row and the constants of the next stage: subset sums over the constant channels
    taps = _constant_taps(stage)
    targets_rows: list[float] = []
    bias_rows: list[int] = []
    if stage.bias is not None:
        bias_rows += list(range(copies_rows))
        targets_rows += list(np.repeat(stage.bias, plan.copies_out))
    bias_rows += list(range(copies_rows, rows))
    targets_rows += [kappa_out] * plan.constants_out
    bias_errors = None
    b = None
    constants_out = np.zeros(0)
    if bias_rows:
        row_index = np.asarray(bias_rows)
        const_v = v[row_index, c * n :][:, :, taps]  # (rows_b, constants_in, taps)
        coeffs_all = (const_v * constants[None, :, None]).reshape(row_index.size, -1)
        target_all = np.asarray(targets_rows, dtype=np.float64)

        def bias_problems(units: np.ndarray, draw: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            coeffs = coeffs_all[units]
            return coeffs[:, None], np.ones(coeffs.shape, dtype=bool)[:, None], target_all[units][:, None]

        offset = copies_rows * per_row
        b = solve_with_resampling(
            bias_solver, row_index.size, bias_problems, 0, 0.0, lambda r, d, _t: progress(r, offset + d, total)
        )
        picked = b.masks[:, 0].reshape(row_index.size, plan.constants_in, taps.size)
        block = mask[row_index, c * n :]
        block[:, :, taps] = picked
        mask[row_index, c * n :] = block
        values = (coeffs_all * b.masks[:, 0]).sum(1)
        errors = np.abs(values - target_all)
        if stage.bias is not None:
            bias_errors = errors[:copies_rows]
        constants_out = values[len(bias_rows) - plan.constants_out :]
    stats = _stats(w, b)
    stats.update(
        examined_values=layout.source_params(),
        copies_in=plan.copies_in,
        copies_out=plan.copies_out,
        constants_in=plan.constants_in,
        constants_out=plan.constants_out,
        constant_values=[float(x) for x in constants_out],
    )
    return PairSolution(
        masks={"weight": mask.reshape(rows, plan.channels * p)},
        draws=np.zeros(layout.draw_shape, dtype=np.uint8),
        weight_errors=w.errors.reshape(copies_rows, plan.d_in),
        bias_errors=bias_errors,
        usable=np.full((copies_rows, plan.d_in), n),
        stats=stats,
    )


def _through(constants: np.ndarray, relu: bool, index: int) -> np.ndarray:
    """The constant channels after the target's modules up to the next stage (ReLU: they must stay positive)."""
    if relu and constants.size and float(constants.min()) <= 0:
        raise ConstructionError(
            f"stage {index}: a constant unit came out <= 0 ({float(constants.min()):.3g}), so the ReLU after it would "
            "drop the next layer's bias; raise n"
        )
    return constants


def construct_shallow(
    target: Target,
    config: BuildConfig,
    *,
    progress: LayerProgress | None = None,
    solve_with: Solver | None = None,
    resume_dir: str | os.PathLike[str] | None = None,
) -> BuildResult:
    """Build the depth-L+1 ticket of ``target`` (``config.depth == "L+1"``); see the module docstring.

    Same contract as :func:`ticketsolver.construction.construct` (which calls this): units are stage 0's L pair
    and then one :class:`~ticketsolver.ticket.layer.LayerLayout` per later target layer; the record holds every
    stage's :class:`CopyPlan` under ``copies``.
    """
    from ticketsolver.construction.builder import BuildResult, _make_solver, build_record
    from ticketsolver.ticket.layer import LayerLayout, Stream

    if config.depth != "L+1":
        raise ConstructionError(f"construct_shallow builds depth L+1, the config asks for {config.depth}")
    solver = solve_with if solve_with is not None else _make_solver(config)
    bias_solver = get_solver("auto", tolerance=config.tolerance or PURE_TOLERANCE)
    report = progress or (lambda *_: None)
    resume = None if resume_dir is None else Path(resume_dir)
    config_record = config.to_dict()
    source = RandomSource(config.seed)
    start = time.perf_counter()
    box, origin = (
        (config.input_domain, "declared") if config.input_domain is not None else (DEFAULT_INPUT_BOX, "default")
    )

    stages = _stages(target)
    plans = _plans(stages, config.n)
    margin = config.scale_margin if config.scale_margin is not None else COPY_MARGIN
    scales = [0.0] + [_copy_scale(s.weight, config.n, margin) for s in stages[1:]]
    kappa = _kappas(stages, plans, scales, margin)

    steps: list[dict[str, Any]] = []
    layouts: list[PairLayout | LayerLayout] = []
    solutions: list[PairSolution] = []
    before: list[nn.Module] = []
    constants = np.zeros(0)
    unit_of_module = {s.index: k for k, s in enumerate(stages)}
    for index, module in enumerate(target.module):
        k = unit_of_module.get(index)
        if k is None:
            steps.append(describe_step(module))
            if not layouts:
                before.append(module)
            continue
        stage, plan = stages[k], plans[k]
        t0 = time.perf_counter()
        on_round = _stage_progress(report, k)
        if k == 0:
            pair_layout, solution = _solve_first(
                stage, plan, kappa[1], config, source, solver, bias_solver, box, before, target.input_shape, on_round
            )
            unit: PairLayout | LayerLayout = pair_layout
            first = CopyStage(pair_layout.to_module(pair_layout.source_tensors(source), solution.masks), plan)
            constants = first.constants_out().numpy()
            solution.stats.update(
                copies_in=0, copies_out=plan.copies_out, constants_in=0, constants_out=plan.constants_out
            )
            solution.stats["constant_values"] = [float(x) for x in constants]
            steps.append({"op": "pair", "pair": 0})
        else:
            g = stage.conv
            conv = None if g is None else replace(g, in_channels=plan.channels)
            unit = LayerLayout(
                unit=k,
                kind=plan.kind,
                d_out=plan.rows,
                d_in=plan.channels * plan.positions,
                weight=Stream(k, "W", "symmetric", scales[k]),
                conv=conv,
            )
            stamp = ""
            solution_or_none = None
            if resume is not None:
                bias_part = np.zeros(0) if stage.bias is None else stage.bias
                stamp = fingerprint(config_record, unit, stage.weight, np.concatenate([bias_part, constants]))
                solution_or_none = load_pair(resume, k, stamp)
            if solution_or_none is None:
                solution_or_none = _solve_copy_stage(
                    stage, plan, unit, constants, kappa[k + 1], source, solver, bias_solver, on_round
                )
                if resume is not None:
                    save_pair(resume, k, solution_or_none, stamp)
            solution = solution_or_none
            constants = np.asarray(solution.stats.get("constant_values", []), dtype=np.float64)
            steps.append({"op": "layer", "unit": k})
        constants = _through(constants, stage.relu_after, k)
        solution.stats["seconds"] = time.perf_counter() - t0
        solution.stats["module_index"] = index
        report(k, 1.0, "done")
        layouts.append(unit)
        solutions.append(solution)
    target_params = sum(s.weight.size + (0 if s.bias is None else s.bias.size) for s in stages)
    copies = [plan.to_dict() for plan in plans]
    record = build_record(config_record, solver, target, target_params, origin, start, solutions, copies=copies)
    return BuildResult(config, tuple(target.input_shape), box, steps, layouts, solutions, record)  # type: ignore[arg-type]
