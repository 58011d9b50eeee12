"""Construction: the pruned pair of random layers that replaces each target layer.

The pipeline's third stage (problems -> solvers -> construction -> ticket -> verification). :func:`construct`
takes a target in normal form and a :class:`~ticketsolver.config.BuildConfig` and returns a
:class:`BuildResult` (the layouts, masks and draws of every pair, and the build's record); the ticket stage
stores it (:func:`ticketsolver.build_ticket` does both). The three constructions are O (``output_blocks``),
I (``input_blocks``) and L (``offset_blocks``); docs/design.md section 2 derives them.

The names below are the stage's public surface: the ticket, verification, jobs and the service import them
from here, never from the modules inside. The build's limits and defaults (``MAX_N``, tolerances) belong to
:mod:`ticketsolver.config` and are re-exported here for convenience.
"""

from __future__ import annotations

from ticketsolver.config import MAX_N, MAX_RESAMPLE
from ticketsolver.construction.box import DEFAULT_INPUT_BOX, IntervalWalk, pair_input_boxes
from ticketsolver.construction.builder import (
    SCALE_MARGINS,
    BuildResult,
    LayerProgress,
    choose_scales,
    construct,
    solver_options,
)
from ticketsolver.construction.layout import ConvGeometry, PairLayout
from ticketsolver.construction.offset_blocks import OffsetBlocks
from ticketsolver.construction.offset_pair import OffsetPair
from ticketsolver.construction.pair import CONSTRUCTIONS, EffectiveLayer, PrunedPair
from ticketsolver.construction.solution import PairSolution
from ticketsolver.construction.steps import describe_step, module_from_step

__all__ = [
    "CONSTRUCTIONS",
    "DEFAULT_INPUT_BOX",
    "MAX_N",
    "MAX_RESAMPLE",
    "SCALE_MARGINS",
    "BuildResult",
    "ConvGeometry",
    "EffectiveLayer",
    "IntervalWalk",
    "LayerProgress",
    "OffsetBlocks",
    "OffsetPair",
    "PairLayout",
    "PairSolution",
    "PrunedPair",
    "choose_scales",
    "construct",
    "describe_step",
    "module_from_step",
    "pair_input_boxes",
    "solver_options",
]
