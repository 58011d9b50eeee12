"""ticketsolver: exact strong-lottery-ticket construction.

Pipeline: problems (coefficients from a seeded random source) -> solvers (exact subset sums) ->
construction (the pruned pair of each target layer) -> ticket (artifact, regenerate, export) ->
verification -> jobs/service.

One config object per stage (:class:`BuildConfig`, :class:`VerifyConfig`), handed down the calls:

>>> import torch
>>> from torch import nn
>>> import ticketsolver as ts
>>> _ = torch.manual_seed(0)
>>> target = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))  # or ts.load_target("lenet5.pt")
>>> ticket = ts.build_ticket(target, ts.BuildConfig(n=12, input_domain=(0, 1)), input_shape=(3,))
>>> report = ts.verify(target, ticket, ts.VerifyConfig(n_random=64))  # data=(x, y) or a ticketsolver.data.Dataset
>>> report.input_box["source"]
"ticket's build box, declared at build"
>>> measured, certified = report.sections["random"]["float64"].max_abs_error, report.certified.max_bound
>>> 0 < measured <= certified < 0.05  # sup |f - g| over the box [0, 1]^3, at n = 12
True
"""

from __future__ import annotations

from ticketsolver._version import __version__
from ticketsolver.config import BuildConfig, VerifyConfig
from ticketsolver.errors import (
    CheckpointError,
    ConfigError,
    ConstructionError,
    InvalidProblemError,
    JobError,
    ProblemTooLargeError,
    SolverError,
    SolverUnavailableError,
    TicketFormatError,
    TicketSolverError,
    UnsupportedModuleError,
    VerificationError,
)
from ticketsolver.models import Target, load_target
from ticketsolver.pipeline import build_ticket
from ticketsolver.solvers import get_solver
from ticketsolver.ticket import Ticket
from ticketsolver.verification.against import verify

__all__ = [
    "BuildConfig",
    "CheckpointError",
    "ConfigError",
    "ConstructionError",
    "InvalidProblemError",
    "JobError",
    "ProblemTooLargeError",
    "SolverError",
    "SolverUnavailableError",
    "Target",
    "Ticket",
    "TicketFormatError",
    "TicketSolverError",
    "UnsupportedModuleError",
    "VerificationError",
    "VerifyConfig",
    "__version__",
    "build_ticket",
    "get_solver",
    "load_target",
    "verify",
]
