"""Solver layer: one interface, many backends, chosen by name.

>>> from ticketsolver.solvers import get_solver
>>> solver = get_solver("mitm")          # exact meet-in-the-middle; torch on CUDA when present
>>> # sol = solver.solve(coeffs, targets, usable=None)

Backends: ``mitm`` (exact, n <= 40), ``mitm_numba`` / ``mitm_torch`` (the two mitm engines by name),
``gurobi`` (MIP, falls back to ``cpsat``), ``cpsat`` (OR-Tools, integer scaling), ``cbc`` (PuLP's CBC),
``bruteforce`` (reference), ``auto`` (exact: ``mitm`` where it applies, else the MIP chain; with
``tolerance > 0``: the ladder of exact engines over growing free subsets, see ``ladder.py``).
Optional dependencies are imported by the backend that needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

from ticketsolver.errors import InvalidProblemError
from ticketsolver.solvers.base import RawSolution, Solutions, Solver, SolveStatus

__all__ = ["SOLVERS", "RawSolution", "Solutions", "SolveStatus", "Solver", "available_solvers", "get_solver"]

#: name -> "module:Class"; modules are imported on first use so optional dependencies stay optional
SOLVERS: dict[str, str] = {
    "auto": "ticketsolver.solvers.auto:AutoSolver",
    "bruteforce": "ticketsolver.solvers.bruteforce:BruteForceSolver",
    "cbc": "ticketsolver.solvers.cbc:CbcSolver",
    "cpsat": "ticketsolver.solvers.cpsat:CpSatSolver",
    "gurobi": "ticketsolver.solvers.gurobi:GurobiSolver",
    "mitm": "ticketsolver.solvers.mitm:make_mitm",
    "mitm_numba": "ticketsolver.solvers.mitm:NumbaMitmSolver",
    "mitm_torch": "ticketsolver.solvers.mitm_torch:TorchMitmSolver",
}


def available_solvers() -> list[str]:
    """Names accepted by :func:`get_solver`."""
    return sorted(SOLVERS)


def get_solver(name: str, **options: Any) -> Solver:
    """Instantiate a backend by name; ``options`` go to its constructor (e.g. ``time_limit=10``).

    Raises:
        InvalidProblemError: unknown name (the message lists the known ones).
        SolverUnavailableError: raised by backends whose dependency is missing, when they are used.
    """
    try:
        target = SOLVERS[name]
    except KeyError:
        raise InvalidProblemError(f"unknown solver {name!r}; choose one of {', '.join(available_solvers())}") from None
    module_name, attr = target.split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    return factory(**options)
