"""Ticket quality, size and time for the example targets, pure and re-randomised side by side.

Trains each example target (or reuses it from --workdir), builds its ticket at each n from a *pure* source
(the default: one i.i.d. random network, construction L) and, at the --resample-n values, with opt-in
re-randomisation (IteRand, --resample rounds, constructions O/I: today's re-randomised default), verifies
every ticket on the bundled test data and on random inputs of the box, and prints one table: source kind,
examined random values, the smallest KS p-value of a source tensor against its documented law, accuracy of
f and g, top-1 agreement, max relative output error (float64 on data and random inputs, float32 on data),
max weight error, ticket size, build and verify seconds.

A second table compares the solve engines on LeNet5's pure problems: the ladder that the pure build uses
(``auto`` solving to the build's tolerance) against today's exact engine (``mitm``, the exact optimum of
every subset sum), both on the same random sample of the largest layer's problems, extrapolated to the
whole layer. A figure (max weight error and max relative output error against n, pure and re-randomised,
with source parameters and examined values under each n) is written to --figure.

    python benchmarks/tickets.py                          # all targets; pure n = 20, 30, 40; re-rand. 20, 30
    python benchmarks/tickets.py --targets lenet5 --n 20 --resample-n "" --graph-targets ""
    python benchmarks/tickets.py --targets "" --graph-targets resnet,mobilenet,vit,chartransformer  # issue 9

The graph examples (examples/train_graph_models.py) are built as ``ticketsolver build MODEL.pt2 --n 30`` builds
them (every other option its default: a pure source, boxes observed on calibration inputs of the default box),
verified on their data (digits 32x32 RGB, digits 28x28, the Python docstring text) and on random inputs, and
exported to ONNX: its weighted ops (Conv, Gemm, MatMul, Gather) against the target's units, and how many of its
initializers equal a trained tensor of the target (must be 0).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import ticketsolver as ts
from ticketsolver import data
from ticketsolver.construction import CONSTRUCTIONS, OffsetBlocks, pair_input_boxes
from ticketsolver.solvers import get_solver

ROOT = Path(__file__).resolve().parents[1]
#: name -> (training command, checkpoint file, dataset loader)
TARGETS = {
    "lenet5": (["examples/train_lenet5.py"], "lenet5.pt", data.load_digits_28),
    "mlp": (["examples/train_mlp.py"], "mlp.pt", data.load_digits_flat),
    "mlp-wine": (["examples/train_mlp.py", "--dataset", "wine"], "mlp_wine.pt", data.load_wine_standardized),
    "cnn-bn": (["examples/train_cnn_export.py"], "cnn_bn.pt2", data.load_digits_28),
    "cnn-bn-signed": (
        ["examples/train_cnn_export.py", "--signed"],
        "cnn_bn_signed.pt2",
        data.load_digits_28_signed,
    ),
}


#: the graph targets of issue 9: name -> (training command, checkpoint file, evaluation data)
GRAPH_TARGETS = {
    "resnet": (["examples/train_graph_models.py", "--model", "resnet"], "resnet.pt2", data.load_digits_32_rgb),
    "mobilenet": (["examples/train_graph_models.py", "--model", "mobilenet"], "mobilenet.pt2", data.load_digits_28),
    "vit": (["examples/train_graph_models.py", "--model", "vit"], "vit.pt2", data.load_digits_28),
    "chartransformer": (
        ["examples/train_graph_models.py", "--model", "chartransformer"],
        "chartransformer.pt2",
        data.load_python_text_windows,
    ),
}


def _graph_target(name: str, workdir: Path, console: Console) -> tuple[Any, Any]:
    """The graph example ``name`` (trained into ``workdir`` unless there) and its evaluation data as (x, y)."""
    command, file, loader = GRAPH_TARGETS[name]
    checkpoint = _trained(name, command, workdir / file, console)
    loaded = loader()
    return ts.load_target(checkpoint), (loaded.x_test, loaded.y_test) if hasattr(loaded, "x_test") else loaded


def _onnx_facts(target: Any, ticket: Any, path: Path) -> dict[str, Any]:
    """Weighted ops of the exported ONNX graph, and how many of its initializers equal a trained tensor."""
    import onnx

    from ticketsolver.ticket import export_ticket

    export_ticket(ticket, path, "onnx")
    model = onnx.load(str(path))
    initializers = [onnx.numpy_helper.to_array(i).reshape(-1).astype(np.float64) for i in model.graph.initializer]
    trained = [t.numpy().reshape(-1) for unit in target.tensors for t in unit.values()]
    copies = sum(
        1
        for value in initializers
        for t in trained
        if value.size == t.size and np.allclose(value, t, rtol=1e-3, atol=1e-6 * max(1.0, float(np.abs(t).max())))
    )
    weighted = sum(node.op_type in ("Conv", "Gemm", "MatMul", "Gather") for node in model.graph.node)
    return {"onnx_weighted_ops": weighted, "onnx_trained_copies": copies, "onnx_kb": path.stat().st_size / 1000}


def _graph_row(name: str, target: Any, dataset: Any, n: int, workdir: Path) -> dict[str, Any]:
    """``ticketsolver build MODEL.pt2 --n N`` (every other option its default), verified on data and random
    inputs, exported to ONNX."""
    t0 = time.perf_counter()
    ticket = ts.build_ticket(target, ts.BuildConfig(n=n))
    build_s = time.perf_counter() - t0
    path = ticket.save(workdir / f"{name}.n{n}.ticket")
    t1 = time.perf_counter()
    report = ts.verify(target, ticket, ts.VerifyConfig(), data=dataset)
    verify_s = time.perf_counter() - t1
    d, r = report.sections["data"]["float64"], report.sections["random"]["float64"]
    d32, r32 = report.sections["data"]["float32"], report.sections["random"]["float32"]
    units = target.spec.units
    return {
        "target": name,
        "n": n,
        "units": len(units),
        "pairs": len(ticket.layouts),
        "target_params": sum(u.weights for u in units),
        "acc_f": d.accuracy_target,
        "acc_g": d.accuracy_pruned,
        "agree_data": d.top1_agreement,
        "agree_random": r.top1_agreement,
        "rel_data": d.relative_error_max,
        "rel_random": r.relative_error_max,
        "rel_data_f32": d32.relative_error_max,
        "rel_random_f32": r32.relative_error_max,
        "worst_case": report.worst_case["float64"].max_abs_error if "float64" in report.worst_case else None,
        "outside_box": sum(c.outside_linear_region for c in report.layers.get("float64", [])),
        "weight_error_max": max(p["weight_error_max"] for p in ticket.build["pairs"]),
        "kb": path.stat().st_size / 1000,
        "build_s": build_s,
        "verify_s": verify_s,
        **_onnx_facts(target, ticket, workdir / f"{name}.n{n}.onnx"),
        **ticket.sizes(),
    }


def _graph_table(rows: list[dict[str, Any]], console: Console) -> None:
    table = Table(
        title="graph targets (issue 9): ticketsolver build MODEL.pt2 --n N, pure source, float64 unless marked; "
        "rel err = max over inputs of max|f-g| / max|f| over all its outputs"
    )
    columns = (
        "target",
        "n",
        "units / pairs",
        "acc f / g",
        "agree data / random",
        "rel err data / random",
        "f32 data / random",
        "max w err",
        "ONNX weighted ops (target units) / trained copies",
        "KB",
        "kept / source params",
        "build s",
        "verify s",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["target"],
            str(r["n"]),
            f"{r['units']} / {r['pairs']}",
            f"{r['acc_f']:.2%} / {r['acc_g']:.2%}",
            f"{r['agree_data']:.2%} / {r['agree_random']:.2%}",
            f"{r['rel_data']:.1e} / {r['rel_random']:.1e}",
            f"{r['rel_data_f32']:.1e} / {r['rel_random_f32']:.1e}",
            f"{r['weight_error_max']:.1e}",
            f"{r['onnx_weighted_ops']} ({r['units']}) / {r['onnx_trained_copies']}",
            f"{r['kb']:.0f}",
            f"{r['kept_params']:,} / {r['source_params']:,}",
            f"{r['build_s']:.1f}",
            f"{r['verify_s']:.1f}",
        )
    console.print(table)


def _target(name: str, workdir: Path, console: Console | None = None) -> tuple[Any, Any]:
    """The example target ``name`` (trained into ``workdir`` by its example script unless already there) and its
    bundled dataset."""
    command, file, loader = TARGETS[name]
    return ts.load_target(_trained(name, command, workdir / file, console or Console())), loader()


def _trained(name: str, command: list[str], checkpoint: Path, console: Console) -> Path:
    """``checkpoint``, written by the example script ``command`` first unless it is already there."""
    if not checkpoint.exists():
        console.print(f"training {name} ...")
        subprocess.run(
            [sys.executable, *command, "--out", str(checkpoint)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL
        )
    return checkpoint


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _row(name: str, target: Any, dataset: Any, n: int, resample: int, workdir: Path) -> tuple[dict[str, Any], Any]:
    t0 = time.perf_counter()
    ticket = ts.build_ticket(target, ts.BuildConfig(n=n, input_domain=dataset.input_domain, resample=resample))
    build_s = time.perf_counter() - t0
    kind = "iid" if resample == 0 else "rerand"
    path = ticket.save(workdir / f"{name}.n{n}.{kind}.ticket")
    t1 = time.perf_counter()
    report = ts.verify(target, ticket, ts.VerifyConfig(), data=dataset)
    verify_s = time.perf_counter() - t1
    d, r = report.sections["data"]["float64"], report.sections["random"]["float64"]
    d32 = report.sections["data"]["float32"]
    sizes = ticket.sizes()
    pairs = ticket.build["pairs"]
    row = {
        "target": name,
        "n": n,
        "resample": resample,
        "source_kind": sizes["source_kind"],
        "constructions": "".join(CONSTRUCTIONS[p.construction] for p in ticket.layouts),
        "acc_f": d.accuracy_target,
        "acc_g": d.accuracy_pruned,
        "agreement": d.top1_agreement,
        "agreement_random": r.top1_agreement,
        "rel_data": d.relative_error_max,
        "rel_random": r.relative_error_max,
        "rel_data_f32": d32.relative_error_max,
        "weight_error_max": max(p["weight_error_max"] for p in pairs),
        "ks_min_p": _ks_min_p(ticket),
        "kb": path.stat().st_size / 1000,
        "build_s": build_s,
        "verify_s": verify_s,
        **sizes,
    }
    return row, ticket


def _ks_min_p(ticket: Any) -> float:
    """Smallest KS p-value of a source tensor of the ticket against its documented law (draws applied)."""
    from scipy import stats

    worst = 1.0
    for k, layout in enumerate(ticket.layouts):
        for name, values in ticket.source_tensors(k).items():
            unit = values.astype(np.float64).ravel() / layout.scales[name]
            if layout.law(name) == "symmetric":
                unit = (unit + 1.0) / 2.0
            worst = min(worst, float(stats.kstest(unit, "uniform").pvalue))
    return worst


def _engine_rows(target: Any, ticket: Any, sample: int) -> dict[str, Any]:
    """Exact engine vs the ladder on a sample of the largest pure layer's own problems."""
    k = max(range(len(ticket.layouts)), key=lambda i: ticket.layouts[i].d_out * ticket.layouts[i].d_in)
    layout = ticket.layouts[k]
    lo, hi = pair_input_boxes(ticket)[k]
    blocks = OffsetBlocks.draw(layout, ticket.source, lo, hi)
    module = [m for m in target.module if isinstance(m, nn.Linear | nn.Conv2d)][k]
    weight = module.weight.detach().double().reshape(layout.d_out, -1).numpy()
    total = layout.d_out * layout.d_in
    units = np.random.default_rng(0).choice(total, size=min(sample, total), replace=False)
    coeffs, usable, targets = blocks.weight_problems(units, weight)
    tolerance = float(ticket.build["config"]["tolerance"])
    out: dict[str, Any] = {"n": layout.n, "layer": k, "problems": int(total), "sample": int(units.size)}
    for label, solver in (("exact", get_solver("mitm")), ("ladder", get_solver("auto", tolerance=tolerance))):
        solver.solve(coeffs[:8], targets[:8], usable[:8])  # compile / warm up outside the timing
        t0 = time.perf_counter()
        sol = solver.solve(coeffs, targets, usable)
        seconds = time.perf_counter() - t0
        out[label] = {
            "us_per_problem": 1e6 * seconds / units.size,
            "layer_seconds": seconds * total / units.size,
            "max_error": sol.max_error,
            "optimal": sol.n_optimal / len(sol),
        }
    out["tolerance"] = tolerance
    out["usable_mean"] = float(usable.sum(1).mean())
    return out


def _figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lenet = [r for r in rows if r["target"] == "lenet5"]
    if not lenet:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    styles = {
        "iid": ("pure (one i.i.d. network)", "o-", "tab:blue"),
        "rerandomized": ("re-randomised", "s--", "tab:red"),
    }
    for ax, key, title in (
        (axes[0], "weight_error_max", "max weight error |w - subset sum|"),
        (axes[1], "rel_random", "max relative output error (random inputs, float64)"),
    ):
        for kind, (label, style, color) in styles.items():
            pts = sorted((r["n"], r[key]) for r in lenet if r["source_kind"] == kind)
            if pts:
                ax.semilogy(*zip(*pts, strict=True), style, color=color, label=label)
        ax.set_title(title, fontsize=10)
        ns = sorted({r["n"] for r in lenet})
        ax.set_xticks(ns)
        labels = []
        for n in ns:
            pure = next((r for r in lenet if r["n"] == n and r["source_kind"] == "iid"), None)
            rr = next((r for r in lenet if r["n"] == n and r["source_kind"] == "rerandomized"), None)
            text = f"n={n}"
            if pure:
                text += f"\nsource {pure['source_params'] / 1e6:.1f}M"
            if rr:
                text += f"\nexamined {rr['examined_values'] / 1e6:.1f}M (re-rand.)"
            labels.append(text)
        ax.set_xticklabels(labels, fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("LeNet5 on digits 28x28, inputs in [0, 1]: pure vs re-randomised tickets", fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--graph-targets", default=",".join(GRAPH_TARGETS), help="graph examples ('' for none)")
    parser.add_argument("--graph-n", default="30", help="n of the graph tickets")
    parser.add_argument("--n", default="20,30,40", help="n of the pure tickets")
    parser.add_argument("--resample-n", default="20,30", help="n of the re-randomised tickets ('' for none)")
    parser.add_argument("--resample", type=int, default=128, help="rounds of the re-randomised tickets")
    parser.add_argument("--engine-sample", type=int, default=1000, help="problems per engine timing (0: skip)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--figure", type=Path, default=ROOT / "benchmarks" / "figures" / "lenet5_error_vs_n.png")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    console = Console(width=180)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    engines: list[dict[str, Any]] = []
    graph_rows: list[dict[str, Any]] = []
    for name in [t for t in args.graph_targets.split(",") if t]:
        target, dataset = _graph_target(name, args.workdir, console)
        for n in _ints(args.graph_n):
            graph_rows.append(_graph_row(name, target, dataset, n, args.workdir))
            console.print(f"done: {name} n={n} ({graph_rows[-1]['build_s']:.1f} s build)")
    if graph_rows:
        _graph_table(graph_rows, console)
    for name in [t for t in args.targets.split(",") if t]:
        target, dataset = _target(name, args.workdir, console)
        runs = [(n, 0) for n in _ints(args.n)] + [(n, args.resample) for n in _ints(args.resample_n)]
        for n, resample in runs:
            row, ticket = _row(name, target, dataset, n, resample, args.workdir)
            rows.append(row)
            console.print(f"done: {name} n={n} {row['source_kind']} ({row['build_s']:.1f} s build)")
            if name == "lenet5" and resample == 0 and n >= 30 and args.engine_sample:
                engines.append(_engine_rows(target, ticket, args.engine_sample))
    threads = torch.get_num_threads()
    title = (
        f"tickets of the example targets (default settings; {platform.machine()}, {threads} threads). "
        "rel err: max over inputs of max|f-g| / max|f|"
    )
    table = Table(title=title)
    columns = (
        "target",
        "n",
        "source",
        "layers",
        "acc f",
        "acc g",
        "agree",
        "rel err data",
        "rel err random",
        "rel err data f32",
        "max w err",
        "KB",
        "kept / source params",
        "examined values",
        "KS p min",
        "build s",
        "verify s",
    )
    for col in columns:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["target"],
            str(r["n"]),
            "iid" if r["source_kind"] == "iid" else f"re-rand. R={r['resample']}",
            r["constructions"],
            f"{r['acc_f']:.2%}",
            f"{r['acc_g']:.2%}",
            f"{r['agreement']:.2%}",
            f"{r['rel_data']:.1e}",
            f"{r['rel_random']:.1e}",
            f"{r['rel_data_f32']:.1e}",
            f"{r['weight_error_max']:.1e}",
            f"{r['kb']:.0f}",
            f"{r['kept_params']:,} / {r['source_params']:,}",
            f"{r['examined_values']:,}",
            f"{r['ks_min_p']:.0e}",
            f"{r['build_s']:.1f}",
            f"{r['verify_s']:.1f}",
        )
    console.print(table)
    if engines:
        engine_table = Table(
            title="solve engines on LeNet5's pure problems (same random sample of the largest layer; "
            "layer time extrapolated from the sample)"
        )
        for col in ("n", "layer problems", "usable mean", "engine", "us/problem", "layer s", "max err", "optimal"):
            engine_table.add_column(col, justify="right")
        for e in engines:
            for label in ("exact", "ladder"):
                x = e[label]
                engine_table.add_row(
                    str(e["n"]),
                    f"{e['problems']:,} ({e['sample']:,} timed)",
                    f"{e['usable_mean']:.1f}",
                    "mitm (exact optimum)" if label == "exact" else f"ladder (tol {e['tolerance']:.0e})",
                    f"{x['us_per_problem']:.0f}",
                    f"{x['layer_seconds']:.1f}",
                    f"{x['max_error']:.1e}",
                    f"{x['optimal']:.0%}",
                )
        console.print(engine_table)
    if args.figure and rows:
        _figure(rows, args.figure)
        console.print(f"figure -> {args.figure}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "engines": engines, "graphs": graph_rows}, indent=2))


if __name__ == "__main__":
    main()
