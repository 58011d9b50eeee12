"""The builder: a target network in, a ticket out.

Walks the target's normal form (Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d, Flatten), replaces every
Linear/Conv2d by a pair of random layers, chooses each random tensor's scale from the layer's weights,
solves the subset sums, and records everything the ticket needs to regenerate the pruned network.

Two kinds of build:

- *pure* (the default, ``resample=0``): one i.i.d. random network, every tensor its law at draw 0.
  Every layer uses construction L (offset blocks, all ~n coefficients usable), linear on the box of its
  input, which is propagated from the input box (declared, else :data:`DEFAULT_INPUT_BOX`) through the
  pairs already built (:mod:`ticketsolver.construction.box`). The subset sums are solved to ``tolerance``.
- *re-randomised* (``resample=R > 0``, opt-in): constructions O (input provably >= 0) and I (elsewhere),
  each unit redrawn up to R times while its error exceeds ``tolerance`` (IteRand). Far smaller errors at
  the same n, but the network's random values are then chosen with knowledge of the target; the ticket
  says so (``source_kind`` "rerandomized", ``examined_values``).
"""

from __future__ import annotations

import logging
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

from ticketsolver.construction.box import DEFAULT_INPUT_BOX, IntervalWalk
from ticketsolver.construction.input_blocks import solve_input_blocks
from ticketsolver.construction.layout import ConvGeometry, PairLayout
from ticketsolver.construction.offset_blocks import offset_scales, solve_offset_blocks
from ticketsolver.construction.output_blocks import solve_output_blocks
from ticketsolver.construction.resume import fingerprint, load_pair, save_pair
from ticketsolver.construction.rounds import MAX_RESAMPLE
from ticketsolver.construction.solution import PairSolution
from ticketsolver.construction.steps import describe_step
from ticketsolver.errors import ConstructionError
from ticketsolver.solvers import Solver, get_solver
from ticketsolver.source import RandomSource

if TYPE_CHECKING:
    from ticketsolver.ticket import Ticket

__all__ = ["BuildConfig", "LayerProgress", "build_ticket", "choose_scales", "solver_options"]

log = logging.getLogger("ticketsolver.construction")

#: (pair, layer fraction done in [0, 1], message) — called as solving advances
LayerProgress = Callable[[int, float, str], None]

#: the largest n accepted
MAX_N = 64
#: default tolerance of a pure build: a subset sum within it needs no larger search (see solvers.auto)
PURE_TOLERANCE = 1e-8
#: default tolerance of a re-randomised build: a unit is redrawn while its error exceeds it
RESAMPLE_TOLERANCE = 1e-7
#: default scale margin per construction: reach of a block's subset sums in units of the layer's max |w|. L's ~0.9·n
#: coefficients of either sign reach far, and a large margin keeps in reach the rare weight whose coefficients lean
#: one way, at little cost in precision from n = 30 on. Max relative error on data, n = 30: LeNet5 margin 4 / 8 / 16 ->
#: 8.8e-6 / 1.7e-6 / 3.2e-6; the signed-input BatchNorm CNN margin 8 / 12 / 16 -> 1.1e-4 / 3.5e-5 / 2.7e-5. The float32
#: rounding of L's cancelled constants grows with the margin (data, float32: 4.0e-4 at 8, 1.1e-3 at 16 on LeNet5).
#: O and I have ~n/2 usable coefficients of one sign, and resampling repairs their tail.
SCALE_MARGINS: dict[str, float] = {"offset_blocks": 12.0, "output_blocks": 1.5, "input_blocks": 1.5}
#: construction I's default extra block draws when re-randomising (a pure build draws each block once)
RESAMPLE_BLOCK_DRAWS = 8

Choice = Literal["auto", "output_blocks", "input_blocks", "offset_blocks"]
#: refuse random sources that would not fit in memory
MAX_SOURCE_PARAMS = 400_000_000


@dataclass(frozen=True)
class BuildConfig:
    """How a ticket is built; recorded in the ticket's manifest. ``None`` fields take the default of the
    build's kind (pure when ``resample == 0``, else re-randomised), resolved on construction."""

    n: int = 20  # random hidden units per block: candidate coefficients per weight
    seed: int = 0  # keys every random tensor (with pair, tensor and draw)
    solver: str = "auto"  # subset-sum backend (see ticketsolver.solvers); auto solves to `tolerance`
    input_domain: tuple[float, float] | None = None  # box of the model's inputs; None: DEFAULT_INPUT_BOX
    # 0 = a pure source (one i.i.d. random network). R > 0 = re-randomisation, IteRand-style: units whose error
    # exceeds `tolerance` are redrawn up to R times, best draw kept (the ticket is then "rerandomized").
    resample: int = 0
    # pure: a subset sum within it is accepted (1e-8); re-randomised: units above it are redrawn (1e-7)
    tolerance: float | None = None
    block_draws: int | None = None  # construction I: draws of each input block's U rows (8 re-randomised, 0 pure)
    scale_margin: float | None = None  # reach of a block's subset sums in units of max |w| (None: SCALE_MARGINS)
    construction: Choice = "auto"  # force one where valid (auto: L when pure, else O where x >= 0 and I)

    def __post_init__(self) -> None:
        pure = (
            isinstance(self.resample, numbers.Integral) and not isinstance(self.resample, bool) and self.resample == 0
        )
        defaults = {
            "tolerance": PURE_TOLERANCE if pure else RESAMPLE_TOLERANCE,
            "block_draws": 0 if pure else RESAMPLE_BLOCK_DRAWS,
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
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
        for name in ("tolerance", "scale_margin"):
            value = getattr(self, name)
            if value is None and name == "scale_margin":
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConstructionError(f"{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        assert self.tolerance is not None
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ConstructionError(f"tolerance must be finite and >= 0, got {self.tolerance!r}")
        if self.scale_margin is not None and not (math.isfinite(self.scale_margin) and 0.1 <= self.scale_margin <= 100):
            raise ConstructionError(f"scale_margin must be in [0.1, 100], got {self.scale_margin!r}")
        if self.construction not in ("auto", "output_blocks", "input_blocks", "offset_blocks"):
            raise ConstructionError(f"unknown construction {self.construction!r}")
        if self.construction == "offset_blocks" and not self.pure:
            raise ConstructionError("construction L (offset_blocks) is built from a pure source: use resample=0")
        if self.block_draws and self.pure:
            raise ConstructionError("block_draws > 0 redraws random values: it needs resample > 0")
        if self.input_domain is not None:
            lo, hi = self.input_domain
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConstructionError(f"input_domain must be finite with lo < hi, got {self.input_domain!r}")

    @property
    def pure(self) -> bool:
        """True for a build from one i.i.d. random network (no re-randomisation)."""
        return self.resample == 0


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


def _target_arrays(pair: int, module: nn.Linear | nn.Conv2d) -> tuple[np.ndarray, np.ndarray | None]:
    """The target layer's dense-view weight (d_out, d_in) and bias, float64; refuses NaN/inf."""
    weight = module.weight.detach().double().cpu().numpy()
    bias = None if module.bias is None else module.bias.detach().double().cpu().numpy()
    if not np.isfinite(weight).all() or (bias is not None and not np.isfinite(bias).all()):
        raise ConstructionError(f"layer {pair} ({type(module).__name__}) has NaN or inf weights")
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise ConstructionError(f"layer {pair}: grouped convolutions (groups={module.groups}) are not supported")
    return weight.reshape(weight.shape[0], -1), bias


def _layout_for(
    pair: int,
    flat: np.ndarray,
    bias: np.ndarray | None,
    conv: ConvGeometry | None,
    construction: str,
    n: int,
    margin: float,
    box: tuple[np.ndarray, np.ndarray] | None = None,
) -> PairLayout:
    bias_units = 0
    if construction == "offset_blocks":
        assert box is not None
        scales, bias_units = offset_scales(flat, bias, box[0], box[1], n, margin)
    else:
        scales = choose_scales(flat, bias, n, margin)
    layout = PairLayout(
        pair=pair,
        construction=construction,  # type: ignore[arg-type]
        kind="conv2d" if conv else "linear",
        d_out=flat.shape[0],
        d_in=flat.shape[1],
        n=n,
        has_bias=bias is not None,
        scales=scales,
        conv=conv,
        bias_units=bias_units,
    )
    return layout


def _check_source_size(layout: PairLayout, construction: str) -> None:
    if layout.source_params() > MAX_SOURCE_PARAMS:
        raise ConstructionError(
            f"layer {layout.pair}: the random source would hold {layout.source_params():,} parameters "
            f"(limit {MAX_SOURCE_PARAMS:,}); lower n"
            + (
                " or declare a non-negative input domain so construction O applies"
                if construction == "input_blocks"
                else ""
            )
        )


def _choose_construction(config: BuildConfig, nonnegative: bool, index: int) -> str:
    """L for every layer of a pure build; O where the input is provably >= 0 and I elsewhere when
    re-randomising; or the construction the config forces, where it is valid."""
    if config.construction == "auto":
        if config.pure:
            return "offset_blocks"
        return "output_blocks" if nonnegative else "input_blocks"
    if config.construction == "output_blocks" and not nonnegative:
        raise ConstructionError(f"layer {index}: output blocks need inputs >= 0, which are not guaranteed")
    return config.construction


def _solve_pair(
    layout: PairLayout,
    source: RandomSource,
    weight: np.ndarray,
    bias: np.ndarray | None,
    solver: Solver,
    config: BuildConfig,
    column_box: tuple[np.ndarray, np.ndarray] | None,
    on_round: Callable[[int, int, int], None],
) -> PairSolution:
    assert config.tolerance is not None
    if layout.construction == "offset_blocks":
        assert column_box is not None
        bias_solver = None
        if solver.name in _SMALL_EXACT and layout.bias_units > 40:
            bias_solver = get_solver("auto", tolerance=config.tolerance or PURE_TOLERANCE)
        return solve_offset_blocks(layout, source, weight, bias, solver, *column_box, on_round, bias_solver=bias_solver)
    if layout.construction == "output_blocks":
        solution = solve_output_blocks(
            layout, source, weight, bias, solver, config.resample, config.tolerance, on_round
        )
    else:
        solution = solve_input_blocks(
            layout,
            source,
            weight,
            bias,
            solver,
            config.resample,
            config.tolerance,
            on_round,
            block_draws=config.block_draws or 0,
        )
    return solution


def solver_options(config: BuildConfig) -> dict[str, Any]:
    """Constructor options of the configured backend: ``auto`` of a pure build solves to the build's
    tolerance (the ladder of :mod:`ticketsolver.solvers.ladder`); every other backend solves exactly."""
    if config.solver == "auto" and config.pure and config.tolerance:
        return {"tolerance": config.tolerance}
    return {}


def _make_solver(config: BuildConfig) -> Solver:
    return get_solver(config.solver, **solver_options(config))


#: exact backends limited to 40 usable coefficients: L's bias block (hundreds of units) goes to the ladder
_SMALL_EXACT = ("mitm", "mitm_numba", "mitm_torch", "bruteforce")


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
        >>> ticket = build_ticket(net, n=12, input_shape=(4,), input_domain=(-1.0, 1.0))
        >>> [p.construction for p in ticket.layouts], ticket.sizes()["source_kind"]
        (['offset_blocks', 'offset_blocks'], 'iid')
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
    solver = solve_with if solve_with is not None else _make_solver(config)
    config_record = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    resume = None if resume_dir is None else Path(resume_dir)
    source = RandomSource(config.seed)
    report = progress or (lambda *_: None)
    start = time.perf_counter()

    rounds = config.resample + 1
    box = config.input_domain
    origin = "declared" if box is not None else None
    if box is None and config.pure:
        box, origin = DEFAULT_INPUT_BOX, "default"
    nonnegative = box is not None and box[0] >= 0
    walk = IntervalWalk.from_box(box, tuple(model.input_shape)) if config.pure and box is not None else None
    steps: list[dict[str, Any]] = []
    layouts: list[PairLayout] = []
    solutions: list[PairSolution] = []
    target_params = 0
    for index, module in enumerate(model.module):
        if not isinstance(module, nn.Linear | nn.Conv2d):
            steps.append(describe_step(module))
            nonnegative = nonnegative or isinstance(module, nn.ReLU)
            if walk is not None:
                walk.through_module(module)
            continue
        pair = len(layouts)
        construction = _choose_construction(config, nonnegative, index)
        weight, bias = _target_arrays(pair, module)  # refuses NaN/inf and unsupported convs before anything else
        conv = ConvGeometry.of(module)
        column_box = None
        if construction == "offset_blocks":
            assert walk is not None
            column_box = walk.column_box(conv, weight.shape[1])
        margin = config.scale_margin if config.scale_margin is not None else SCALE_MARGINS[construction]
        layout = _layout_for(pair, weight, bias, conv, construction, config.n, margin, column_box)
        _check_source_size(layout, construction)
        target_params += weight.size + (0 if bias is None else bias.size)

        def on_round(round_: int, done: int, total: int, pair: int = pair) -> None:
            report(pair, min((round_ + done / max(total, 1)) / rounds, 1.0), f"round {round_}")

        stamp = fingerprint(config_record, layout, weight, bias) if resume is not None else ""
        solution = load_pair(resume, pair, stamp) if resume is not None else None
        if solution is None:
            t0 = time.perf_counter()
            solution = _solve_pair(layout, source, weight, bias, solver, config, column_box, on_round)
            solution.stats["seconds"] = time.perf_counter() - t0
            solution.stats["module_index"] = index
            if resume is not None:
                save_pair(resume, pair, solution, stamp)
        if walk is not None:
            # the box of the next layer holds for g: propagate through the pair just built (exactly linear on
            # its own box), not through the target layer
            walk.through_pair(layout, layout.to_module(layout.source_tensors(source), solution.masks))
        report(pair, 1.0, "done")
        steps.append({"op": "pair", "pair": pair})
        layouts.append(layout)
        solutions.append(solution)
        nonnegative = False
    if not layouts:
        raise ConstructionError("the target has no Linear or Conv2d layer to approximate")
    if origin is not None:
        log.info("input box %s (%s)", list(box or ()), origin)
    return Ticket(
        seed=config.seed,
        input_shape=tuple(model.input_shape),
        input_domain=box,
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
            "input_domain_origin": origin,
            "seconds": time.perf_counter() - start,
            "pairs": [s.summary() for s in solutions],
        },
    )
