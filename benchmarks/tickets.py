"""Ticket quality, size and time for the example targets: LeNet5, two MLPs, a BatchNorm CNN (.pt2).

Trains each example target (or reuses it from --workdir), builds its ticket with the default settings at
each n, verifies it on the bundled test data and on random inputs of the domain, and prints one table:
accuracy of f and g, top-1 agreement, max relative output error (data / random), ticket size, build and
verify seconds.

    python benchmarks/tickets.py                  # all targets, n = 20 and 30
    python benchmarks/tickets.py --targets lenet5 --n 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import ticketsolver as ts
from ticketsolver import data
from ticketsolver.verification.against import verify

ROOT = Path(__file__).resolve().parents[1]
#: name -> (training command, checkpoint file, dataset loader)
TARGETS = {
    "lenet5": (["examples/train_lenet5.py"], "lenet5.pt", data.load_digits_28),
    "mlp": (["examples/train_mlp.py"], "mlp.pt", data.load_digits_flat),
    "mlp-wine": (["examples/train_mlp.py", "--dataset", "wine"], "mlp_wine.pt", data.load_wine_standardized),
    "cnn-bn": (["examples/train_cnn_export.py"], "cnn_bn.pt2", data.load_digits_28),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--n", default="20,30")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    console = Console(width=150)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.targets.split(","):
        command, file, loader = TARGETS[name]
        checkpoint = args.workdir / file
        if not checkpoint.exists():
            console.print(f"training {name} ...")
            subprocess.run(
                [sys.executable, *command, "--out", str(checkpoint)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL
            )
        target = ts.load_target(checkpoint)
        dataset = loader()
        for n in (int(v) for v in args.n.split(",")):
            t0 = time.perf_counter()
            ticket = ts.build_ticket(target, n, input_domain=dataset.input_domain)
            build_s = time.perf_counter() - t0
            path = ticket.save(args.workdir / f"{name}.n{n}.ticket")
            t1 = time.perf_counter()
            report = verify(target, ticket, dataset)
            verify_s = time.perf_counter() - t1
            d, r = report.sections["data"]["float64"], report.sections["random"]["float64"]
            rows.append(
                {
                    "target": name,
                    "n": n,
                    "constructions": "".join("O" if p.construction == "output_blocks" else "I" for p in ticket.layouts),
                    "acc_f": d.accuracy_target,
                    "acc_g": d.accuracy_pruned,
                    "agreement": d.top1_agreement,
                    "rel_data": d.relative_error_max,
                    "rel_random": r.relative_error_max,
                    "kb": path.stat().st_size / 1000,
                    "build_s": build_s,
                    "verify_s": verify_s,
                    **ticket.sizes(),
                }
            )
            console.print(f"done: {name} n={n}")
    table = Table(title="tickets of the example targets (default settings; float64 verification on CPU)")
    for col in (
        "target",
        "n",
        "layers",
        "acc f",
        "acc g",
        "agree",
        "rel err data",
        "rel err random",
        "ticket KB",
        "kept / source params",
        "build s",
        "verify s",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["target"],
            str(r["n"]),
            r["constructions"],
            f"{r['acc_f']:.2%}",
            f"{r['acc_g']:.2%}",
            f"{r['agreement']:.2%}",
            f"{r['rel_data']:.1e}",
            f"{r['rel_random']:.1e}",
            f"{r['kb']:.0f}",
            f"{r['kept_params']:,} / {r['source_params']:,}",
            f"{r['build_s']:.1f}",
            f"{r['verify_s']:.1f}",
        )
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
