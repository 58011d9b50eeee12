"""Construction of a graph target: every unit's pairs, solved one unit at a time.

Same constructions as a chain (docs/design.md section 2), per unit instead of per layer:

* the construction of each pair comes from the config as for a chain: L for every pair of a pure build (on the
  unit's input box: sound interval bounds through the graph where they are tight, else observed on calibration
  inputs, :mod:`ticketsolver.graph.boxes`), and for a re-randomised build O where the sign
  analysis proves the unit's input >= 0 (:mod:`ticketsolver.graph.signs`) and I elsewhere;
* a grouped convolution is one pair per group (its slice of input and output channels), an embedding one pair on
  the one-hot input, a trained tensor one pair on a constant 1 (d_in = 1);
* pairs are numbered in unit order; their random streams are keyed by that number like a chain's layers.

Units are solved one after the other and each finished pair can be stored for resuming (``resume_dir``), like a
chain's layers. The result is a :class:`~ticketsolver.construction.builder.BuildResult` whose record carries the
graph (``record["graph"]``) with each unit's pairs and construction, and each unit's box origin.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ticketsolver.config import BuildConfig
from ticketsolver.construction.box import DEFAULT_INPUT_BOX
from ticketsolver.construction.builder import (
    MAX_SOURCE_PARAMS,
    SCALE_MARGINS,
    BuildResult,
    LayerProgress,
    _check_source_size,
    _layout_for,
    _make_solver,
    build_record,
    solve_or_resume,
)
from ticketsolver.construction.layout import PairLayout
from ticketsolver.construction.pair import CONSTRUCTIONS
from ticketsolver.construction.solution import PairSolution
from ticketsolver.errors import ConstructionError
from ticketsolver.graph.boxes import UnitBox, unit_boxes
from ticketsolver.graph.capture import GraphTarget
from ticketsolver.graph.signs import unit_input_signs
from ticketsolver.solvers import Solver
from ticketsolver.source import RandomSource

__all__ = ["construct_graph"]


def _check_materialised(layout: PairLayout, construction: str) -> None:
    """Refuse a pair whose solve would materialise more than MAX_SOURCE_PARAMS random values. A graph's L pair draws
    only U's block diagonal (PairLayout.offset_diagonal), beta and V, never U whole; other pairs draw every tensor."""
    if construction != "offset_blocks" or layout.sparse:
        _check_source_size(layout, construction)
        return
    drawn = layout.held_params()  # U's diagonal, beta and V
    if drawn > MAX_SOURCE_PARAMS:
        raise ConstructionError(
            f"pair {layout.pair}: its solve would draw {drawn:,} random values (limit {MAX_SOURCE_PARAMS:,}); lower n"
        )


def _construction(config: BuildConfig, nonnegative: bool, path: str) -> str:
    if config.construction == "auto":
        if config.pure:
            return "offset_blocks"
        return "output_blocks" if nonnegative else "input_blocks"
    if config.construction == "output_blocks" and not nonnegative:
        raise ConstructionError(f"unit '{path}': output blocks need inputs >= 0, which are not guaranteed")
    return config.construction


def construct_graph(
    target: GraphTarget,
    config: BuildConfig,
    *,
    progress: LayerProgress | None = None,
    solve_with: Solver | None = None,
    resume_dir: str | os.PathLike[str] | None = None,
) -> BuildResult:
    """Build every unit of a graph target from pruned random pairs (see the module docstring).

    ``progress`` is called with (unit, fraction of that unit done, message).

    Raises:
        ConstructionError: an option graphs do not support (depth L+1, a sparse source), a source too large.
        SolverError: the subset-sum backend failed.
    """
    if config.depth != "2L":
        raise ConstructionError("depth L+1 is built for chains of Linear/Conv2d layers only, not for graphs")
    if config.source_density < 1.0:
        raise ConstructionError("Erdős–Rényi sparse sources are built for chains only, not for graphs")
    spec = target.spec
    solver = solve_with if solve_with is not None else _make_solver(config)
    config_record = config.to_dict()
    resume = None if resume_dir is None else Path(resume_dir)
    source = RandomSource(config.seed)
    report = progress or (lambda *_: None)
    start = time.perf_counter()
    rounds = config.resample + 1

    box = config.input_domain
    origin = "declared" if box is not None else None
    if box is None and not spec.tokens:
        box, origin = DEFAULT_INPUT_BOX, "default"
    signs = unit_input_signs(spec, box)
    pair_targets = [target.pair_targets(k) for k in range(len(spec.units))]
    boxes: list[UnitBox] | None = None
    if config.pure and config.construction in ("auto", "offset_blocks"):
        boxes = unit_boxes(target, box, signs, pair_targets, seed=config.seed)

    layouts: list[PairLayout] = []
    solutions: list[PairSolution] = []
    units = []
    unit_records = []
    target_params = 0
    for k, unit in enumerate(spec.units):
        construction = _construction(config, signs[k], unit.path)
        margin = config.scale_margin if config.scale_margin is not None else SCALE_MARGINS[construction]
        pairs = pair_targets[k]
        indices = []
        for g, pt in enumerate(pairs):
            index = len(layouts)
            column_box = boxes[k].columns[g] if boxes is not None and construction == "offset_blocks" else None
            layout = _layout_for(index, pt.weight, pt.bias, pt.conv, construction, config.n, margin, column_box)
            _check_materialised(layout, construction)

            def on_round(round_: int, done: int, total: int, k: int = k, g: int = g, count: int = len(pairs)) -> None:
                within = min((round_ + done / max(total, 1)) / rounds, 1.0)
                report(k, (g + within) / count, f"pair {g + 1}/{count}" if count > 1 else f"round {round_}")

            solution = solve_or_resume(
                layout, source, pt.weight, pt.bias, solver, config, column_box, on_round, resume, {"unit": k}
            )
            layouts.append(layout)
            solutions.append(solution)
            indices.append(index)
        target_params += unit.weights
        units.append(replace(unit, pairs=tuple(indices), construction=CONSTRUCTIONS[construction]))
        unit_records.append(
            {
                "path": unit.path,
                "kind": unit.kind,
                "input_nonnegative": signs[k],
                "construction": CONSTRUCTIONS[construction],
                "box": None if boxes is None or construction != "offset_blocks" else boxes[k].origin,
                "folded": list(unit.folded),
            }
        )
        report(k, 1.0, "done")
    built = replace(spec, units=tuple(units))
    record = build_record(
        config_record,
        solver,
        target,
        target_params,
        origin,
        start,
        solutions,
        graph=built.to_dict(),
        graph_units=unit_records,
    )
    steps: list[dict[str, Any]] = [{"op": "pair", "pair": p} for p in range(len(layouts))]
    return BuildResult(config, tuple(spec.input_shape), box, steps, layouts, solutions, record)
