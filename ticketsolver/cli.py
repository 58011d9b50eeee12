"""The command line: a thin shell over the library.

``ticketsolver build lenet5.pt --n 20`` loads the target, builds and saves the ticket, verifies it and
prints the report; ``ticketsolver learn-mask mlp --data wine --keep 0.5`` learns a mask over a frozen random
network for a task instead (edge-popup, IteRand); ``verify`` (against a target, or on a task), ``inspect``,
``export``, ``bench`` and ``demo`` do one job each; ``sweep`` builds and verifies a grid of settings over n
(results.csv and figures). Every ticketsolver error exits with status 1 and its message; bad usage exits with 2.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ticketsolver.config import BuildConfig, VerifyConfig
from ticketsolver.errors import ConfigError, TicketSolverError

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


def _usage_error(message: str) -> typer.BadParameter:
    """Bad usage that is no single option's value (a combination of options): exit 2 with the message."""
    return typer.BadParameter(message)


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

    bundled: dict[str, Callable[[], Any]] = {
        "digits": data.load_digits_28,
        "digits-signed": data.load_digits_28_signed,
        "digits-flat": data.load_digits_flat,
        "wine": data.load_wine_standardized,
        "digits32-rgb": data.load_digits_32_rgb,
        "python-text": data.load_python_text_windows,
    }
    if spec in bundled:
        return bundled[spec]()
    if not Path(spec).is_file():
        raise typer.BadParameter(f"--data: {spec!r} is neither a bundled dataset ({', '.join(bundled)}) nor a file")
    return data.load_arrays(spec)


@contextmanager
def _layer_progress(names: list[str]):
    """Rich progress bars, one per target layer, with elapsed time and ETA; yields the builder's progress callback."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
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
    return [label for label, _ in target.layers()]


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
    graph = getattr(target, "spec", None)
    if build.input_domain is None and build.pure and not (graph is not None and graph.tokens):
        where = (
            "its units' boxes are observed on calibration inputs of the default box"
            if graph is not None
            else "the ticket is built exact over the default box"
        )
        console.print(
            f"[yellow]no input domain declared:[/yellow] {where} {list(DEFAULT_INPUT_BOX)} (standardised features); "
            "pass --input-domain LO,HI for another"
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
        typer.Option(
            help="pure: a subset sum within it is accepted (default 1e-8; --depth L+1: 1e-6); --resample: redraw "
            "above (1e-7)"
        ),
    ] = None,
    block_draws: Annotated[
        int | None,
        typer.Option(help="with --resample, construction I: draws of each input block's U rows (default 8)"),
    ] = None,
    source_density: Annotated[
        float,
        typer.Option(
            help="density P in (0, 1] of an Erdos-Renyi sparse random source: each weight entry of a random layer "
            "exists with its layer's density and the ticket's masks lie inside (default 1: dense)"
        ),
    ] = 1.0,
    density_policy: Annotated[
        str,
        typer.Option(help="how a sparse source's layers share --source-density: uniform, erk, balanced, pyramidal"),
    ] = "uniform",
    depth: Annotated[
        str,
        typer.Option(
            help="2L: two random layers per target layer (pairs); L+1: one per target layer plus a first layer of "
            "input copies (Burkholz 2022), far wider; pure source only"
        ),
    ] = "2L",
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
            source_density=source_density,
            density_policy=density_policy,  # type: ignore[arg-type]  # BuildConfig validates the name
            depth=depth,  # type: ignore[arg-type]  # BuildConfig validates the name
        )
        checks = VerifyConfig() if verify else None
        _build_and_verify(model, config, checks, arch=arch, out=out, data_spec=data, report_path=report)

    _run(run)


@app.command("verify")
def verify_cmd(
    ticket: Annotated[Path, typer.Argument(help="ticket file")],
    against: Annotated[
        Path | None,
        typer.Option(
            help="the target checkpoint a constructed ticket was built for; without it the ticket is measured on "
            "its task (--data with labels)"
        ),
    ] = None,
    data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
    arch: Annotated[str | None, typer.Option(help="built-in architecture of a state_dict (with --against)")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the report as JSON")] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default: cuda when present, else cpu)")] = None,
    input_box: Annotated[
        str | None,
        typer.Option(
            help="with --against: box LO,HI of the random inputs, the worst-case search and the certified bound "
            "(default: the ticket's declared build box, else the data's range, else the ticket's default box)"
        ),
    ] = None,
    data_limit: Annotated[
        int | None, typer.Option(help="with --against: the first N inputs of the data only (default: all)", min=1)
    ] = None,
    random: Annotated[
        int | None, typer.Option(help="with --against: random inputs of the box, in each dtype (default 512)")
    ] = None,
    dtypes: Annotated[
        str | None, typer.Option(help="with --against: dtypes of the forward passes (default float32,float64)")
    ] = None,
    worst_case_starts: Annotated[
        int | None, typer.Option(help="with --against: starts of the worst-case search, 0 for none (default 4)")
    ] = None,
) -> None:
    """Verify a ticket and print the report. With --against: a constructed ticket against its target, on data
    and random inputs (errors, per-layer checks, certified bound). Without it: the ticket's network on its task,
    the accuracy and mean cross-entropy on labelled --data (a bundled dataset's test split, or a whole file with
    x and y), beside the accuracy a learned ticket's learning recorded. A learned-mask ticket has a task, not a
    target: verify it with --data alone.
    """
    box = _parse_domain(input_box)
    if against is None:
        if data is None:
            raise _usage_error(
                "without --against, verify measures the ticket on its task: give labelled --data "
                "(or --against TARGET for a constructed ticket)"
            )
        options = {
            "--input-box": input_box,
            "--arch": arch,
            "--data-limit": data_limit,
            "--random": random,
            "--dtypes": dtypes,
            "--worst-case-starts": worst_case_starts,
        }
        for name, value in options.items():
            if value is not None:
                raise _usage_error(f"{name} applies with --against only")
    chosen: dict[str, Any] = {"input_box": box, "n_random": random, "worst_case_starts": worst_case_starts}
    chosen["dtypes"] = None if dtypes is None else tuple(d.strip() for d in dtypes.split(",") if d.strip())
    try:  # options left out take VerifyConfig's defaults; a bad value is its ConfigError, naming the field
        config = VerifyConfig(**{key: value for key, value in chosen.items() if value is not None})
    except ConfigError as exc:
        raise _usage_error(str(exc)) from None

    def run() -> None:
        from ticketsolver import Ticket, load_target
        from ticketsolver import verify as verify_ticket
        from ticketsolver.errors import VerificationError
        from ticketsolver.verification import evaluate_task

        loaded = Ticket.load(ticket)
        if against is not None and loaded.learned:
            raise VerificationError("a learned-mask ticket has a task, not a target: verify it with --data alone")
        dataset = _load_data(data)
        report: Any
        if against is None:
            if isinstance(dataset, tuple) and dataset[1] is None:
                raise typer.BadParameter(
                    f"{data} has no labels (y): without --against, verify measures the task on labelled data",
                    param_hint="--data",
                )
            report = evaluate_task(loaded, dataset, device=device, name=_data_name(data, dataset))
        else:
            target = load_target(against, arch=arch)
            if data_limit is not None and dataset is not None:
                dataset = _first(dataset, data_limit)
            report = verify_ticket(target, loaded, config, data=dataset, device=device)
        report.render(console)
        if json_out:
            report.to_json(json_out)
            console.print(f"report -> {json_out}")

    _run(run)


def _first(dataset: Any, count: int) -> tuple[Any, Any]:
    """The first ``count`` inputs (and labels) of a bundled dataset's test split or of an (x, y) pair."""
    x, y = (dataset.x_test, dataset.y_test) if hasattr(dataset, "x_test") else dataset
    return x[:count], None if y is None else y[:count]


def _data_name(spec: str | None, dataset: Any) -> str | None:
    """How a report names the data: a bundled set's test split, or the file."""
    if spec is None:
        return None
    return f"{spec} (test split)" if hasattr(dataset, "x_test") else Path(spec).name


LEARN_DATA_HELP = (
    "the task: 'digits' (28x28, for lenet5), 'digits-signed', 'digits-flat', 'wine', or an .npz/.safetensors "
    "file with x and labels y, which is split 70/30 into training and test examples (seeded: the same split "
    "every run); the test split gives the reported accuracy"
)
#: built-in architectures learn-mask draws a random network for (the hidden width of mlp is the wine example's)
LEARN_ARCHITECTURES = ("lenet5", "mlp")
MLP_HIDDEN = 64
#: the share of a data file held out as its test split, and the seed of that split
FILE_TEST_FRACTION, FILE_SPLIT_SEED = 0.3, 0


def _task_data(spec: str) -> Any:
    """A Dataset with train and test splits; a file's labelled (x, y) is split 70/30 with a fixed seed."""
    import numpy as np
    import torch

    from ticketsolver.data import Dataset
    from ticketsolver.errors import ConfigError

    loaded = _load_data(spec)
    if isinstance(loaded, Dataset):
        return loaded
    x, y = loaded
    if y is None:
        raise typer.BadParameter(
            f"{spec} has no labels (y): learning a mask needs a labelled task", param_hint="--data"
        )
    if len(x) != len(y) or len(x) < 2:
        raise ConfigError(f"{spec}: learning needs at least 2 examples with one label each, got {len(x)} x, {len(y)} y")
    order = torch.from_numpy(np.random.default_rng(FILE_SPLIT_SEED).permutation(len(x)))
    n_test = min(len(x) - 1, max(1, round(FILE_TEST_FRACTION * len(x))))
    test, train = order[:n_test], order[n_test:]
    return Dataset(x[train], y[train], x[test], y[test], None, Path(spec).name)


def _arch_target(spec: str, dataset: Any, arch: str | None) -> Any:
    """The Target whose architecture the random network widens: a built-in shaped by the data, or a checkpoint."""
    from ticketsolver import load_target
    from ticketsolver.models import MLP, LeNet5, Target

    shape, classes = tuple(dataset.input_shape), dataset.num_classes
    if spec in LEARN_ARCHITECTURES:
        if arch is not None:
            raise _usage_error(f"--arch names a checkpoint's architecture; {spec} is one already")
        if spec == "lenet5":
            if len(shape) != 3 or shape[1:] != (28, 28):
                raise _usage_error(f"lenet5 takes (C, 28, 28) images; the data ({dataset.name}) have inputs {shape}")
            return Target.from_module(LeNet5(shape[0], classes), shape, arch="lenet5")
        if len(shape) != 1:
            raise _usage_error(f"mlp takes flat inputs; the data ({dataset.name}) have inputs {shape}")
        return Target.from_module(MLP((shape[0], MLP_HIDDEN, classes)), shape, arch="mlp")
    if not Path(spec).is_file():
        raise typer.BadParameter(
            f"{spec!r} is neither a built-in architecture ({', '.join(LEARN_ARCHITECTURES)}) nor a checkpoint file",
            param_hint="ARCH_OR_MODEL",
        )
    with _stage(f"loaded {spec}"):
        return load_target(spec, arch=arch)


@contextmanager
def _epoch_progress(epochs: int):
    """A rich progress bar over the epochs (training loss, test accuracy, ETA); yields the learner's callback."""
    from rich.progress import MofNCompleteColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("epochs", total=epochs, note="")

        def update(done: int, total: int, stats: dict[str, float]) -> None:
            note = f"loss {stats['loss']:.4f}, test accuracy {stats['test_accuracy']:.2%}"
            progress.update(task, completed=done, total=total, note=note)

        yield update


def _check_learn_usage(
    model: str | None,
    source_of: Path | None,
    n: int | None,
    init_from: Path | None,
    method: str,
    arch_only: dict[str, object],
    iterand_only: dict[str, object],
) -> None:
    """Bad combinations of learn-mask's options are usage errors (exit 2)."""
    given = [
        name
        for name, value in (("ARCH_OR_MODEL", model), ("--source-of", source_of), ("--init-from", init_from))
        if value is not None
    ]
    if len(given) != 1:
        raise _usage_error(
            "the random network comes from exactly one of ARCH_OR_MODEL (an architecture drawn afresh), "
            f"--source-of TARGET --n N (a construction's source) or --init-from TICKET; got "
            f"{' and '.join(given) or 'none'}"
        )
    if (source_of is None) != (n is None):
        raise _usage_error("--source-of and --n go together: the source build uses for TARGET at n")
    if model is None:
        for name, value in arch_only.items():
            if value is not None:
                raise _usage_error(
                    f"{name} shapes a network drawn for an architecture; --source-of and --init-from take a "
                    "construction's random source as it is"
                )
    if method != "iterand":
        for name, value in iterand_only.items():
            if value is not None:
                raise _usage_error(f"{name} applies with --method iterand only")


@app.command("learn-mask")
def learn_mask_cmd(
    data: Annotated[str, typer.Option(help=LEARN_DATA_HELP)],
    out: Annotated[Path, typer.Option("-o", "--out", help="ticket file")],
    model: Annotated[
        str | None,
        typer.Argument(
            metavar="ARCH_OR_MODEL",
            help="lenet5 or mlp (in -> 64 -> classes), shaped by --data, or a checkpoint whose architecture is "
            "widened; not with --source-of / --init-from",
            show_default=False,
        ),
    ] = None,
    method: Annotated[
        str, typer.Option(help="edge-popup (learn scores) or iterand (also re-randomise pruned weights)")
    ] = "edge-popup",
    keep: Annotated[
        float | None,
        typer.Option(
            help="kept fraction of every layer tensor, in (0, 1] (default 0.5; with --source-of or --init-from each "
            "tensor's kept fraction in the constructed ticket)"
        ),
    ] = None,
    width: Annotated[
        float | None, typer.Option(help="hidden width multiplier of the architecture's random network (default 1)")
    ] = None,
    # epochs, batch size and lr show LearnConfig's defaults (tests/test_cli_learn.py keeps them equal)
    epochs: Annotated[int, typer.Option(help="passes over the training split")] = 30,
    seed: Annotated[
        int, typer.Option(help="seed of the random network (and of the --source-of build), scores and batches")
    ] = 0,
    init: Annotated[
        str | None,
        typer.Option(help="law of the architecture's random weights: signed-constant (default) or kaiming-normal"),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="examples per SGD step")] = 64,
    lr: Annotated[float, typer.Option(help="SGD learning rate of the scores (cosine schedule)")] = 0.1,
    rerand_period: Annotated[
        int | None, typer.Option(help="iterand: iterations (SGD steps) between re-randomisations (default 300)")
    ] = None,
    rerand_rate: Annotated[
        float | None, typer.Option(help="iterand: probability that a pruned weight is redrawn (default 0.1)")
    ] = None,
    source_of: Annotated[
        Path | None,
        typer.Option(
            help="learn over the very random source build uses for this target checkpoint at --n (one random "
            "layer per U and per V)"
        ),
    ] = None,
    n: Annotated[int | None, typer.Option(help="with --source-of: random hidden units per block")] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(help="start from a constructed (pure) ticket: its random source, with its masks as the start"),
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="built-in architecture of a state_dict checkpoint; inferred by default")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="JSON report path (default TICKET.report.json)")] = None,
) -> None:
    """Learn a mask over a frozen random network for a task (edge-popup or IteRand) and save the ticket. The
    random network is an architecture's, widened (ARCH_OR_MODEL), the random source a build uses for a
    target (--source-of TARGET --n N), or a constructed ticket's source with its masks as the start
    (--init-from TICKET). Prints the ticket and its task report (accuracy on the test split) and writes the
    JSON report: the learn config, seconds, the task report and the ticket summary. A learned ticket has a
    task, not a target: verify it with `ticketsolver verify TICKET --data ...`.
    """
    _check_learn_usage(
        model,
        source_of,
        n,
        init_from,
        method,
        arch_only={"--width": width, "--init": init},
        iterand_only={"--rerand-period": rerand_period, "--rerand-rate": rerand_rate},
    )
    options: dict[str, Any] = {"method": method, "keep": keep, "epochs": epochs, "seed": seed}
    options |= {"batch_size": batch_size, "lr": lr, "width": width, "init": init and init.replace("-", "_")}
    options |= {"rerand_period": rerand_period, "rerand_rate": rerand_rate}

    def run() -> None:
        from ticketsolver import Ticket, build_ticket, load_target
        from ticketsolver.learning import LearnConfig, learn_mask, network_for, network_of_ticket
        from ticketsolver.ticket.summary import render_ticket, ticket_summary
        from ticketsolver.verification import evaluate_task

        # options left out take LearnConfig's defaults; a bad value is its ConfigError, naming the field
        config = LearnConfig(**{name: value for name, value in options.items() if value is not None})
        dataset = _task_data(data)
        result: dict[str, Any] = {"learn_config": config.to_dict()}
        if init_from is not None:
            with _stage(f"loaded {init_from}"):
                network = network_of_ticket(Ticket.load(init_from), use_masks=True)
        elif source_of is not None:
            with _stage(f"loaded {source_of}"):
                target = load_target(source_of, arch=arch)
            assert n is not None  # _check_learn_usage
            build = BuildConfig(n=n, seed=seed, input_domain=dataset.input_domain)
            t0 = time.perf_counter()
            with _layer_progress(_layer_names(target)) as layer_progress:
                built = build_ticket(target, build, progress=layer_progress)
            result["source_build_seconds"] = time.perf_counter() - t0
            console.print(
                f"built the pure ticket at n={n} in {result['source_build_seconds']:.1f} s: its source is the network"
            )
            network = network_of_ticket(built, use_masks=False)
        else:
            assert model is not None  # _check_learn_usage
            target = _arch_target(model, dataset, arch)
            network = network_for(target, config)
        console.print(
            f"random network ({network.origin}): {len(network.layouts)} random layers, "
            f"{network.source_params():,} random values; task {dataset.name}: {len(dataset.x_train)} training, "
            f"{len(dataset.x_test)} test examples"
        )
        t1 = time.perf_counter()
        with _epoch_progress(config.epochs) as epoch_progress:
            learned = learn_mask(network, dataset, config, progress=epoch_progress)
        result["seconds"] = time.perf_counter() - t1
        learned.save(out)
        size = out.stat().st_size
        console.print(f"learned in {result['seconds']:.1f} s -> [bold]{out}[/bold] ({size / 1024:.1f} KiB)")
        saved = Ticket.load(out)  # the task is measured on the network the file regenerates
        render_ticket(saved, console, size)
        task = evaluate_task(saved, dataset, name=f"{dataset.name} (test split)")
        task.render(console)
        result |= {"task": task.to_dict(), "ticket": ticket_summary(saved, size)}
        report_path = report or out.with_suffix(".report.json")
        report_path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        console.print(f"report -> {report_path}")

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


@app.command()
def sweep(
    model: Annotated[
        Path, typer.Argument(help="checkpoint: state_dict (.pt/.pth/.safetensors) or torch.export program (.pt2)")
    ],
    n: Annotated[str, typer.Option(help="n values: START:STOP[:STEP] (stop included), A,B,C or one value")],
    out: Annotated[Path, typer.Option("-o", "--out", help="sweep directory (an earlier run there is resumed)")],
    resample: Annotated[str, typer.Option(help="re-randomisation rounds, e.g. 0,16 (0: a pure source)")] = "0",
    source_density: Annotated[str, typer.Option(help="Erdos-Renyi source densities, e.g. 1,0.5,0.2")] = "1",
    density_policy: Annotated[
        str, typer.Option(help="how a sparse source's layers share the density: uniform, erk, balanced, pyramidal")
    ] = "uniform",
    depth: Annotated[str, typer.Option(help="depths of the random network: 2L and/or L+1, e.g. 2L,L+1")] = "2L",
    data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
    seed: Annotated[int, typer.Option(help="seed of the random source of every build")] = 0,
    input_domain: Annotated[
        str | None, typer.Option(help="box of the model input, LO,HI (default: the data's, else -6,6)")
    ] = None,
    n_random: Annotated[
        int | None, typer.Option(help="random inputs of the box each ticket is verified on (default 256)")
    ] = None,
    solver: Annotated[str, typer.Option(help="subset-sum backend: auto, mitm, gurobi, cpsat, cbc")] = "auto",
    arch: Annotated[
        str | None, typer.Option(help="built-in architecture of a state_dict (lenet5, mlp); inferred by default")
    ] = None,
) -> None:
    """Build and verify MODEL's ticket at every n for each setting (depth x --resample x --source-density),
    write results.csv (one row per ticket), the tickets and the figures (error against n and size, kept
    fraction, accuracy, conv error) into --out. Run it again into the same directory to resume."""
    domain = _parse_domain(input_domain)

    def run() -> None:
        from rich.progress import MofNCompleteColumn

        from ticketsolver import load_target
        from ticketsolver.sweep import SWEEP_VERIFY, SweepSpec, run_sweep, setting_label, summary_table

        checks = SWEEP_VERIFY if n_random is None else SWEEP_VERIFY.replace(n_random=n_random)
        # the texts go to the spec as they are: it parses ranges and lists, and its ConfigError names the field
        fields: dict[str, Any] = {"n": n, "resample": resample, "source_density": source_density, "depth": depth}
        fields |= {"density_policy": density_policy, "seed": seed, "input_domain": domain, "solver": solver}
        spec = SweepSpec(**fields, verify=checks)
        for setting, reason in spec.settings()[1]:
            console.print(f"[yellow]skipped[/yellow] {setting_label(**setting)}: {reason}")
        with _stage(f"loaded {model}"):
            target = load_target(model, arch=arch)
        dataset = _load_data(data)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("sweep", total=None)

            def update(done: int, total: int, label: str) -> None:
                bar.update(task, completed=done, total=total, description=label)

            result = run_sweep(target, spec, out, data=dataset, progress=update)
        console.print(summary_table(result.rows))
        if result.reused:
            console.print(f"{result.reused} rows resumed from the earlier run in {out}")
        console.print(f"results -> {result.csv_path}")
        console.print(f"tickets -> {out / 'tickets'}")
        for path in result.figures:
            console.print(f"figure -> {path}")

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
