"""Verification: how closely a pruned random network g follows its target f, measured and certified.

The last library stage of the pipeline (problems -> solvers -> construction -> ticket -> verification).
:func:`verify_networks` runs everything of docs/design.md section 5 and returns a :class:`Report`; the pieces
are usable on their own: output metrics (:func:`compare_outputs`), per-layer checks
(:func:`check_layers`), the worst-case search (:func:`search_worst_case`) and the certified bound
(:func:`certify_bound`, for exact arithmetic and for float forward passes). Without a box or data, inputs
follow the documented default law (:mod:`ticketsolver.verification.inputs`).

A ticket without a target (a learned mask) is measured on its task instead: :func:`evaluate_task` gives
the accuracy and loss of its network on labelled data (a :class:`TaskReport`).

How hard it looks is one :class:`~ticketsolver.config.VerifyConfig`; :func:`ticketsolver.verify` checks a
ticket against its target with it. Here g is an exact O pair made by hand for a layer f (valid for inputs
>= 0: ``relu(W+ x + b+) - relu(W- x + b-) = W x + b``), so there is no error to find:

>>> import torch
>>> from torch import nn
>>> from ticketsolver import VerifyConfig
>>> from ticketsolver.construction import PrunedPair
>>> _ = torch.manual_seed(0)
>>> layer = nn.Linear(3, 2)
>>> w, b = layer.weight.detach(), layer.bias.detach()
>>> first, second = nn.Linear(3, 4), nn.Linear(4, 2, bias=False)
>>> first.weight = nn.Parameter(torch.cat([w.clamp(min=0), (-w).clamp(min=0)]))
>>> first.bias = nn.Parameter(torch.cat([b.clamp(min=0), (-b).clamp(min=0)]))
>>> second.weight = nn.Parameter(torch.cat([torch.eye(2), -torch.eye(2)], dim=1))
>>> f, g = nn.Sequential(layer), nn.Sequential(PrunedPair(first, second, "output_blocks"))
>>> config = VerifyConfig(input_box=(0, 1), n_random=64, worst_case_steps=5)
>>> report = verify_networks(f, g, config, input_shape=(3,))
>>> report.sections["random"]["float64"].max_abs_error < 1e-6, report.certified.max_bound < 1e-6
(True, True)
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
from ticketsolver.verification.task import TaskReport, evaluate_task
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
    "TaskReport",
    "WorstCase",
    "certify_bound",
    "check_layers",
    "compare_outputs",
    "default_input_box",
    "describe_module",
    "evaluate_task",
    "random_starts",
    "sample_inputs",
    "search_worst_case",
    "validate_networks",
    "verify_networks",
]
