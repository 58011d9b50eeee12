"""Learned-mask tickets (edge-popup, IteRand) beside constructed tickets, on the same tasks: one table, one figure.

For each task (digits with LeNet5, wine with the 13-64-3 MLP) the example target is trained (or reused from
--workdir), then, every result measured on the task's bundled test split with the ticket's own network:

- ``dense target``: the trained network itself (its parameters are the "kept" count);
- ``constructed``: ``build_ticket`` at each --n, pure (one i.i.d. source, construction L) and re-randomised
  (--resample rounds, constructions O/I: values chosen knowing the target, so labelled ``rerandomized``);
- ``edge-popup`` / ``iterand`` on the target's architecture widened by each --widths (signed-constant weights,
  scaled fan, keep --keep per layer tensor, the LearnConfig defaults otherwise);
- both on the construction's own random source at --source-n (``source-of``: the very random values of the pure
  build, scores from scratch, the construction's own kept fraction per tensor: that source is not variance-scaled,
  and keeping half of it gives activations of ~1e10 on LeNet5), for --source-epochs;
- ``warm start`` (``init-from``): scores started from the constructed mask, keep = its own fraction per tensor, then
  edge-popup fine-tuning for the task at each of --warm-lrs; the setting column says how many mask entries moved.

IteRand's period follows the paper *in epochs*: its 300 iterations are 0.85 of an epoch of CIFAR-10 (45,000 images,
batch 128), and these tasks have 20 (digits) or 2 (wine) iterations per epoch; --rerand-period overrides it. The
rate is the paper's lambda = 0.1.

Columns: accuracy on the test split, kept params, source params (every random value of the network), examined
values (random values drawn, re-randomised draws included), seconds to make the ticket (build or learning; the
dense row: training). The figure plots accuracy against kept parameters (log x), one panel per task.

    python benchmarks/learned_vs_constructed.py                       # both tasks, defaults below
    python benchmarks/learned_vs_constructed.py --tasks wine --epochs 10
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import ticketsolver as ts
from ticketsolver import data
from ticketsolver.learning import LearnConfig, learn_mask, network_of_ticket, random_network_of
from ticketsolver.models.train import evaluate_accuracy
from ticketsolver.verification.task import evaluate_task

ROOT = Path(__file__).resolve().parents[1]
#: task -> (training command, checkpoint file, dataset loader)
TASKS = {
    "digits": (["examples/train_lenet5.py"], "lenet5.pt", data.load_digits_28),
    "wine": (["examples/train_mlp.py", "--dataset", "wine"], "mlp_wine.pt", data.load_wine_standardized),
}
#: IteRand's period on CIFAR-10 in epochs: 300 iterations of 45,000 / 128 per epoch
PAPER_PERIOD_EPOCHS = 300 / (45_000 / 128)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _row(task: str, method: str, network: str, setting: str, ticket: Any, dataset: Any, seconds: float) -> dict:
    report = evaluate_task(ticket, dataset)
    sizes = ticket.sizes()
    return {
        "task": task,
        "method": method,
        "network": network,
        "setting": setting,
        "accuracy": report.accuracy,
        "loss": report.loss,
        "kept_params": sizes["kept_params"],
        "source_params": sizes["source_params"],
        "examined_values": sizes["examined_values"],
        "source_kind": sizes["source_kind"],
        "seconds": seconds,
    }


def _period(dataset: Any, batch_size: int) -> int:
    per_epoch = math.ceil(len(dataset.x_train) / batch_size)
    return max(1, round(PAPER_PERIOD_EPOCHS * per_epoch))


def _moved(start: Any, ticket: Any) -> int:
    """Mask entries that differ between the warm start's initial masks and the learned ticket's."""
    return sum(
        int((first[name] != last[name]).sum())
        for first, last in zip(start.init_masks, ticket.masks, strict=True)
        for name in first
    )


def run_task(task: str, args: argparse.Namespace, console: Console) -> list[dict[str, Any]]:
    command, file, loader = TASKS[task]
    checkpoint = args.workdir / file
    train_seconds = float("nan")
    if not checkpoint.exists():
        console.print(f"training the {task} target ...")
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, *command, "--out", str(checkpoint)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL
        )
        train_seconds = time.perf_counter() - t0
    target = ts.load_target(checkpoint)
    dataset = loader()
    rows: list[dict[str, Any]] = []
    params = sum(int(p.numel()) for p in target.module.parameters())
    rows.append(
        {
            "task": task,
            "method": "dense target",
            "network": "target",
            "setting": "trained",
            "accuracy": evaluate_accuracy(target.module, dataset.x_test, dataset.y_test),
            "loss": float("nan"),
            "kept_params": params,
            "source_params": None,
            "examined_values": None,
            "source_kind": "trained",
            "seconds": train_seconds,
        }
    )
    console.print(f"{task}: dense target {rows[-1]['accuracy']:.2%}")

    def constructed(n: int, resample: int) -> tuple[Any, float]:
        t0 = time.perf_counter()
        config = ts.BuildConfig(n=n, input_domain=dataset.input_domain, resample=resample)
        ticket = ts.build_ticket(target, config)
        return ticket, time.perf_counter() - t0

    builds: dict[int, Any] = {}
    for n in args.n:
        for resample in (0, args.resample):
            ticket, seconds = constructed(n, resample)
            if resample == 0:
                builds[n] = ticket
            label = "constructed (pure)" if resample == 0 else f"constructed (re-rand. R={resample})"
            rows.append(_row(task, label, "construction", f"n={n}", ticket, dataset, seconds))
            console.print(f"{task}: {label} n={n} {rows[-1]['accuracy']:.2%} ({seconds:.1f} s)")

    base = LearnConfig(epochs=args.epochs, keep=args.keep, seed=args.seed)
    period = args.rerand_period or _period(dataset, base.batch_size)

    def learn(network: Any, method: str, **changes: Any) -> tuple[Any, float]:
        config = base.replace(method=method, rerand_period=period, **changes)
        t0 = time.perf_counter()
        ticket = learn_mask(network, dataset, config)
        return ticket, time.perf_counter() - t0

    for width in args.widths:
        for method in ("edge-popup", "iterand"):
            network = random_network_of(
                target, width=width, init=base.init, keep=base.default_keep, scale_fan=base.scale_fan, seed=base.seed
            )
            ticket, seconds = learn(network, method, width=width)
            rows.append(_row(task, method, "target arch.", f"width {width:g}", ticket, dataset, seconds))
            console.print(f"{task}: {method} width {width:g} {rows[-1]['accuracy']:.2%} ({seconds:.1f} s)")

    if args.source_n:
        n = args.source_n
        pure = builds.get(n) or constructed(n, 0)[0]
        epochs = args.source_epochs
        for method in ("edge-popup", "iterand"):
            network = network_of_ticket(pure, use_masks=False)
            ticket, seconds = learn(network, method, keep=None, epochs=epochs)
            setting = f"n={n}, {epochs} epochs"
            rows.append(_row(task, method, "construction's source", setting, ticket, dataset, seconds))
            console.print(f"{task}: {method} on the n={n} source {rows[-1]['accuracy']:.2%} ({seconds:.1f} s)")
        for lr in args.warm_lrs:
            start = network_of_ticket(pure, use_masks=True)
            ticket, seconds = learn(start, "edge-popup", keep=None, epochs=epochs, lr=lr)
            setting = f"n={n}, lr {lr:g}, {epochs} epochs, {_moved(start, ticket):,} entries moved"
            rows.append(_row(task, "warm start", "construction's source", setting, ticket, dataset, seconds))
            console.print(f"{task}: warm start ({setting}) {rows[-1]['accuracy']:.2%} ({seconds:.1f} s)")
    return rows


def _table(rows: list[dict[str, Any]], console: Console) -> None:
    threads = torch.get_num_threads()
    title = (
        f"learned-mask vs constructed tickets ({platform.machine()}, {threads} threads); accuracy on the test split; "
        "examined = random values drawn (re-randomised draws included)"
    )
    table = Table(title=title)
    for col in (
        "task",
        "method",
        "random network",
        "setting",
        "accuracy",
        "kept",
        "source",
        "examined",
        "source kind",
        "seconds",
    ):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["task"],
            r["method"],
            r["network"],
            r["setting"],
            f"{r['accuracy']:.2%}",
            f"{r['kept_params']:,}",
            "-" if r["source_params"] is None else f"{r['source_params']:,}",
            "-" if r["examined_values"] is None else f"{r['examined_values']:,}",
            r["source_kind"],
            "-" if math.isnan(r["seconds"]) else f"{r['seconds']:.1f}",
        )
    console.print(table)


def _figure(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 5.2), squeeze=False)
    styles = {
        "dense target": ("k", "*"),
        "constructed (pure)": ("tab:blue", "o"),
        "edge-popup": ("tab:orange", "s"),
        "iterand": ("tab:green", "^"),
        "warm start": ("tab:purple", "D"),
    }
    for ax, task in zip(axes[0], tasks, strict=True):
        mine = [r for r in rows if r["task"] == task]
        for (method, network), group in _groups(mine).items():
            color, marker = styles.get(method, ("tab:red", "v"))
            hollow = network == "construction's source"
            label = method if network in ("target", "construction", "target arch.") else f"{method}, {network}"
            xs = [r["kept_params"] for r in group]
            ys = [100 * r["accuracy"] for r in group]
            ax.plot(
                xs,
                ys,
                marker=marker,
                color=color,
                linestyle="--" if hollow else "-",
                label=label,
                markerfacecolor="none" if hollow else color,
            )
        ax.set_xscale("log")
        ax.set_xlabel("kept parameters (log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{task}: accuracy against kept parameters")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["method"], r["network"]), []).append(r)
    return {key: sorted(group, key=lambda r: r["kept_params"]) for key, group in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="digits,wine")
    parser.add_argument("--n", type=_ints, default=_ints("10,20,30"), help="n of the constructed tickets")
    parser.add_argument("--resample", type=int, default=16, help="rounds of the re-randomised constructed tickets")
    parser.add_argument("--widths", type=_floats, default=_floats("0.25,0.5,1,2,4"), help="widths (learned, arch.)")
    parser.add_argument("--keep", type=float, default=0.5, help="kept fraction per layer tensor (learned)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of mask learning")
    parser.add_argument("--rerand-period", type=int, default=0, help="IteRand period in iterations (0: paper's)")
    parser.add_argument("--source-n", type=int, default=10, help="n of the construction source to learn on (0: none)")
    parser.add_argument("--source-epochs", type=int, default=10, help="epochs of learning on the construction source")
    parser.add_argument("--warm-lrs", type=_floats, default=_floats("1e-3,1e-5"), help="learning rates of warm starts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--figure", type=Path, default=ROOT / "benchmarks" / "figures" / "learned_vs_constructed.png")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--replot", type=Path, help="redraw the table and figure from a --json file of a run")
    args = parser.parse_args()
    console = Console(width=200)
    if args.replot:
        rows = json.loads(args.replot.read_text())
        for row in rows:
            row["seconds"] = float(row["seconds"])
        _table(rows, console)
        _figure(rows, args.figure)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for task in args.tasks.split(","):
        rows += run_task(task, args, console)
    _table(rows, console)
    _figure(rows, args.figure)
    console.print(f"figure -> {args.figure} (and .svg)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
