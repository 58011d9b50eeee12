"""Depth 2L against depth L+1 (Burkholz 2022): error, source and kept parameters, depth, multiply-adds, build time.

Trains each example target (or reuses its checkpoint from --workdir, as benchmarks/tickets.py does), builds its pure
ticket at each n of --n-2l with depth 2L (a pair per target layer) and at each n of --n-l1 with depth L+1 (one random
layer per target layer plus a first layer of input copies), verifies each on the bundled test data and on random
inputs of the box (float64 and float32, certified bound), and prints one table. *MACs* are the multiply-adds per
input of g's weight layers as materialised (dense) and over their kept weights only (``ticketsolver.ticket.flops``).

    python benchmarks/depth.py                                   # LeNet5, the digits MLP and the signed wine MLP
    python benchmarks/depth.py --targets mlp-wine --n-2l 20,30 --n-l1 30 --json runs/depth/rows.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import ticketsolver as ts
from ticketsolver.ticket.flops import multiply_adds

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tickets import ROOT, TARGETS, _ints, _target  # noqa: E402  (a sibling script: same targets, same training)


def _row(name: str, target: Any, dataset: Any, n: int, depth: str, workdir: Path, console: Console) -> dict[str, Any]:
    config = ts.BuildConfig(n=n, input_domain=dataset.input_domain, depth=depth)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    ticket = ts.build_ticket(target, config)
    build_s = time.perf_counter() - t0
    path = ticket.save(workdir / f"{name}.n{n}.{depth.replace('+', 'p')}.ticket")
    t1 = time.perf_counter()
    report = ts.verify(target, ticket, ts.VerifyConfig(), data=dataset)
    verify_s = time.perf_counter() - t1
    d, r = report.sections["data"]["float64"], report.sections["random"]["float64"]
    macs = multiply_adds(ticket.to_module(), tuple(ticket.input_shape))
    target_macs = multiply_adds(target.module, tuple(target.input_shape))
    sizes = ticket.sizes()
    row = {
        "target": name,
        "depth": depth,
        "n": n,
        "random_layers": ticket.random_layers(),
        "target_layers": len(ticket.copy_plans() or ticket.layouts),
        "source_params": sizes["source_params"],
        "kept_params": sizes["kept_params"],
        "target_params": sizes["target_params"],
        "macs_dense": macs.dense,
        "macs_kept": macs.kept,
        "macs_target": target_macs.dense,
        "rel_data": d.relative_error_max,
        "rel_random": r.relative_error_max,
        "rel_data_f32": report.sections["data"]["float32"].relative_error_max,
        "agreement": d.top1_agreement,
        "acc_f": d.accuracy_target,
        "acc_g": d.accuracy_pruned,
        "certified": report.certified.max_bound if report.certified is not None else None,
        "weight_error_max": max(p["weight_error_max"] for p in ticket.build["pairs"]),
        "layer_effective_max": max(c.pair_vs_effective_relative for c in report.layers["float64"]),
        "kb": path.stat().st_size / 1000,
        "build_s": build_s,
        "verify_s": verify_s,
        "source_kind": sizes["source_kind"],
    }
    console.print(
        f"{name} {depth} n={n}: rel {row['rel_data']:.1e}/{row['rel_random']:.1e}, build {build_s:.1f} s", style="dim"
    )
    return row


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="depth 2L vs L+1 (pure sources; float64 unless said)")
    columns = [
        "target", "depth", "n", "random layers", "source params", "kept params", "MACs dense / kept (target)",
        "max rel. err data / random", "data, float32", "certified", "agree", "build s", "verify s", "ticket KB",
    ]  # fmt: skip
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["target"],
            r["depth"],
            str(r["n"]),
            f"{r['random_layers']} (L = {r['target_layers']})",
            f"{r['source_params']:,}",
            f"{r['kept_params']:,}",
            f"{r['macs_dense'] / 1e6:.1f}M / {r['macs_kept'] / 1e6:.2f}M ({r['macs_target'] / 1e6:.2f}M)",
            f"{r['rel_data']:.1e} / {r['rel_random']:.1e}",
            f"{r['rel_data_f32']:.1e}",
            "-" if r["certified"] is None else f"{r['certified']:.1e}",
            f"{r['agreement']:.2%}",
            f"{r['build_s']:.1f}",
            f"{r['verify_s']:.1f}",
            f"{r['kb']:.0f}",
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default="lenet5,mlp,mlp-wine", help=f"comma list of {', '.join(TARGETS)}")
    parser.add_argument("--n-2l", default="20,25,30", help="n of the depth-2L tickets")
    parser.add_argument("--n-l1", default="24,30", help="n of the depth-L+1 tickets")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    console = Console()
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    console.print(
        f"machine: {platform.machine()}, {platform.processor() or '?'}, torch threads {torch.get_num_threads()}"
    )
    rows = []
    for name in [t for t in args.targets.split(",") if t]:
        target, dataset = _target(name, args.workdir, console)
        for depth, ns in (("2L", _ints(args.n_2l)), ("L+1", _ints(args.n_l1))):
            for n in ns:
                rows.append(_row(name, target, dataset, n, depth, args.workdir, console))
    console.print(_table(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
