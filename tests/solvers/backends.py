"""The MIP backends the solver tests run against, skipped cleanly where their package is missing."""

from __future__ import annotations

import pytest

from ticketsolver.solvers import Solver, get_solver

#: backend -> (module it imports, extra that installs it)
PACKAGES = {
    "gurobi": ("gurobipy", "gurobi"),
    "cpsat": ("ortools.sat.python.cp_model", "ortools"),
    "cbc": ("pulp", "cbc"),
}
BACKENDS = [
    pytest.param("gurobi", marks=pytest.mark.gurobi, id="gurobi"),
    pytest.param("cpsat", marks=pytest.mark.ortools, id="cpsat"),
    pytest.param("cbc", marks=pytest.mark.cbc, id="cbc"),
]


def require(name: str) -> None:
    """Skip the test when the backend's package cannot be imported at all."""
    module, extra = PACKAGES[name]
    pytest.importorskip(module, reason=f"{module} is not installed (pip install 'ticketsolver[{extra}]')")


def make_backend(name: str, **options: object) -> Solver:
    require(name)
    if name == "gurobi":
        options.setdefault("fallback", False)  # test Gurobi itself; the fallback has its own tests
    return get_solver(name, **options)
