"""Ladder benchmark: exact mitm against ``auto`` with a tolerance, on the coefficients constructions produce.

python benchmarks/ladder.py                   # 2,000 problems per k; exact mitm on 200 at k = 40
python benchmarks/ladder.py --problems 500 --exact-k40 50

Problems: products v*u with v, u ~ U[-a, a], a^2 = 8*1.5*0.3/k (as a construction scales them), targets
like trained weights (normal, sd 0.1, |w| <= 0.3). Exact mitm at k = 40 costs ~45 ms a problem, so it runs
on the first ``--exact-k40`` problems only; its rate is per problem all the same. "error > tol" counts answers
whose error exceeds the tolerance: for the exact engine, problems whose optimum itself does (one figure per
tolerance, in the order given); "exits m:count" counts the problems leaving the ladder at each stage;
"worse than needed" counts ladder answers above both the tolerance and the exact optimum (first problems).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from ticketsolver.solvers import Solutions, SolveStatus, get_solver
from ticketsolver.solvers.ladder import LADDER_STAGES


def make_problems(batch: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, k])
    a = math.sqrt(8 * 1.5 * 0.3 / k)
    coeffs = rng.uniform(-a, a, (batch, k)) * rng.uniform(-a, a, (batch, k))
    return coeffs, np.clip(rng.normal(0, 0.1, batch), -0.3, 0.3)


def share(sol: Solutions, status: SolveStatus) -> str:
    return f"{np.mean(sol.status == status):.1%}"


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=2_000)
    parser.add_argument("--exact-k40", type=int, default=200, help="problems for exact mitm at k = 40")
    parser.add_argument("--sizes", default="30,40")
    parser.add_argument("--tolerances", default="1e-9,1e-8")
    args = parser.parse_args()
    console = Console(width=170)
    exact = get_solver("mitm")
    tolerances = [float(v) for v in args.tolerances.split(",")]
    exact.solve(*make_problems(64, 12))  # compile outside the timings
    get_solver("auto", tolerance=1e-9).solve(*make_problems(64, 30))
    table = Table(title=f"exact mitm vs the ladder {LADDER_STAGES} (mitm on all cores of this machine)")
    for col in ("k", "solver", "problems", "problems/s", "x exact", "max error", "optimal", "within tol", "feasible"):
        table.add_column(col, justify="right")
    table.add_column("error > tol", justify="right")
    table.add_column("exits m:count", justify="left")
    for k in (int(v) for v in args.sizes.split(",")):
        coeffs, targets = make_problems(args.problems, k)
        b = min(args.problems, args.exact_k40) if k > 36 else args.problems
        t0 = time.perf_counter()
        ref = exact.solve(coeffs[:b], targets[:b])
        exact_rate = b / (time.perf_counter() - t0)
        table.add_row(
            str(k),
            "mitm (exact)",
            f"{b:,}",
            f"{exact_rate:,.0f}",
            "1",
            f"{ref.max_error:.2e}",
            share(ref, SolveStatus.OPTIMAL),
            "-",
            "-",
            " | ".join(f"{np.mean(ref.errors > tol):.1%}" for tol in tolerances),
            "",
        )
        for tol in tolerances:
            t0 = time.perf_counter()
            sol = get_solver("auto", tolerance=tol).solve(coeffs, targets)
            rate = len(sol) / (time.perf_counter() - t0)
            worse = np.count_nonzero(sol.errors[:b] > np.maximum(tol, ref.errors) + 1e-15)
            exits = " ".join(
                f"{s['free']}:{s['within_tolerance'] + s['optimal']}" for s in sol.info["ladder"] if s["entered"]
            )
            table.add_row(
                "",
                f"ladder tol {tol:g}",
                f"{len(sol):,}",
                f"{rate:,.0f}",
                f"{rate / exact_rate:.1f}",
                f"{sol.max_error:.2e}",
                share(sol, SolveStatus.OPTIMAL),
                share(sol, SolveStatus.WITHIN_TOLERANCE),
                share(sol, SolveStatus.FEASIBLE),
                f"{np.mean(sol.errors > tol):.1%}" + (f" ({worse} worse than needed)" if worse else ""),
                exits,
            )
        console.print(f"[dim]done: k={k}[/dim]")
    console.print(table)


if __name__ == "__main__":
    main()
