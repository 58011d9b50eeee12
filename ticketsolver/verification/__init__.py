"""Verification: how closely a pruned random network g follows its target f, measured and certified.

The last library stage of the pipeline (problems -> solvers -> construction -> ticket -> verification).
:func:`verify_networks` runs everything of DESIGN.md section 5 and returns a :class:`Report`; the pieces
are usable on their own: output metrics (:func:`compare_outputs`), per-layer checks
(:func:`check_layers`), the worst-case search (:func:`search_worst_case`) and the certified bound
(:func:`certify_bound`, for exact arithmetic and for float forward passes). Without a box or data, inputs
follow the documented default law (:mod:`ticketsolver.verification.inputs`).

>>> # report = verify_networks(f, g, input_shape=(1, 28, 28), input_box=(0.0, 1.0), data=(x, y))
>>> # report.render(); report.to_json("report.json")
"""

from __future__ import annotations

from ticketsolver.verification.certified import CertifiedBound, CertifiedLayerBound, ForwardBound, certify_bound
from ticketsolver.verification.inputs import default_input_box, sample_inputs
from ticketsolver.verification.layers import (
    LayerCheck,
    LayerChecker,
    check_layers,
    describe_module,
    validate_networks,
)
from ticketsolver.verification.metrics import OutputComparison, OutputMetrics, compare_outputs
from ticketsolver.verification.report import Report
from ticketsolver.verification.verify import verify_networks
from ticketsolver.verification.worst_case import WorstCase, random_starts, search_worst_case

__all__ = [
    "CertifiedBound",
    "CertifiedLayerBound",
    "ForwardBound",
    "LayerCheck",
    "LayerChecker",
    "OutputComparison",
    "OutputMetrics",
    "Report",
    "WorstCase",
    "certify_bound",
    "check_layers",
    "compare_outputs",
    "default_input_box",
    "describe_module",
    "random_starts",
    "sample_inputs",
    "search_worst_case",
    "validate_networks",
    "verify_networks",
]
