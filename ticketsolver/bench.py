"""Side-by-side solver benchmark: the same seeded problems for every backend, then the paper workloads.

Families (as the issue asks): coefficients uniform on [-1, 1], and products v·u with v ~ U[-1, 1],
u ~ U[0, 1] (the coefficients a construction produces); targets drawn like trained weights (normal,
sd 0.1). The exact engine is timed on whole batches (seconds per problem = wall time / problems); a MIP
backend solves one problem per call, so its median per-problem time is reported. A backend's answer is
"at the optimum" when its error is within 1e-12 of the exact engine's on the same problem.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ticketsolver.errors import InvalidProblemError
from ticketsolver.solvers import get_solver

__all__ = ["make_problems", "run_solver_benchmark"]

#: the two workloads of the papers: (name, problems, n)
PAPER_WORKLOADS = [
    ("Pensia et al. 2020: 397,000 weights", 397_000, 21),
    ("da Cunha et al. 2022: LeNet5 conv weights", 2_572, 30),
]


def make_problems(family: str, batch: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded problems of one family; targets like trained weights."""
    rng = np.random.default_rng([seed, n, batch, 0 if family == "uniform" else 1])
    if family == "uniform":
        coeffs = rng.uniform(-1, 1, (batch, n))
    elif family == "product":
        coeffs = rng.uniform(-1, 1, (batch, n)) * rng.uniform(0, 1, (batch, n))
    else:
        raise InvalidProblemError(f"unknown family {family!r}; choose uniform or product")
    targets = np.clip(rng.normal(0, 0.1, batch), -0.5, 0.5)
    return coeffs, targets


@dataclass
class Row:
    family: str
    n: int
    backend: str
    problems: int
    median_s: float
    per_s: float
    optimal_share: float
    max_error: float
    note: str = ""


def _time_mip(
    name: str, coeffs: np.ndarray, targets: np.ndarray, time_limit: float
) -> tuple[list[float], np.ndarray, str]:
    options: dict[str, Any] = {"time_limit": time_limit}
    if name == "gurobi":
        options["fallback"] = False  # time Gurobi itself
    solver = get_solver(name, **options)
    # the backend reports each problem as it finishes: the gaps between reports are the per-problem times
    finished = [time.perf_counter()]
    sol = solver.solve(coeffs, targets, progress=lambda done, total: finished.append(time.perf_counter()))
    seconds = np.diff(finished[: len(targets) + 1]).tolist()
    limited = int(np.count_nonzero((sol.status == "time_limit") | (sol.status == "failed")))
    return seconds, sol.errors, f"{limited} hit the {time_limit:g} s limit" if limited else ""


def run_solver_benchmark(
    backends: list[str],
    *,
    quick: bool = False,
    sizes: tuple[int, ...] = (16, 21, 24, 30),
    mip_problems: int = 3,
    mip_time_limit: float = 30.0,
    exact_problems: int = 20_000,
    seed: int = 0,
    console: Any = None,
    paper: bool = True,
) -> dict[str, Any]:
    """Run the comparison and the paper workloads; print tables; return the figures."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=170)
    if quick:
        sizes, mip_problems, exact_problems, mip_time_limit = (16,), 2, 2_000, 10.0
    exact = get_solver("mitm")
    exact.solve(*make_problems("uniform", 64, 12, seed))  # compile outside the timings
    rows: list[Row] = []
    for family in ("uniform", "product"):
        for n in sizes:
            coeffs, targets = make_problems(family, exact_problems, n, seed)
            t0 = time.perf_counter()
            ref = exact.solve(coeffs, targets)
            dt = (time.perf_counter() - t0) / len(targets)
            rows.append(Row(family, n, "mitm", len(targets), dt, 1 / dt, 1.0, ref.max_error, "exact by construction"))
            for name in backends:
                if name == "mitm":
                    continue
                try:
                    secs, errors, note = _time_mip(name, coeffs[:mip_problems], targets[:mip_problems], mip_time_limit)
                except Exception as exc:  # a backend that cannot run is reported, not fatal
                    rows.append(
                        Row(family, n, name, 0, float("nan"), float("nan"), float("nan"), float("nan"), str(exc)[:60])
                    )
                    continue
                at_opt = float(np.mean(errors <= ref.errors[:mip_problems] + 1e-12))
                med = float(np.median(secs))
                rows.append(Row(family, n, name, len(secs), med, 1 / med, at_opt, float(errors.max()), note))
            console.print(f"[dim]done: {family}, n={n}[/dim]")
    table = Table(title="subset-sum backends on the same seeded problems (1 thread per MIP; mitm on all cores)")
    for col in (
        "family",
        "n",
        "backend",
        "problems",
        "median s/problem",
        "problems/s",
        "x faster than gurobi",
        "at optimum",
        "max error",
        "note",
    ):
        table.add_column(col, justify="right")
    gurobi = {(r.family, r.n): r.median_s for r in rows if r.backend == "gurobi" and r.problems}
    for r in rows:
        ratio = gurobi.get((r.family, r.n))
        table.add_row(
            r.family,
            str(r.n),
            r.backend,
            str(r.problems),
            f"{r.median_s:.3g}",
            _rate(r.per_s),
            f"{ratio / r.median_s:,.0f}" if ratio and r.median_s == r.median_s else "-",
            f"{r.optimal_share:.0%}" if r.optimal_share == r.optimal_share else "-",
            f"{r.max_error:.2e}" if r.max_error == r.max_error else "-",
            r.note,
        )
    console.print(table)
    result: dict[str, Any] = {"rows": [r.__dict__ for r in rows]}
    if paper and not quick:
        result["paper"] = run_paper_workloads(console, seed)
    return result


def _rate(value: float) -> str:
    return "-" if value != value else (f"{value:,.0f}" if value >= 100 else f"{value:.3g}")


def run_paper_workloads(console: Any, seed: int = 0) -> list[dict[str, Any]]:
    """Both paper workloads end to end with the exact engine on all cores; a sample cross-checked."""
    from rich.table import Table

    exact = get_solver("mitm")
    check = get_solver("mitm_torch", device="cpu")
    out: list[dict[str, Any]] = []
    for name, batch, n in PAPER_WORKLOADS:
        coeffs, targets = make_problems("product", batch, n, seed)
        t0 = time.perf_counter()
        sol = exact.solve(coeffs, targets)
        seconds = time.perf_counter() - t0
        # an independent exact algorithm (sort + searchsorted) on a sample
        rng = np.random.default_rng(seed)
        sample = rng.choice(batch, size=min(batch, 500), replace=False)
        other = check.solve(coeffs[sample], targets[sample])
        agree = bool(np.array_equal(other.errors, sol.errors[sample]))
        out.append(
            {
                "workload": name,
                "problems": batch,
                "n": n,
                "seconds": seconds,
                "per_s": batch / seconds,
                "max_error": sol.max_error,
                "mean_error": float(sol.errors.mean()),
                "sample_checked": int(sample.size),
                "sample_agrees": agree,
                "engine": sol.info.get("engine", exact.name),
            }
        )
    table = Table(title=f"paper workloads, exact engine ({out[0]['engine']})")
    for col in ("workload", "problems", "n", "seconds", "problems/s", "max error", "mean error", "cross-check"):
        table.add_column(col, justify="right")
    for r in out:
        table.add_row(
            r["workload"],
            f"{r['problems']:,}",
            str(r["n"]),
            f"{r['seconds']:.2f}",
            f"{r['per_s']:,.0f}",
            f"{r['max_error']:.2e}",
            f"{r['mean_error']:.2e}",
            f"{r['sample_checked']} vs sort + searchsorted (torch, cpu): {'equal' if r['sample_agrees'] else 'DIFFER'}",
        )
    console.print(table)
    return out
