"""Trained networks that are graphs, not chains: capture, the graph form, and running it (docs/design.md section 7)."""

from ticketsolver.graph.capture import GraphTarget, PairTarget, capture_program
from ticketsolver.graph.ir import GraphSpec, GraphUnit
from ticketsolver.graph.network import GraphNetwork, PairUnit, TargetUnit

__all__ = [
    "GraphNetwork",
    "GraphSpec",
    "GraphTarget",
    "GraphUnit",
    "PairTarget",
    "PairUnit",
    "TargetUnit",
    "capture_program",
]
