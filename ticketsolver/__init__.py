"""ticketsolver: exact strong-lottery-ticket construction.

Pipeline: problems (coefficients from a seeded random source) -> solvers (exact subset sums) ->
construction (the pruned pair of each target layer) -> ticket (artifact, regenerate, export) ->
verification -> jobs/service.

>>> import ticketsolver as ts
>>> # ticket = ts.build_ticket(ts.load_target("lenet5.pt"), n=20, input_domain=(0, 1))
>>> # report = ts.verify(target, ticket, data=(x, y))   # or a ticketsolver.data.Dataset
"""

from __future__ import annotations

from ticketsolver._version import __version__
from ticketsolver.construction.builder import BuildConfig, build_ticket
from ticketsolver.errors import (
    CheckpointError,
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
from ticketsolver.solvers import get_solver
from ticketsolver.ticket import Ticket
from ticketsolver.verification.against import verify

__all__ = [
    "BuildConfig",
    "CheckpointError",
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
    "__version__",
    "build_ticket",
    "get_solver",
    "load_target",
    "verify",
]
