"""The builder: a target network in, a ticket out.

Walks the target's normal form (Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d, Flatten), replaces every
Linear/Conv2d by a pair of random layers — construction O where the layer's input is provably >= 0 (after a
ReLU, or pooling of one, or a declared input domain inside [0, inf)), construction I elsewhere — chooses
each random tensor's scale from the layer's weights, solves the subset sums, and records everything the
ticket needs to regenerate the pruned network.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch import nn

from ticketsolver.construction.input_blocks import solve_input_blocks
from ticketsolver.construction.layout import ConvGeometry, PairLayout
from ticketsolver.construction.output_blocks import solve_output_blocks
from ticketsolver.construction.resume import fingerprint, load_pair, save_pair
from ticketsolver.construction.rounds import MAX_RESAMPLE
from ticketsolver.construction.solution import PairSolution
from ticketsolver.construction.steps import as_pair, describe_step
from ticketsolver.errors import ConstructionError
from ticketsolver.solvers import Solver, get_solver
from ticketsolver.source import RandomSource

if TYPE_CHECKING:
    from ticketsolver.ticket import Ticket

__all__ = ["BuildConfig", "LayerProgress", "build_ticket", "choose_scales"]

#: (pair, layer fraction done in [0, 1], message) — called as solving advances
LayerProgress = Callable[[int, float, str], None]

#: the largest n accepted; the exact engine solves up to 40 usable coefficients (about n/2 are usable)
MAX_N = 64
#: refuse random sources that would not fit in memory
MAX_SOURCE_PARAMS = 400_000_000


@dataclass(frozen=True)
class BuildConfig:
    """How a ticket is built; recorded in the ticket's manifest."""

    n: int = 20  # random hidden units per block: candidate coefficients per weight before sign pruning
    seed: int = 0  # keys every random tensor (with pair, tensor and draw)
    solver: str = "auto"  # subset-sum backend (see ticketsolver.solvers)
    input_domain: tuple[float, float] | None = None  # box of the model's inputs; lo >= 0 allows O first
    # extra draws for units whose error exceeds `tolerance` (IteRand); 0 = one draw. Units within tolerance stop
    # early, so the cost falls on the tail, which sets the max error (LeNet5, n = 30, seeds 0 and 2: max relative
    # error on random inputs 1.4e-5 and 1.5e-5 with 32 rounds, 2.3e-6 and 4.0e-6 with 128; n = 20 build 1.5 -> 5.5 s)
    resample: int = 128
    tolerance: float = 1e-7  # a unit is redrawn while its error exceeds this
    block_draws: int = 8  # construction I: draws of each input block's U rows to choose the most sign-balanced from
    scale_margin: float = 1.5  # expected reach of a block's subset sums, in units of the layer's max |w|
    construction: Literal["auto", "output_blocks", "input_blocks"] = "auto"  # force one where valid

    def __post_init__(self) -> None:
        limits = (
            ("n", 1, MAX_N),
            ("seed", 0, 2**63 - 1),
            ("resample", 0, MAX_RESAMPLE),
            ("block_draws", 0, MAX_RESAMPLE),
        )
        for name, low, high in limits:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= high:
                raise ConstructionError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
            object.__setattr__(self, name, int(value))  # NumPy integers become plain ints for the manifest
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ConstructionError(f"tolerance must be finite and >= 0, got {self.tolerance!r}")
        if not (math.isfinite(self.scale_margin) and 0.1 <= self.scale_margin <= 100):
            raise ConstructionError(f"scale_margin must be in [0.1, 100], got {self.scale_margin!r}")
        if self.construction not in ("auto", "output_blocks", "input_blocks"):
            raise ConstructionError(f"unknown construction {self.construction!r}")
        if self.input_domain is not None:
            lo, hi = self.input_domain
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConstructionError(f"input_domain must be finite with lo < hi, got {self.input_domain!r}")


def choose_scales(weight: np.ndarray, bias: np.ndarray | None, n: int, margin: float) -> dict[str, float]:
    """Scales of U, V (and beta) so that a block's subset sums reach ``margin`` x the largest |w|.

    With k ~ n/2 usable coefficients c = v·u (u > 0 or |u|), half of them positive, the sum of the
    positive ones is ~ k/8 · a_U a_V. Taking a_U = a_V = a: a^2 = 16·margin·max|w| / n. The bias problems
    use c = v·beta, so a_beta = 16·margin·max|b| / (n·a). Larger scales reach further but space the sums
    more coarsely; resampling repairs the few weights beyond reach.
    """
    w_max = max(float(np.abs(weight).max()), 1e-12)
    a = math.sqrt(16.0 * margin * w_max / n)
    scales = {"U": a, "V": a}
    if bias is not None:
        b_max = max(float(np.abs(bias).max()), 1e-12)
        scales["beta"] = 16.0 * margin * b_max / (n * a)
    return scales


def _layout_for(
    pair: int, module: nn.Linear | nn.Conv2d, construction: str, n: int, margin: float
) -> tuple[PairLayout, np.ndarray, np.ndarray | None]:
    weight = module.weight.detach().double().cpu().numpy()
    bias = None if module.bias is None else module.bias.detach().double().cpu().numpy()
    if not np.isfinite(weight).all() or (bias is not None and not np.isfinite(bias).all()):
        raise ConstructionError(f"layer {pair} ({type(module).__name__}) has NaN or inf weights")
    d_out = weight.shape[0]
    conv = None
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ConstructionError(f"layer {pair}: grouped convolutions (groups={module.groups}) are not supported")
        conv = ConvGeometry(
            in_channels=int(module.in_channels),
            kernel_size=tuple(as_pair(module.kernel_size)),  # type: ignore[arg-type]
            stride=tuple(as_pair(module.stride)),  # type: ignore[arg-type]
            padding=tuple(as_pair(module.padding)),  # type: ignore[arg-type]
            dilation=tuple(as_pair(module.dilation)),  # type: ignore[arg-type]
        )
    flat = weight.reshape(d_out, -1)
    layout = PairLayout(
        pair=pair,
        construction=construction,  # type: ignore[arg-type]
        kind="conv2d" if conv else "linear",
        d_out=d_out,
        d_in=flat.shape[1],
        n=n,
        has_bias=bias is not None,
        scales=choose_scales(flat, bias, n, margin),
        conv=conv,
    )
    if layout.source_params() > MAX_SOURCE_PARAMS:
        raise ConstructionError(
            f"layer {pair}: the random source would hold {layout.source_params():,} parameters "
            f"(limit {MAX_SOURCE_PARAMS:,}); lower n"
            + (
                " or declare a non-negative input domain so construction O applies"
                if construction == "input_blocks"
                else ""
            )
        )
    return layout, flat, bias


def build_ticket(
    model: Any,
    n: int = 20,
    *,
    input_shape: Sequence[int] | None = None,
    progress: LayerProgress | None = None,
    solve_with: Solver | None = None,
    resume_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> Ticket:
    """Build the strong lottery ticket of a trained network.

    Args:
        model: a :class:`ticketsolver.models.Target`, or an ``nn.Module`` made of supported layers
            (then ``input_shape`` is required).
        n: random hidden units per block (candidate coefficients per weight).
        input_shape: per-sample input shape when ``model`` is a plain module.
        progress: called with (pair, fraction of that layer done, message) after every solved chunk; an
            exception it raises aborts the build (how a service cancels one).
        solve_with: the solver instance to use instead of ``get_solver(solver)`` (e.g. one that spreads
            chunks over a cluster); the manifest still records ``solver``. Exact solvers give identical
            tickets whatever executes them.
        resume_dir: store each finished layer there, and reuse the layers already stored for this very
            target and configuration (an interrupted build resumes where it stopped).
        **options: the other fields of :class:`BuildConfig` (seed, solver, input_domain, resample, ...).

    Returns:
        The :class:`ticketsolver.ticket.Ticket`.

    Raises:
        ConstructionError: bad parameters, unsupported or non-finite layers, a source too large.
        SolverError: the subset-sum backend failed.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> ticket = build_ticket(net, n=12, input_shape=(4,), resample=0)
        >>> [p.construction for p in ticket.layouts]
        ['input_blocks', 'output_blocks']
    """
    from ticketsolver.models import Target
    from ticketsolver.ticket import Ticket

    if "input_domain" in options and options["input_domain"] is not None:
        options["input_domain"] = tuple(float(v) for v in options["input_domain"])
    config = BuildConfig(n=n, **options)
    if not isinstance(model, Target):
        if input_shape is None:
            raise ConstructionError("input_shape is required when building from a plain nn.Module")
        model = Target.from_module(model, input_shape)
    solver = solve_with if solve_with is not None else get_solver(config.solver)
    config_record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    resume = None if resume_dir is None else Path(resume_dir)
    source = RandomSource(config.seed)
    report = progress or (lambda *_: None)
    start = time.perf_counter()

    rounds = config.resample + 1
    nonnegative = config.input_domain is not None and config.input_domain[0] >= 0
    steps: list[dict[str, Any]] = []
    layouts: list[PairLayout] = []
    solutions: list[PairSolution] = []
    target_params = 0
    for index, module in enumerate(model.module):
        if not isinstance(module, nn.Linear | nn.Conv2d):
            steps.append(describe_step(module))
            nonnegative = nonnegative or isinstance(module, nn.ReLU)
            continue
        pair = len(layouts)
        construction = "output_blocks" if nonnegative else "input_blocks"
        if config.construction != "auto":
            if config.construction == "output_blocks" and not nonnegative:
                raise ConstructionError(f"layer {index}: output blocks need inputs >= 0, which are not guaranteed")
            construction = config.construction
        layout, weight, bias = _layout_for(pair, module, construction, config.n, config.scale_margin)
        target_params += weight.size + (0 if bias is None else bias.size)
        solve = solve_output_blocks if construction == "output_blocks" else solve_input_blocks

        def on_round(round_: int, done: int, total: int, pair: int = pair) -> None:
            report(pair, min((round_ + done / max(total, 1)) / rounds, 1.0), f"round {round_}")

        stamp = fingerprint(config_record, layout, weight, bias) if resume is not None else ""
        solution = load_pair(resume, pair, stamp) if resume is not None else None
        if solution is None:
            t0 = time.perf_counter()
            extra = {"block_draws": config.block_draws} if construction == "input_blocks" else {}
            solution = solve(layout, source, weight, bias, solver, config.resample, config.tolerance, on_round, **extra)
            solution.stats["seconds"] = time.perf_counter() - t0
            solution.stats["module_index"] = index
            if resume is not None:
                save_pair(resume, pair, solution, stamp)
        report(pair, 1.0, "done")
        steps.append({"op": "pair", "pair": pair})
        layouts.append(layout)
        solutions.append(solution)
        nonnegative = False
    if not layouts:
        raise ConstructionError("the target has no Linear or Conv2d layer to approximate")
    return Ticket(
        seed=config.seed,
        input_shape=tuple(model.input_shape),
        input_domain=config.input_domain,
        steps=steps,
        layouts=layouts,
        masks=[s.masks for s in solutions],
        draws=[s.draws for s in solutions],
        build={
            "config": config_record,
            "solver": solver.name,
            "arch": model.arch,
            "source": model.source,
            "target_params": target_params,
            "seconds": time.perf_counter() - start,
            "pairs": [s.summary() for s in solutions],
        },
    )
