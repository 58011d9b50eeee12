"""ResNet-18 (CIFAR shape, 11.2M parameters) at n = 30: build, ticket, load and verify, each phase measured alone.

Issue 9's scale goals on the project's 2-core, 24 GiB machine: build <= 15 min with peak RSS <= 12 GiB, verify on 256
inputs <= 5 min, the ticket's size reported. Each phase runs in a fresh process of its own (``--phase``), so its peak
resident memory (``ru_maxrss``) is that phase's alone:

* ``build``: ``ticketsolver.build_ticket(target, BuildConfig(n=30))`` — what ``ticketsolver build MODEL.pt2 --n 30``
  runs (pure source, construction L, boxes observed on calibration inputs of the default box) — then ``save``;
* ``load``: ``Ticket.load`` (regenerates the held random tensors, checks the kept hash and the statistics) and the
  pruned network g (``to_module``: L convs as grouped convs of U's diagonal, never the dense U);
* ``verify``: ``ticketsolver.verify`` on --data-inputs test images of digits 32x32 RGB and --random-inputs uniform
  inputs of the ticket's box, in the --dtypes given, per-unit checks on --layer-inputs inputs, worst-case search off
  unless asked (each start costs tens of forward and backward passes of g, ~17 GMAC each).

    python benchmarks/resnet18.py                              # trains the example for 1 epoch unless present
    python benchmarks/resnet18.py --checkpoint runs/graph/resnet18.pt2 --json runs/graph/resnet18.json

Prints one table with every phase's seconds and peak RSS, the ticket's bytes and parameter counts, and the
verification's errors, agreement and accuracy. The machine is named beside the figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _build(args: argparse.Namespace) -> dict[str, Any]:
    import ticketsolver as ts

    t0 = time.perf_counter()
    target = ts.load_target(args.checkpoint)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    ticket = ts.build_ticket(target, ts.BuildConfig(n=args.n))
    build_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    path = ticket.save(args.ticket)
    save_s = time.perf_counter() - t2
    sizes = ticket.sizes()
    return {
        "target_load_s": load_s,
        "build_s": build_s,
        "save_s": save_s,
        "build_peak_mb": _peak_mb(),
        "ticket_bytes": path.stat().st_size,
        "pairs": len(ticket.layouts),
        "units": len(target.spec.units),
        "weight_error_max": max(p["weight_error_max"] for p in ticket.build["pairs"]),
        "observed_boxes": sum("observed" in str(u.get("box")) for u in ticket.build["graph_units"]),
        **sizes,
    }


def _load(args: argparse.Namespace) -> dict[str, Any]:
    import ticketsolver as ts

    t0 = time.perf_counter()
    ticket = ts.Ticket.load(args.ticket)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    g = ticket.to_module()
    module_s = time.perf_counter() - t1
    return {
        "load_s": load_s,
        "to_module_s": module_s,
        "load_peak_mb": _peak_mb(),
        "g_parameters": sum(p.numel() for p in g.parameters()),
    }


def _verify(args: argparse.Namespace) -> dict[str, Any]:
    import ticketsolver as ts
    from ticketsolver import data as bundled

    target = ts.load_target(args.checkpoint)
    ticket = ts.Ticket.load(args.ticket)
    digits = bundled.load_digits_32_rgb()
    inputs = (digits.x_test[: args.data_inputs], digits.y_test[: args.data_inputs]) if args.data_inputs else None
    config = ts.VerifyConfig(
        n_random=args.random_inputs,
        dtypes=tuple(args.dtypes.split(",")),
        worst_case_starts=args.worst_case_starts,
        worst_case_steps=args.worst_case_steps,
        layer_check_inputs=args.layer_inputs,
        batch_size=args.batch,
    )
    t0 = time.perf_counter()
    report = ts.verify(target, ticket, config, data=inputs)
    verify_s = time.perf_counter() - t0
    out: dict[str, Any] = {"verify_s": verify_s, "verify_peak_mb": _peak_mb(), "sections": {}}
    for section, by_dtype in report.sections.items():
        for dtype, result in by_dtype.items():
            out["sections"][f"{section} {dtype}"] = {
                "inputs": result.n_inputs,
                "rel_max": result.relative_error_max,
                "rel_mean": result.relative_error_mean,
                "agreement": result.top1_agreement,
                "acc_f": result.accuracy_target,
                "acc_g": result.accuracy_pruned,
            }
    checks = report.layers.get("float64", [])
    out["units_outside_box"] = sum(c.outside_linear_region for c in checks)
    out["pair_vs_effective_max"] = max((c.pair_vs_effective_relative for c in checks), default=None)
    worst = report.worst_case.get("float64")
    out["worst_case_abs"] = None if worst is None else worst.max_abs_error
    return out


PHASES = {"build": _build, "load": _load, "verify": _verify}


def _run_phase(phase: str, argv: list[str]) -> dict[str, Any]:
    """``phase`` in a fresh process; its JSON result."""
    done = subprocess.run(
        [sys.executable, __file__, "--phase", phase, *argv], cwd=ROOT, check=True, capture_output=True, text=True
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"ResNet-18 (CIFAR shape) at n = {result['n']}, pure source — {result['machine']}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("target units / pairs", f"{result['units']} / {result['pairs']}"),
        ("target params", f"{result['target_params']:,}"),
        ("source params (U, beta, V)", f"{result['source_params']:,}"),
        ("kept params", f"{result['kept_params']:,} ({result['kept_params'] / result['source_params']:.4%})"),
        ("units with observed boxes", str(result["observed_boxes"])),
        ("max weight error", f"{result['weight_error_max']:.1e}"),
        ("build s / peak RSS", f"{result['build_s']:.1f} / {result['build_peak_mb'] / 1024:.2f} GiB"),
        ("save s; ticket size", f"{result['save_s']:.1f}; {result['ticket_bytes'] / 1e6:.2f} MB"),
        (
            "load s (+ to_module s) / peak RSS",
            f"{result['load_s']:.1f} (+{result['to_module_s']:.1f}) / {result['load_peak_mb'] / 1024:.2f} GiB",
        ),
        ("verify s / peak RSS", f"{result['verify_s']:.1f} / {result['verify_peak_mb'] / 1024:.2f} GiB"),
    ]
    for name, s in result.get("sections", {}).items():
        acc = "" if s["acc_f"] is None else f"; acc f/g {s['acc_f']:.2%} / {s['acc_g']:.2%}"
        rows.append((f"{name} ({s['inputs']} inputs)", f"rel max {s['rel_max']:.1e}, agree {s['agreement']:.2%}{acc}"))
    if result.get("pair_vs_effective_max") is not None:
        rows.append(("pairs vs effective (float64, relative)", f"{result['pair_vs_effective_max']:.1e}"))
    if result.get("worst_case_abs") is not None:
        rows.append(("worst case max |f-g| (float64)", f"{result['worst_case_abs']:.2e}"))
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs" / "graph" / "resnet18.pt2")
    parser.add_argument("--ticket", type=Path, help="default: CHECKPOINT.nN.ticket")
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=1, help="training epochs when the checkpoint is missing")
    parser.add_argument("--data-inputs", type=int, default=128, help="test images of digits 32x32 RGB")
    parser.add_argument("--random-inputs", type=int, default=128, help="uniform inputs of the ticket's box")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--layer-inputs", type=int, default=8, help="inputs of the per-unit pair checks")
    parser.add_argument("--worst-case-starts", type=int, default=0)
    parser.add_argument("--worst-case-steps", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32, help="inputs per forward pass")
    parser.add_argument(
        "--skip-build", action="store_true", help="reuse the ticket file and the build figures in --json"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.ticket = args.ticket or args.checkpoint.with_suffix(f".n{args.n}.ticket")
    if args.phase:
        print(json.dumps(PHASES[args.phase](args), default=float))
        return {}
    if args.skip_build and not (args.ticket.exists() and args.json and args.json.exists()):
        parser.error("--skip-build needs the ticket file and the --json file of an earlier run (its build figures)")
    if not args.checkpoint.exists():
        subprocess.run(
            [
                sys.executable,
                "examples/train_graph_models.py",
                "--model",
                "resnet18",
                "--epochs",
                str(args.epochs),
                "--out",
                str(args.checkpoint),
            ],
            cwd=ROOT,
            check=True,
        )
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--skip-build"]
    result: dict[str, Any] = {
        "n": args.n,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
    }
    if args.skip_build:
        result.update({k: v for k, v in json.loads(args.json.read_text()).items() if k not in ("sections",)})
    else:
        result.update(_run_phase("build", forwarded))
    result.update(_run_phase("load", forwarded))
    result.update(_run_phase("verify", forwarded))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=float))
    _table(result)
    return result


if __name__ == "__main__":
    main()
