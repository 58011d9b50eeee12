"""What ``ticketsolver inspect`` shows: sizes and, per layer, construction, shapes, densities, kept counts, usable
coefficients per weight (mean and least), errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ticketsolver.construction import CONSTRUCTIONS, PairLayout
from ticketsolver.ticket.artifact import Ticket
from ticketsolver.ticket.layer import LayerLayout

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["density_cell", "render_ticket", "ticket_summary"]

#: a row's construction as the table shows it: O, I, L, and C for a depth-L+1 stage that reads and makes copies
_LETTERS: dict[str, str] = {**CONSTRUCTIONS, "copies": "C"}


def _graph_line(ticket: Ticket) -> str:
    """For a graph ticket: its units by kind and the norms folded into them (the rows below are its pairs)."""
    graph = ticket.graph
    if graph is None:
        return ""
    kinds: dict[str, int] = {}
    for unit in graph.units:
        kinds[unit.kind] = kinds.get(unit.kind, 0) + 1
    folded = sum(len(unit.folded) for unit in graph.units)
    described = ", ".join(f"{count} {kind}" for kind, count in kinds.items())
    return (
        f"\ngraph: {len(graph.units)} units ({described}) of {len(graph.nodes)} nodes, {len(ticket.layouts)} pairs "
        f"(one per group of a grouped conv); {folded} BatchNorm folded; the rows below are the pairs"
    )


def ticket_summary(ticket: Ticket, file_bytes: int | None = None) -> dict[str, Any]:
    """JSON-ready summary: sizes (target / source / kept / pruned, source kind, examined values), per-layer
    facts, solver statistics."""
    pairs = ticket.build.get("pairs", [])
    plans = ticket.copy_plans()
    layers = []
    for k, layout in enumerate(ticket.layouts):
        stats = pairs[k] if k < len(pairs) else {}
        if isinstance(layout, LayerLayout) and plans is not None:
            layers.append(_stage_row(ticket, k, layout, plans[k], stats))
            continue
        if isinstance(layout, LayerLayout):
            layers.append(_layer_row(ticket, k, layout))
            continue
        layers.append(
            {
                "pair": k,
                "kind": layout.kind,
                "construction": layout.construction,
                "n": layout.n,
                "target_shape": [layout.d_out, layout.d_in],
                "hidden": layout.hidden,
                "densities": {name: layout.density(name) for name in layout.sparse_names},
                "source_params": ticket.source_params(k),
                "kept_params": int(sum(m.sum() for m in ticket.masks[k].values())),
                "source_kind": "rerandomized" if ticket.draws[k].any() else "iid",
                "examined_values": ticket.examined_values(k),
                "scales": layout.scales,
                **{
                    key: stats.get(key)
                    for key in ("weight_error_max", "weight_error_mean", "usable_mean", "usable_min", "redrawn_units")
                },
            }
        )
    summary: dict[str, Any] = {
        "seed": ticket.seed,
        "input_shape": list(ticket.input_shape),
        "input_domain": ticket.input_domain,
        "sizes": ticket.sizes(),
        "file_bytes": file_bytes,
        "solver": ticket.build.get("solver"),
        "build_seconds": ticket.build.get("seconds"),
        "config": ticket.build.get("config"),
        "depth": ticket.depth,
        "random_layers": ticket.random_layers(),
        "layers": layers,
    }
    if ticket.learned:
        keys = ("method", "task", "rerandomization", "random_network")
        summary["learned"] = {key: ticket.build.get(key) for key in keys}
    return summary


def _stage_row(ticket: Ticket, k: int, layout: LayerLayout, plan: Any, stats: dict[str, Any]) -> dict[str, Any]:
    """A later stage of a depth-L+1 ticket: one random layer that reads n copies and makes n copies."""
    kept = int(sum(m.sum() for m in ticket.masks[k].values()))
    return {
        "pair": k,
        "unit": "layer",
        "kind": layout.kind,
        "construction": "copies",
        "n": plan.copies_in,
        "target_shape": [plan.d_out, plan.d_in],
        "hidden": None,
        "copies": {"in": plan.copies_in, "out": plan.copies_out, "constants_in": plan.constants_in},
        "densities": {"weight": 1.0},
        "source_params": layout.source_params(),
        "kept_params": kept,
        "source_kind": "rerandomized" if ticket.draws[k].any() else "iid",
        "examined_values": ticket.examined_values(k),
        "scales": {"weight": layout.weight.scale},
        **{
            key: stats.get(key)
            for key in ("weight_error_max", "weight_error_mean", "usable_mean", "usable_min", "redrawn_units")
        },
    }


def _layer_row(ticket: Ticket, k: int, layout: LayerLayout) -> dict[str, Any]:
    """A learned-mask ticket's random layer: shape, law, kept counts, entries redrawn by IteRand."""
    kept = int(sum(m.sum() for m in ticket.masks[k].values()))
    return {
        "pair": k,
        "unit": "layer",
        "kind": layout.kind,
        "construction": "learned",
        "n": None,
        "target_shape": [layout.d_out, layout.d_in],
        "hidden": None,
        "source_params": layout.source_params(),
        "kept_params": kept,
        "kept_fraction": kept / layout.source_params(),
        "source_kind": "rerandomized" if ticket.draws[k].any() else "iid",
        "examined_values": ticket.examined_values(k),
        "scales": {name: stream.scale for name, stream in layout.streams().items()},
        "laws": {name: stream.law for name, stream in layout.streams().items()},
        "redrawn_entries": int((ticket.draws[k] > 0).sum()),
        "weight_error_max": None,
        "weight_error_mean": None,
        "usable_mean": None,
        "usable_min": None,
        "redrawn_units": None,
    }


def render_ticket(ticket: Ticket, console: Console | None = None, file_bytes: int | None = None) -> None:
    """Print the sizes and a per-layer table."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    if ticket.learned:
        _render_learned(ticket, console, file_bytes)
        return
    s = ticket.sizes()
    extra = f", file {file_bytes / 1024:.1f} KiB" if file_bytes is not None else ""
    console.print(
        f"[bold]ticket[/bold]: seed {ticket.seed}, {len(ticket.layouts)} target layers -> "
        f"{ticket.random_layers()} random layers (depth {ticket.depth}){extra}\n"
        f"params: target {s['target_params']:,} | random source {s['source_params']:,} | "
        f"kept {s['kept_params']:,} ({s['kept_params'] / max(s['source_params'], 1):.2%} of the source; "
        f"the rest is pruned to 0)\n"
        f"{_source_line(s['source_kind'], s['examined_values'], s['source_params'])}"
        f"{_sparse_line(ticket)}{_graph_line(ticket)}"
    )
    sparse = any(isinstance(layout, PairLayout) and layout.sparse for layout in ticket.layouts)
    redrawn = s["source_kind"] == "rerandomized"
    # columns that would say nothing are left out: densities of a dense source (all 1), redraws of a pure one (all 0)
    notes = ["L = input blocks with kept offsets, O/I = output/input blocks"]
    notes += ["C = one random layer reading and making n copies (depth L+1)"] if ticket.depth == "L+1" else []
    notes += ["density = ER density of U/V"] if sparse else []
    notes += ["usable = coefficients per weight, mean (least)", "err = |w - subset sum| per weight"]
    notes += ["redrawn = units kept at a later draw"] if redrawn else []
    table = Table(title="layers: " + "; ".join(notes), box=box.SIMPLE_HEAD)
    columns = ["#", "", "n", "target", *(["density"] if sparse else []), "kept/source", "usable", "max err"]
    for col in [*columns, "mean err", *(["redrawn"] if redrawn else [])]:
        table.add_column(col, justify="right", no_wrap=True)
    for row in ticket_summary(ticket)["layers"]:
        cells = [
            str(row["pair"]),
            _LETTERS[row["construction"]],
            str(row["n"]),
            "x".join(map(str, row["target_shape"])),
        ]
        if sparse:
            cells.append(density_cell(row["densities"]))
        cells += [
            f"{_si(row['kept_params'])}/{_si(row['source_params'])}",
            _fmt(row["usable_mean"], ".1f") + ("" if row["usable_min"] is None else f" ({row['usable_min']})"),
            _fmt(row["weight_error_max"], ".1e"),
            _fmt(row["weight_error_mean"], ".1e"),
        ]
        if redrawn:
            cells.append(_si(row["redrawn_units"]) if row["redrawn_units"] is not None else "-")
        table.add_row(*cells)
    console.print(table)


def _render_learned(ticket: Ticket, console: Console, file_bytes: int | None) -> None:
    """A learned-mask ticket: its method, task accuracy, sizes and a per-layer table."""
    from rich import box
    from rich.table import Table

    s, build = ticket.sizes(), ticket.build
    task = build.get("task") or {}
    extra = f", file {file_bytes / 1024:.1f} KiB" if file_bytes is not None else ""
    accuracy = task.get("test_accuracy")
    console.print(
        f"[bold]learned-mask ticket[/bold] ({build.get('method', '?')}, random network: "
        f"{build.get('random_network', '?')}): seed {ticket.seed}, {len(ticket.layouts)} random layers{extra}\n"
        f"task: {task.get('data', '?')}, test accuracy "
        f"{'-' if accuracy is None else f'{accuracy:.2%}'} on {task.get('examples', '?')} examples\n"
        f"params: target {s['target_params']:,} | random source {s['source_params']:,} | "
        f"kept {s['kept_params']:,} ({s['kept_params'] / max(s['source_params'], 1):.2%} of the source)\n"
        f"{_source_line(s['source_kind'], s['examined_values'], s['source_params'], knowing='the task')}"
    )
    table = Table(title="random layers: mask learned (top-K of the scores per tensor)", box=box.SIMPLE_HEAD)
    for col in ("#", "kind", "shape", "law", "kept/source", "kept", "redrawn"):
        table.add_column(col, justify="right", no_wrap=True)
    for row in ticket_summary(ticket)["layers"]:
        table.add_row(
            str(row["pair"]),
            row["kind"],
            "x".join(map(str, row["target_shape"])),
            row["laws"]["weight"],
            f"{_si(row['kept_params'])}/{_si(row['source_params'])}",
            f"{row['kept_fraction']:.1%}",
            _si(row["redrawn_entries"]),
        )
    console.print(table)


def _source_line(kind: str, examined: int | None, source: int, knowing: str = "the target") -> str:
    """What the random source is, and how many random values the build drew and compared to get it."""
    if kind == "iid":
        law = "one i.i.d. random network, every tensor its law at draw 0"
        return f"source: iid ({law}); examined {examined:,} random values (= the source)"
    among = "an unrecorded number of" if examined is None else f"{examined:,} ({examined / max(source, 1):.2f}x source)"
    return f"source: rerandomized (IteRand-style: values chosen among {among} random draws knowing {knowing})"


def density_cell(densities: dict[str, float]) -> str:
    """A pair's ER densities of U and V as the inspect table shows them: ``0.52/0.4`` (``1``: both dense)."""
    if set(densities.values()) == {1.0}:
        return "1"
    return "/".join(f"{d:.2g}" for d in densities.values())


def _sparse_line(ticket: Ticket) -> str:
    """For an Erdős–Rényi sparse source: its overall density, policy, and what the counts mean; else nothing."""
    if not any(isinstance(layout, PairLayout) and layout.sparse for layout in ticket.layouts):
        return ""
    config = ticket.build.get("config") or {}
    return (
        f"\nsparse source: Erdős–Rényi, density {config.get('source_density', '?')} "
        f"({config.get('density_policy', '?')} policy); an entry of U or V exists only inside its ER mask (drawn "
        "from the seed), the random source counts those that exist, and every kept entry is one of them"
    )


def _si(value: int) -> str:
    """1234 -> 1.2k, 1250000 -> 1.25M: counts that fit a narrow column."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.3g}{unit}"
    return str(value)


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)
