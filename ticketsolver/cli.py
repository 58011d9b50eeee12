"""The command line: a thin shell over the library.

``ticketsolver build lenet5.pt --n 20`` loads the target, builds and saves the ticket, verifies it and
prints the report; ``verify``, ``inspect``, ``export``, ``bench`` and ``demo`` do one job each. Every
ticketsolver error exits with status 1 and its message; bad usage exits with 2.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from ticketsolver.config import BuildConfig, VerifyConfig
from ticketsolver.errors import TicketSolverError

app = typer.Typer(
    name="ticketsolver",
    help="Exact strong-lottery-ticket construction: build, verify, inspect and export pruned random networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

DATA_HELP = (
    "evaluation data: 'digits' (28x28, in [0,1]), 'digits-signed' (in [-1,1]), 'digits-flat', 'wine', or an "
    ".npz/.safetensors file with x (and y)"
)


def _parse_domain(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected LO,HI such as 0,1 — got {text!r}") from None
    return lo, hi


def _load_data(spec: str | None) -> Any:
    """A Dataset (bundled) or an (x, y|None) pair from a file; None when no data is asked for. A name that is
    neither is bad usage (exit 2); a file that cannot be read is the library's error (exit 1)."""
    if spec is None:
        return None
    from ticketsolver import data

    bundled = {
        "digits": data.load_digits_28,
        "digits-signed": data.load_digits_28_signed,
        "digits-flat": data.load_digits_flat,
        "wine": data.load_wine_standardized,
    }
    if spec in bundled:
        return bundled[spec]()
    if not Path(spec).is_file():
        raise typer.BadParameter(f"--data: {spec!r} is neither a bundled dataset ({', '.join(bundled)}) nor a file")
    return data.load_arrays(spec)


@contextmanager
def _layer_progress(names: list[str]):
    """Rich progress bars, one per target layer; yields the builder's progress callback."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        tasks: dict[int, Any] = {}

        def update(pair: int, fraction: float, note: str) -> None:
            if pair not in tasks:
                label = names[pair] if pair < len(names) else f"layer {pair}"
                tasks[pair] = progress.add_task(label, total=1.0, note="")
            progress.update(tasks[pair], completed=fraction, note=note)

        yield update


@contextmanager
def _stage(message: str):
    with console.status(message):
        t0 = time.perf_counter()
        yield
    console.print(f"{message} [dim]({time.perf_counter() - t0:.1f} s)[/dim]")


def _layer_names(target: Any) -> list[str]:
    from torch import nn

    names = []
    for index, module in enumerate(target.module):
        if isinstance(module, nn.Linear):
            names.append(f"[{index}] Linear {module.in_features}->{module.out_features}")
        elif isinstance(module, nn.Conv2d):
            names.append(f"[{index}] Conv2d {module.in_channels}->{module.out_channels} k{module.kernel_size[0]}")
    return names


def _run(fn: Any) -> Any:
    """Run a command; ticketsolver's errors and the file system's exit 1 with their message, no traceback."""
    try:
        return fn()
    except (TicketSolverError, OSError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None


def _build_and_verify(
    model: Path,
    build: BuildConfig,
    verify: VerifyConfig | None,
    *,
    arch: str | None = None,
    out: Path | None = None,
    data_spec: str | None = None,
    report_path: Path | None = None,
) -> dict[str, Any]:
    """Load the target, build and save its ticket, verify it (``verify`` None: not), write the JSON report."""
    from ticketsolver import build_ticket, load_target
    from ticketsolver import verify as verify_ticket
    from ticketsolver.construction import DEFAULT_INPUT_BOX
    from ticketsolver.ticket.summary import render_ticket, ticket_summary

    with _stage(f"loaded {model}"):
        target = load_target(model, arch=arch)
    dataset = _load_data(data_spec)
    if build.input_domain is None and getattr(dataset, "input_domain", None) is not None:
        build = build.replace(input_domain=dataset.input_domain)
        console.print(f"input domain {list(build.input_domain or ())} taken from the data ({data_spec})")
    if build.input_domain is None and build.pure:
        console.print(
            f"[yellow]no input domain declared:[/yellow] the ticket is built exact over the default box "
            f"{list(DEFAULT_INPUT_BOX)} (standardised features); pass --input-domain LO,HI for another"
        )
    t0 = time.perf_counter()
    with _layer_progress(_layer_names(target)) as progress:
        ticket = build_ticket(target, build, progress=progress)
    build_seconds = time.perf_counter() - t0
    out = out or model.with_suffix(f".n{build.n}.ticket")
    ticket.save(out)
    size = out.stat().st_size
    console.print(f"built in {build_seconds:.1f} s -> [bold]{out}[/bold] ({size / 1024:.1f} KiB)")
    render_ticket(ticket, console, size)
    result: dict[str, Any] = {"ticket": ticket_summary(ticket, size), "build_seconds": build_seconds}
    if verify is not None:
        t1 = time.perf_counter()
        with _stage("verified"):
            report = verify_ticket(target, ticket, verify, data=dataset)
        result["verify_seconds"] = time.perf_counter() - t1
        report.render(console)
        result["verification"] = report.to_dict()
    report_path = report_path or out.with_suffix(".report.json")
    report_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    console.print(f"report -> {report_path}")
    return result


@app.command()
def build(
    model: Annotated[
        Path, typer.Argument(help="checkpoint: state_dict (.pt/.pth/.safetensors) or torch.export program (.pt2)")
    ],
    n: Annotated[int, typer.Option(help="random hidden units per block (candidate coefficients per weight)")] = 20,
    seed: Annotated[int, typer.Option(help="seed of the random source")] = 0,
    solver: Annotated[str, typer.Option(help="subset-sum backend: auto, mitm, gurobi, cpsat, cbc")] = "auto",
    input_domain: Annotated[
        str | None,
        typer.Option(help="box of the model input, LO,HI (e.g. 0,1); the ticket is exact over it (default -6,6)"),
    ] = None,
    resample: Annotated[
        int,
        typer.Option(
            help="opt-in re-randomisation (IteRand): redraw weights above --tolerance up to R times; the ticket "
            "is then 'rerandomized', not a pruning of one i.i.d. network (default 0: a pure source)"
        ),
    ] = 0,
    tolerance: Annotated[
        float | None,
        typer.Option(help="pure: a subset sum within it is accepted (default 1e-8); --resample: redraw above (1e-7)"),
    ] = None,
    block_draws: Annotated[
        int | None,
        typer.Option(help="with --resample, construction I: draws of each input block's U rows (default 8)"),
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="built-in architecture of a state_dict (lenet5, mlp); inferred by default")
    ] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="ticket file (default MODEL.nN.ticket)")] = None,
    data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="verify the ticket after building")] = True,
    report: Annotated[Path | None, typer.Option(help="JSON report path (default TICKET.report.json)")] = None,
) -> None:
    """Build the ticket of a trained network, save it, verify it and print the report."""
    domain = _parse_domain(input_domain)

    def run() -> None:
        config = BuildConfig(
            n=n,
            seed=seed,
            solver=solver,
            input_domain=domain,
            resample=resample,
            tolerance=tolerance,
            block_draws=block_draws,
        )
        checks = VerifyConfig() if verify else None
        _build_and_verify(model, config, checks, arch=arch, out=out, data_spec=data, report_path=report)

    _run(run)


@app.command("verify")
def verify_cmd(
    ticket: Annotated[Path, typer.Argument(help="ticket file")],
    against: Annotated[Path, typer.Option(help="the target checkpoint the ticket was built for")],
    data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
    arch: Annotated[str | None, typer.Option(help="built-in architecture of a state_dict")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda when present, else cpu)")] = None,
    input_box: Annotated[
        str | None,
        typer.Option(
            help="box LO,HI of the random inputs, the worst-case search and the certified bound (default: the "
            "ticket's declared build box, else the data's range, else the ticket's default box)"
        ),
    ] = None,
) -> None:
    """Verify a ticket against its target on data and random inputs; print the report."""
    box = _parse_domain(input_box)

    def run() -> None:
        from ticketsolver import Ticket, load_target
        from ticketsolver import verify as verify_ticket

        target = load_target(against, arch=arch)
        config = VerifyConfig(input_box=box)
        report = verify_ticket(target, Ticket.load(ticket), config, data=_load_data(data), device=device)
        report.render(console)
        if json_out:
            report.to_json(json_out)
            console.print(f"report -> {json_out}")

    _run(run)


@app.command()
def inspect(
    ticket: Annotated[Path, typer.Argument(help="ticket file")],
    json_out: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Sizes (target, random source, kept parameters), source kind (iid or rerandomized) and examined random
    values, and per-layer construction and errors."""

    def run() -> None:
        from ticketsolver import Ticket
        from ticketsolver.ticket.summary import render_ticket, ticket_summary

        t = Ticket.load(ticket)
        size = ticket.stat().st_size
        if json_out:
            console.print_json(json.dumps(ticket_summary(t, size), default=str))
        else:
            render_ticket(t, console, size)

    _run(run)


@app.command()
def export(
    ticket: Annotated[Path, typer.Argument(help="ticket file")],
    fmt: Annotated[str, typer.Option("--format", help="onnx or safetensors")],
    out: Annotated[Path, typer.Option("-o", "--out", help="output file")],
) -> None:
    """Export the pruned network: ONNX (input 'input', output 'output') or safetensors (pruned, source, mask)."""

    def run() -> None:
        from ticketsolver import Ticket
        from ticketsolver.ticket import EXPORT_FORMATS, export_ticket

        if fmt not in EXPORT_FORMATS:
            raise typer.BadParameter(f"--format must be one of {', '.join(EXPORT_FORMATS)}")
        with _stage(f"exported {ticket} as {fmt}"):
            path = export_ticket(Ticket.load(ticket), out, fmt)
        console.print(f"{fmt} -> {path} ({path.stat().st_size / 1024:.1f} KiB)")

    _run(run)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="small sizes only (a smoke run)")] = False,
    backends: Annotated[str, typer.Option(help="comma-separated backends to compare")] = "mitm,gurobi,cpsat,cbc",
) -> None:
    """Compare the subset-sum backends on the same seeded problems and run the paper workloads."""
    from ticketsolver.bench import run_solver_benchmark

    _run(lambda: run_solver_benchmark(backends.split(","), quick=quick, console=console))


@app.command()
def demo(
    n: Annotated[int, typer.Option(help="random hidden units per block (da Cunha et al. used 30 for LeNet5)")] = 30,
    workdir: Annotated[Path, typer.Option(help="where lenet5.pt, the ticket and the report go")] = Path("runs/demo"),
    retrain: Annotated[bool, typer.Option(help="train LeNet5 again even if workdir/lenet5.pt exists")] = False,
    resample: Annotated[int, typer.Option(help="opt-in re-randomisation rounds (IteRand); 0 = a pure source")] = 0,
) -> None:
    """Train LeNet5 on the bundled digits (or reuse it), build its ticket at n, verify, print the report."""

    def run() -> None:
        import torch

        from ticketsolver.data import load_digits_28
        from ticketsolver.models import LeNet5, train_classifier

        workdir.mkdir(parents=True, exist_ok=True)
        checkpoint = workdir / "lenet5.pt"
        if retrain or not checkpoint.exists():
            dataset = load_digits_28()
            torch.manual_seed(0)
            model = LeNet5()
            with _stage("trained LeNet5 on scikit-learn digits (28x28)"):
                metrics = train_classifier(model, dataset, epochs=10, lr=3e-3, seed=0)
            console.print(f"target test accuracy {metrics['test_accuracy']:.2%}")
            torch.save(model.state_dict(), checkpoint)
        else:
            console.print(f"reusing {checkpoint} (--retrain to train again)")
        _build_and_verify(
            checkpoint,
            BuildConfig(n=n, input_domain=(0.0, 1.0), resample=resample),
            VerifyConfig(),
            out=workdir / f"lenet5.n{n}.ticket",
            data_spec="digits",
        )

    _run(run)


def _plugin_commands() -> None:
    """Add the commands other installed packages contribute (entry-point group ``ticketsolver.commands``):
    the service adds ``serve``. The library itself never imports the service."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="ticketsolver.commands"):
        if any(command.name == entry.name for command in app.registered_commands):
            continue
        try:
            command = entry.load()
        except ImportError as exc:  # the package is there but an extra it needs is not
            _missing_extra(entry.name, exc)
            continue
        app.command(name=entry.name)(command)


def _missing_extra(name: str, exc: ImportError) -> None:
    def command() -> None:
        err_console.print(f"[red]error:[/red] `{name}` needs the api extra: pip install 'ticketsolver[api]' ({exc})")
        raise typer.Exit(1)

    command.__doc__ = f"(unavailable: {exc})"
    app.command(name=name)(command)


def main() -> None:
    _plugin_commands()
    app()


if __name__ == "__main__":
    main()
