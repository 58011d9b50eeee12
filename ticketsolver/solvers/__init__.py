"""Solver layer: one interface, many backends, chosen by name.

>>> import numpy as np
>>> from ticketsolver.solvers import get_solver
>>> solver = get_solver("mitm")  # exact meet-in-the-middle; torch on CUDA when present, else numba
>>> coeffs, targets = np.array([[0.5, 0.25, -0.125], [0.3, 0.2, 0.1]]), np.array([0.375, 0.42])
>>> sol = solver.solve(coeffs, targets, progress=lambda done, total: print(f"{done}/{total} solved"))
2/2 solved
>>> sol.masks.tolist(), sol.errors.round(12).tolist(), sol.tolerance
([[True, False, True], [True, False, True]], [0.0, 0.02], 0.0)

Backends: ``mitm`` (exact, n <= 40; the engine for this machine, see ``exact.py``), ``mitm_numba`` /
``mitm_torch`` (the two exact engines by name; torch runs on any device, the CPU included), ``gurobi``
(MIP, falls back to ``cpsat``), ``cpsat`` (OR-Tools, integer scaling), ``cbc`` (PuLP's CBC), ``bruteforce``
(reference), ``auto`` (exact: ``mitm`` where it applies, else the MIP chain; with ``tolerance > 0``: the
ladder of exact engines over growing free subsets, see ``ladder.py``). Optional dependencies are imported by
the backend that needs them.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from ticketsolver.errors import InvalidProblemError
from ticketsolver.solvers.base import Progress, RawSolution, Solutions, Solver, SolveStatus

__all__ = [
    "SOLVERS",
    "Progress",
    "RawSolution",
    "Solutions",
    "SolveStatus",
    "Solver",
    "available_solvers",
    "get_solver",
]

#: name -> "module:Class"; modules are imported on first use so optional dependencies stay optional
SOLVERS: dict[str, str] = {
    "auto": "ticketsolver.solvers.auto:AutoSolver",
    "bruteforce": "ticketsolver.solvers.bruteforce:BruteForceSolver",
    "cbc": "ticketsolver.solvers.cbc:CbcSolver",
    "cpsat": "ticketsolver.solvers.cpsat:CpSatSolver",
    "gurobi": "ticketsolver.solvers.gurobi:GurobiSolver",
    "mitm": "ticketsolver.solvers.exact:make_mitm",
    "mitm_numba": "ticketsolver.solvers.mitm:NumbaMitmSolver",
    "mitm_torch": "ticketsolver.solvers.mitm_torch:TorchMitmSolver",
}


def available_solvers() -> list[str]:
    """Names accepted by :func:`get_solver`."""
    return sorted(SOLVERS)


def get_solver(name: str, **options: Any) -> Solver:
    """Instantiate a backend by name; ``options`` go to its constructor (e.g. ``time_limit=10``).

    Raises:
        InvalidProblemError: an unknown name (the message lists the known ones), an option the backend
            does not take (the message lists those it does), or a bad option value.
        SolverUnavailableError: raised by backends whose dependency is missing, when they are used.

    Example:
        >>> get_solver("mitm_numba", device="cuda")
        Traceback (most recent call last):
        ...
        ticketsolver.errors.InvalidProblemError: solver 'mitm_numba' takes no option 'device'; it takes: threads
    """
    try:
        target = SOLVERS[name]
    except (KeyError, TypeError):
        raise InvalidProblemError(f"unknown solver {name!r}; choose one of {', '.join(available_solvers())}") from None
    module_name, attr = target.split(":")
    factory = getattr(importlib.import_module(module_name), attr)
    parameters = inspect.signature(factory).parameters.values()
    accepted = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(options) - set(accepted))
    if unknown and not any(p.kind == p.VAR_KEYWORD for p in parameters):
        raise InvalidProblemError(
            f"solver {name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"it takes: {', '.join(accepted) or 'nothing'}"
        )
    solver: Solver = factory(**options)
    return solver
