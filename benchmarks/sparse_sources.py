"""Erdős–Rényi sparse sources: dense-and-narrow against sparse-and-wide at equal source nonzeros, per policy.

Gadhikar, Mukherjee and Burkholz (ICML 2023) show that strong tickets exist inside Erdős–Rényi sparse random
networks, and that a source of density p must be wider by about 1/log(1/(1-p)) to keep a dense source's error.
This measures that trade-off for ticketsolver's pure construction (L) on the example LeNet5 (8x8 digits upsampled
to 28x28, in [0, 1]) and MLP (64 -> 500 -> 10 on the 8x8 digits as features in [0, 1]):

- ``dense``: a dense source of width n (each --n);
- ``equal nonzeros``: a sparse source of width n' = n/p and density p (about the dense source's nonzeros), for
  every --policies and --densities, at the first --n;
- ``search``: for each of --search-densities, wider sparse sources (n' = n/p times 1.5, 2.25, ... up to
  --max-width) until one reaches the error of the dense source at the first --n. The width factor n'/n that reaches
  it (log-error interpolated between the two widths around it; "> x" when none up to the widest tried does) stands
  beside the paper's 1/log(1/(1-p)). A weight's coefficient needs both its U and its V entry, so a weight has about
  0.9·n'·p² usable coefficients; at p = 0.2 even --max-width = 64 leaves ~2.3, so by default only p = 0.5 is
  searched and p = 0.2 reports "> 1/p".

Columns: max relative output error on the test split (float64, da Cunha's |f - g| max over outputs / max |f|),
max weight error (|w - subset sum|), usable coefficients per weight (mean over the network, least of any weight),
source nonzeros (ER nonzeros; dense: every entry), kept params, build seconds. A figure (error against source
nonzeros, and against the width n', log axes) is written to --figure (PNG and SVG); --json keeps the rows, and
--replot redraws table and figure from them.

    python benchmarks/sparse_sources.py                                   # both targets, n = 10, 20, p = 0.5, 0.2
    python benchmarks/sparse_sources.py --targets mlp --policies uniform --json runs/bench/sparse_mlp.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import ticketsolver as ts
from ticketsolver import data
from ticketsolver.config import DENSITY_POLICIES, MAX_N

ROOT = Path(__file__).resolve().parents[1]
#: name -> (training command, checkpoint file, dataset loader)
TARGETS = {
    "lenet5": (["examples/train_lenet5.py"], "lenet5.pt", data.load_digits_28),
    "mlp": (["examples/train_mlp.py"], "mlp.pt", data.load_digits_flat),
    "mlp-wine": (["examples/train_mlp.py", "--dataset", "wine"], "mlp_wine.pt", data.load_wine_standardized),
}
#: verification of the data only, in float64: the one number the trade-off is read from
VERIFY = ts.VerifyConfig(n_random=0, worst_case_starts=0, certify=False, dtypes=["float64"], layer_check_inputs=0)
#: widths tried by the search, in units of n/p
SEARCH_STEPS = 1.5


def predicted_factor(p: float) -> float:
    """The paper's width factor for density p: 1/log(1/(1 - p))."""
    return 1.0 / math.log(1.0 / (1.0 - p))


def _target(name: str, workdir: Path, console: Console) -> tuple[Any, Any]:
    command, filename, loader = TARGETS[name]
    path = workdir / filename
    if not path.exists():
        console.print(f"training {name} -> {path}")
        subprocess.run([sys.executable, *command, "--out", str(path)], cwd=ROOT, check=True)
    return ts.load_target(path), loader()


def measure(name: str, target: Any, dataset: Any, n: int, density: float, policy: str, role: str) -> dict[str, Any]:
    """Build a pure ticket at width n from a source of this density and policy; verify it on the test split."""
    config = ts.BuildConfig(n=n, input_domain=dataset.input_domain, source_density=density, density_policy=policy)
    t0 = time.perf_counter()
    ticket = ts.build_ticket(target, config)
    seconds = time.perf_counter() - t0
    report = ts.verify(target, ticket, VERIFY, data=dataset)
    pairs, sizes = ticket.build["pairs"], ticket.sizes()
    weights = sum(p["weights"] for p in pairs)
    return {
        "target": name,
        "role": role,
        "n": n,
        "density": density,
        "policy": policy if density < 1.0 else "dense",
        "rel_error": report.sections["data"]["float64"].relative_error_max,
        "weight_error_max": max(p["weight_error_max"] for p in pairs),
        "usable_mean": sum(p["usable_mean"] * p["weights"] for p in pairs) / weights,
        "usable_min": min(p["usable_min"] for p in pairs),
        "source_params": sizes["source_params"],
        "kept_params": sizes["kept_params"],
        "seconds": seconds,
    }


class Results:
    """The rows of a run, written to ``path`` after each one; with ``reuse``, rows already in ``path`` (same target,
    width, density, policy) are taken instead of measured again, so an interrupted run continues."""

    def __init__(self, path: Path | None, reuse: bool) -> None:
        self.path, self.rows = path, []
        old = json.loads(path.read_text()) if reuse and path is not None and path.exists() else []
        self.old: dict[tuple[Any, ...], dict[str, Any]] = {_key(r): r for r in old}

    def add(self, row: dict[str, Any]) -> dict[str, Any]:
        self.rows.append(row)
        if self.path is not None:
            self.path.write_text(json.dumps(self.rows, indent=2) + "\n")
        return row


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return r["target"], r["n"], r["density"], r["policy"]


def run_target(name: str, args: argparse.Namespace, results: Results, console: Console) -> None:
    target, dataset = _target(name, args.workdir, console)

    def add(n: int, p: float, policy: str, role: str) -> dict[str, Any]:
        key = (name, n, p, policy if p < 1.0 else "dense")
        row = results.add(results.old.get(key) or measure(name, target, dataset, n, p, policy, role))
        console.print(_line(row))
        return row

    reference = [add(n, 1.0, "uniform", "dense") for n in args.n][0]["rel_error"]
    n = args.n[0]
    for p in args.densities:
        for policy in args.policies:
            width = round(n / p)
            while width <= args.max_width:
                row = add(width, p, policy, "equal nonzeros" if width == round(n / p) else "search")
                if row["rel_error"] <= reference or p not in args.search_densities or width == args.max_width:
                    break
                width = min(args.max_width, round(width * SEARCH_STEPS))


def _line(r: dict[str, Any]) -> str:
    return (
        f"  {r['target']} n={r['n']} p={r['density']} {r['policy']}: rel {r['rel_error']:.2e}, "
        f"w {r['weight_error_max']:.1e}, nonzeros {r['source_params']:,}, {r['seconds']:.1f} s"
    )


def width_factors(rows: list[dict[str, Any]], n: int) -> dict[tuple[str, float, str], tuple[float | None, float]]:
    """(target, p, policy) -> (factor n'/n reaching the dense error at n, or None; largest factor tried)."""
    out: dict[tuple[str, float, str], tuple[float | None, float]] = {}
    for target in dict.fromkeys(r["target"] for r in rows):
        dense = [r for r in rows if r["target"] == target and r["policy"] == "dense" and r["n"] == n]
        if not dense:
            continue
        goal = dense[0]["rel_error"]
        for key in dict.fromkeys((r["density"], r["policy"]) for r in rows if r["target"] == target):
            if key[1] == "dense":
                continue
            tried = sorted(
                (r for r in rows if r["target"] == target and (r["density"], r["policy"]) == key), key=lambda r: r["n"]
            )
            factor = None
            for below, above in zip([None, *tried], tried, strict=False):
                if above["rel_error"] <= goal:
                    if below is None:
                        factor = above["n"] / n  # the first width tried already reaches it: an upper bound
                    else:  # log-error linear in the width between the two widths around the goal
                        lo, hi = math.log(below["rel_error"]), math.log(above["rel_error"])
                        t = (lo - math.log(goal)) / (lo - hi) if lo != hi else 1.0
                        factor = (below["n"] + t * (above["n"] - below["n"])) / n
                    break
            out[(target, *key)] = (factor, tried[-1]["n"] / n)
    return out


def _table(rows: list[dict[str, Any]], n: int, console: Console) -> None:
    table = Table(
        title=f"Erdős–Rényi sparse sources (pure, construction L): dense width n against sparse width n' = n/p and "
        f"beyond; rel err = max relative output error on the test split (float64); factor = n'/{n} reaching the "
        f"dense n = {n} error"
    )
    for col in ("target", "source", "policy", "n'", "role", "rel err", "max w err", "usable mean (min)"):
        table.add_column(col, justify="right")
    for col in ("source nonzeros", "kept", "build s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["target"],
            "dense" if r["density"] >= 1.0 else f"p = {r['density']:g}",
            r["policy"],
            str(r["n"]),
            r["role"],
            f"{r['rel_error']:.2e}",
            f"{r['weight_error_max']:.1e}",
            f"{r['usable_mean']:.1f} ({r['usable_min']})",
            f"{r['source_params']:,}",
            f"{r['kept_params']:,}",
            f"{r['seconds']:.1f}",
        )
    console.print(table)
    factors = Table(title=f"width factor a sparse source needs to reach the dense n = {n} error, beside the paper's")
    for col in ("target", "p", "policy", "measured n'/n", "paper 1/log(1/(1-p))", "widest tried"):
        factors.add_column(col, justify="right")
    for (target, p, policy), (factor, widest) in width_factors(rows, n).items():
        measured = f"> {widest:.2f}" if factor is None else f"{factor:.2f}"
        factors.add_row(target, f"{p:g}", policy, measured, f"{predicted_factor(p):.2f}", f"{widest:.2f}")
    console.print(factors)


def _figure(rows: list[dict[str, Any]], n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(2, len(targets), figsize=(6.5 * len(targets), 9.5), squeeze=False)
    colors = dict(zip(DENSITY_POLICIES, ("tab:blue", "tab:orange", "tab:green", "tab:purple"), strict=True))
    markers = {0.5: "o", 0.2: "s"}
    for column, target in enumerate(targets):
        mine = [r for r in rows if r["target"] == target]
        dense = sorted((r for r in mine if r["policy"] == "dense"), key=lambda r: r["n"])
        goal = next((r["rel_error"] for r in dense if r["n"] == n), None)
        for row_index, x_key in enumerate(("source_params", "n")):
            ax = axes[row_index][column]
            ax.plot(
                [r[x_key] for r in dense], [r["rel_error"] for r in dense], "k-*", markersize=10, label="dense source"
            )
            for (p, policy), group in _series(mine).items():
                ax.plot(
                    [r[x_key] for r in group],
                    [r["rel_error"] for r in group],
                    marker=markers.get(p, "^"),
                    color=colors.get(policy, "tab:red"),
                    linestyle="-" if p == 0.5 else "--",
                    label=f"p = {p:g}, {policy}",
                )
            if goal is not None:
                ax.axhline(goal, color="grey", linewidth=0.8, linestyle=":", label=f"dense n = {n} error")
            ax.set_yscale("log")
            ax.set_xscale("log")
            ax.set_ylabel("max relative output error on the test split")
            ax.grid(True, which="both", alpha=0.3)
            if x_key == "source_params":
                ax.set_xlabel("source nonzeros (log scale)")
                ax.set_title(f"{target}: error against source nonzeros")
            else:
                widths = sorted({r["n"] for r in mine})
                ax.set_xticks(widths, [str(w) for w in widths])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                ax.set_xlabel("width n' (hidden units per block, log scale)")
                ax.set_title(f"{target}: error against width; the paper's n/log(1/(1-p)) marked")
                for p in sorted({r["density"] for r in mine if r["density"] < 1.0}):
                    ax.axvline(n * predicted_factor(p), color="grey", linewidth=0.8, linestyle="-.")
                    ax.annotate(f"paper, p = {p:g}", (n * predicted_factor(p), goal or 1.0), fontsize=7, rotation=90)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)


def _series(rows: list[dict[str, Any]]) -> dict[tuple[float, str], list[dict[str, Any]]]:
    out: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["policy"] != "dense":
            out.setdefault((r["density"], r["policy"]), []).append(r)
    return {key: sorted(group, key=lambda r: r["n"]) for key, group in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--n", type=lambda s: [int(v) for v in s.split(",")], default=[10, 20], help="dense widths")
    parser.add_argument("--densities", type=lambda s: [float(v) for v in s.split(",")], default=[0.5, 0.2])
    parser.add_argument("--policies", type=lambda s: s.split(","), default=list(DENSITY_POLICIES))
    parser.add_argument("--max-width", type=int, default=MAX_N, help="widest sparse source the search tries")
    parser.add_argument(
        "--search-densities",
        type=lambda s: [float(v) for v in s.split(",") if v.strip()],
        default=[0.5],
        help="densities whose width factor is searched ('' for none)",
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--figure", type=Path, default=ROOT / "benchmarks" / "figures" / "sparse_sources.png")
    parser.add_argument("--json", type=Path, help="write the rows here (after each one)")
    parser.add_argument("--reuse", action="store_true", help="take rows already in --json instead of measuring")
    parser.add_argument("--replot", type=Path, help="redraw the table and figure from a --json file of a run")
    args = parser.parse_args()
    console = Console(width=200)
    if args.replot:
        rows = json.loads(args.replot.read_text())
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        results = Results(args.json, args.reuse)
        for name in args.targets.split(","):
            run_target(name, args, results, console)
        rows = results.rows
    _table(rows, args.n[0], console)
    _figure(rows, args.n[0], args.figure)
    console.print(f"figure -> {args.figure} (and .svg)")


if __name__ == "__main__":
    main()
