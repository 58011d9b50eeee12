"""Solver benchmark: every backend on the same seeded problems, then the paper workloads.

python benchmarks/solvers.py                 # full run (MIP backends take minutes at n >= 21)
python benchmarks/solvers.py --quick         # smoke run
python benchmarks/solvers.py --backends mitm,cpsat --json out.json
"""

from __future__ import annotations

import argparse
import json

from ticketsolver.bench import run_solver_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="mitm,gurobi,cpsat,cbc")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--mip-problems", type=int, default=3, help="problems per (family, n) for each MIP backend")
    parser.add_argument("--mip-time-limit", type=float, default=30.0)
    parser.add_argument("--sizes", default="16,21,24,30")
    parser.add_argument("--no-paper", action="store_true", help="skip the paper workloads")
    parser.add_argument("--json", help="write the figures as JSON")
    args = parser.parse_args()
    result = run_solver_benchmark(
        args.backends.split(","),
        quick=args.quick,
        sizes=tuple(int(v) for v in args.sizes.split(",")),
        mip_problems=args.mip_problems,
        mip_time_limit=args.mip_time_limit,
        paper=not args.no_paper,
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2, default=float)


if __name__ == "__main__":
    main()
