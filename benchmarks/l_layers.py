"""Construction L on single ResNet-sized conv layers: the pure build's speed and memory, layer by layer.

    python benchmarks/l_layers.py                   # 64->64 (post-ReLU and signed box), 256->256 post-ReLU; ~2 min
    python benchmarks/l_layers.py --all --big       # also 256->256 signed and 512->512 (ResNet-18's largest)
    git archive HEAD | tar -x -C /tmp/ts_head       # any other checkout as "before":
    python benchmarks/l_layers.py --baseline /tmp/ts_head

Each case is one synthetic Conv2d c->c 3x3 (weights ~ N(0, 2/fan_in), bias ~ N(0, 0.1) as after folding a
BatchNorm), solved as a pure build does it: ``solve_offset_blocks`` with ``get_solver("auto", tolerance)``, n = 30,
on the box [0, 3] per input entry (post-ReLU activations) or [-3, 3] (a signed box). Every case runs in a fresh
process (its own peak RSS; with ``--baseline`` the same script imports the other checkout), after a warm-up
solve that compiles the kernels. Columns: seconds wall and CPU (CPU / wall ~ cores used: on a shared machine wall
time is noisy, CPU time much less), weights per wall second and per CPU second, RSS before the solve and the peak
above it, the largest weight and bias errors, the exits of the ladder (status counts), and a hash of the chosen
masks: equal hashes mean the same subsets were chosen. The last column is ResNet-18's 11.2M conv weights at the
layer's rate (wall).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESNET18_WEIGHTS = 11_200_000

CHILD = r"""
import hashlib, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import ticketsolver
assert ticketsolver.__file__.startswith(sys.argv[1]), (ticketsolver.__file__, sys.argv[1])
from ticketsolver.construction.builder import SCALE_MARGINS
from ticketsolver.construction.layout import ConvGeometry, PairLayout
from ticketsolver.construction.offset_blocks import offset_scales, solve_offset_blocks
from ticketsolver.solvers import get_solver
from ticketsolver.source import RandomSource

channels, lo_value, hi_value, n, tolerance, seed = (
    int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
)
rng = np.random.default_rng([seed, channels])
d_in = channels * 9
weight = rng.normal(0.0, np.sqrt(2.0 / d_in), (channels, d_in))
bias = rng.normal(0.0, 0.1, channels)
lo, hi = np.full(d_in, lo_value), np.full(d_in, hi_value)
scales, units = offset_scales(weight, bias, lo, hi, n, SCALE_MARGINS["offset_blocks"])
layout = PairLayout(
    pair=0, construction="offset_blocks", kind="conv2d", d_out=channels, d_in=d_in, n=n, has_bias=True,
    scales=scales, conv=ConvGeometry(channels, (3, 3), (1, 1), (1, 1), (1, 1)), bias_units=units,
)
solver = get_solver("auto", tolerance=tolerance)
warm = rng.uniform(-0.1, 0.1, (64, n))
solver.solve(warm, warm[:, :20].sum(1))  # compile outside the timing
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
wall, cpu = time.perf_counter(), time.process_time()
solution = solve_offset_blocks(layout, RandomSource(seed), weight, bias, solver, lo, hi)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
digest = hashlib.sha256()
for name in ("U", "beta", "V"):
    digest.update(np.packbits(solution.masks[name]).tobytes())
print(json.dumps({
    "weights": int(weight.size), "wall": wall, "cpu": cpu, "rss_before": before, "peak_delta": peak - before,
    "max_weight_error": float(solution.weight_errors.max()), "max_bias_error": float(solution.bias_errors.max()),
    "status": solution.stats["status"], "bias_units": units, "hash": digest.hexdigest()[:12],
}))
"""

CASES = {
    "c64-relu": (64, 0.0, 3.0),
    "c64-signed": (64, -3.0, 3.0),
    "c256-relu": (256, 0.0, 3.0),
    "c256-signed": (256, -3.0, 3.0),
    "c512-relu": (512, 0.0, 3.0),
}


def run_case(root: Path, case: str, n: int, tolerance: float, seed: int) -> dict[str, object]:
    """One case in a fresh process importing ticketsolver from ``root``."""
    channels, lo, hi = CASES[case]
    args = [str(root), str(channels), str(lo), str(hi), str(n), str(tolerance), str(seed)]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=False, cwd=str(root)
    )
    if done.returncode != 0:
        raise SystemExit(f"{case} ({root}) failed:\n{done.stderr[-3000:]}")
    return {"case": case, "root": str(root), **json.loads(done.stdout.strip().splitlines()[-1])}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--tolerance", type=float, default=1e-8, help="the ladder's tolerance (a pure build's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all", action="store_true", help="also 256->256 on the signed box")
    parser.add_argument("--big", action="store_true", help="also 512->512 3x3 (2.36M weights: minutes)")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), help="exactly these cases")
    parser.add_argument("--baseline", type=Path, help="another checkout of ticketsolver to compare with (before)")
    parser.add_argument("--json", type=Path, help="write the rows there")
    args = parser.parse_args()

    cases = args.cases or ["c64-relu", "c64-signed", "c256-relu"]
    if not args.cases:
        cases += ["c256-signed"] if args.all else []
        cases += ["c512-relu"] if args.big else []
    roots = [("after", ROOT)] + ([("before", args.baseline.resolve())] if args.baseline else [])
    console = Console(width=200)
    console.print(
        f"[dim]{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}; n = {args.n}, "
        f"auto tolerance {args.tolerance:g}, seed {args.seed}[/dim]"
    )
    table = Table(title="construction L, one conv layer: solve_offset_blocks")
    for column in ("layer", "code", "weights", "wall s", "cpu s", "w/s wall", "w/s cpu", "RSS before MB"):
        table.add_column(column, justify="right")
    for column in ("peak delta MB", "max |w err|", "max |b err|", "status", "masks", "ResNet-18 min"):
        table.add_column(column, justify="right")
    rows = []
    for case in cases:
        for label, root in roots:
            row = run_case(root, case, args.n, args.tolerance, args.seed)
            rows.append({"code": label, **row})
            weights, wall, cpu = int(row["weights"]), float(row["wall"]), float(row["cpu"])  # type: ignore[arg-type]
            status = " ".join(f"{k[:3]}:{v}" for k, v in row["status"].items())  # type: ignore[attr-defined]
            table.add_row(
                case,
                label,
                f"{weights:,}",
                f"{wall:.1f}",
                f"{cpu:.1f}",
                f"{weights / wall:,.0f}",
                f"{weights / cpu:,.0f}",
                f"{int(row['rss_before']) / 2**20:,.0f}",  # type: ignore[call-overload]
                f"{int(row['peak_delta']) / 2**20:,.0f}",  # type: ignore[call-overload]
                f"{row['max_weight_error']:.2e}",
                f"{row['max_bias_error']:.2e}",
                status,
                str(row["hash"]),
                f"{RESNET18_WEIGHTS / (weights / wall) / 60:.1f}",
            )
            console.print(f"[dim]done: {case} ({label}) {wall:.1f} s[/dim]")
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
