"""verify_graph: the checks of docs/design.md section 5 on a graph target f and its pruned random network g.

Like :func:`~ticketsolver.verification.verify.verify_networks` for a chain, in each dtype on copies of both networks:

* outputs on the data and on random inputs (uniform on the box — the law the units' boxes were observed on — or
  uniform token ids over the vocabulary), run chunk by chunk; the relative error per input is max |f − g| / max |f|
  over all of that input's outputs, agreement and accuracy are the argmax over the last dimension (every position of
  a sequence counts);
* every pair of every unit against the trained op and against the pair's own effective layer, on f's activations at
  that unit (captured by a hook while f runs on the first chunk of inputs): a grouped conv's pairs on their channel
  slices, an embedding's pair on the one-hot rows of the ids it saw, a tensor unit's on the constant 1; an L pair is
  compared with its effective layer only where it is linear, and the inputs where it is not are counted;
* the worst-case search (projected gradient ascent from the data points and random inputs with the largest errors)
  for float inputs; token ids have no gradient, so a token model's worst case is the largest error seen.

No certified bound is propagated through a graph: its units' boxes are observed, not sound, and attention and
normalisation have no interval bound here. The report says so instead of printing a number.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ticketsolver.config import VerifyConfig
from ticketsolver.errors import VerificationError
from ticketsolver.graph.capture import GraphTarget, sample_inputs
from ticketsolver.graph.network import GraphNetwork, PairUnit, TargetUnit, unit_input_hook
from ticketsolver.verification.layers import LayerCheck, _relative
from ticketsolver.verification.metrics import OutputComparison
from ticketsolver.verification.report import Report
from ticketsolver.verification.verify import _device_note, _ieee_float32, _resolve_device
from ticketsolver.verification.worst_case import search_worst_case

__all__ = ["GRAPH_NOT_CERTIFIED", "verify_graph"]

GRAPH_NOT_CERTIFIED = (
    "no certified bound for a graph: the error of g is not propagated through attention, normalisation and the "
    "graph's other ops here"
)
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_CHUNK = 64


def _forward_chunks(
    network: torch.nn.Module, x: torch.Tensor, chunk: int = _CHUNK, device: torch.device | None = None
) -> torch.Tensor:
    """``network(x)`` chunk by chunk on ``device`` (default: x's), gathered on the CPU."""
    with torch.no_grad():
        return torch.cat([network(x[i : i + chunk].to(device)).cpu() for i in range(0, x.shape[0], chunk)])


def _unit_inputs(f: GraphNetwork, x: torch.Tensor) -> dict[int, torch.Tensor | None]:
    seen: dict[int, torch.Tensor | None] = {}

    def record(k: int, value: torch.Tensor | None) -> None:
        seen[k] = None if value is None else value.detach()

    unit_input_hook(f, record)
    try:
        with torch.no_grad():
            f(x)
    finally:
        unit_input_hook(f, None)
    return seen


def _pair_inputs(
    unit: Any, h: torch.Tensor | None, groups: int, dtype: torch.dtype, device: torch.device
) -> list[torch.Tensor]:
    """What each pair of a unit reads, laid out for the pair itself."""
    if unit.kind == "tensor":
        return [torch.ones(1, 1, dtype=dtype, device=device)]
    assert h is not None
    if unit.kind == "embedding":
        vocab = unit.weight_shape[0]
        ids = torch.unique(h.reshape(-1))
        return [F.one_hot(ids, vocab).to(dtype)]
    if unit.kind == "linear":
        return [h.reshape(-1, h.shape[-1])]
    x = h.unsqueeze(-2) if unit.dims == 1 else h
    return list(torch.chunk(x, groups, dim=1)) if groups > 1 else [x]


def _target_outputs(unit: Any, module: TargetUnit, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The trained op on each pair's input, in the pair's layout (a conv group's slice, one-hot rows, ...)."""
    weight = module.weight
    bias = module.bias
    if unit.kind == "tensor":
        return [weight.reshape(1, -1)]
    if unit.kind == "embedding":
        out = inputs[0] @ weight
        return [out if bias is None else out + bias]
    if unit.kind == "linear":
        return [F.linear(inputs[0], weight, bias)]
    groups = unit.groups
    per = weight.shape[0] // groups
    outs = []
    for g, x in enumerate(inputs):
        w = weight[g * per : (g + 1) * per]
        b = None if bias is None else bias[g * per : (g + 1) * per]
        if unit.dims == 1:
            w = w.unsqueeze(-2)
        stride = tuple(unit.stride) if unit.dims == 2 else (1, *unit.stride)
        padding = tuple(unit.padding) if unit.dims == 2 else (0, *unit.padding)
        dilation = tuple(unit.dilation) if unit.dims == 2 else (1, *unit.dilation)
        outs.append(F.conv2d(x, w, b, stride, padding, dilation))
    return outs


def check_units(f: GraphNetwork, g: GraphNetwork, x: torch.Tensor, dtype_name: str) -> list[LayerCheck]:
    """One :class:`LayerCheck` per unit (its pairs together) on f's activations for inputs ``x``."""
    seen = _unit_inputs(f, x)
    checks = []
    dtype = _DTYPES[dtype_name]
    device = x.device
    for k, unit in enumerate(f.spec.units):
        target_unit = f.units[k]
        pair_unit = g.units[k]
        assert isinstance(target_unit, TargetUnit) and isinstance(pair_unit, PairUnit)
        inputs = _pair_inputs(unit, seen.get(k), unit.groups if unit.kind == "conv" else 1, dtype, device)
        targets = _target_outputs(unit, target_unit, inputs)
        scale = vs_target = vs_effective = 0.0
        outside = 0
        input_min = min(float(h.min()) for h in inputs)
        with torch.no_grad():
            for g_index, (h, expected) in enumerate(zip(inputs, targets, strict=True)):
                pair = pair_unit.pair(g_index)
                out, margin = pair.forward_with_margin(h)
                effective = pair.effective(dtype)(h)
                linear = margin >= 0
                outside += int((~linear).sum())
                scale = max(scale, float(expected.abs().max()))
                vs_target = max(vs_target, float((out - expected).abs().max()))
                if bool(linear.any()):
                    vs_effective = max(vs_effective, float((out[linear] - effective[linear]).abs().max()))
        construction = pair_unit.pair(0).construction
        checks.append(
            LayerCheck(
                index=k,
                module=f"{unit.path or unit.node} ({unit.kind}{f', {unit.groups} groups' if unit.groups > 1 else ''})",
                construction=construction,
                dtype=dtype_name,
                n_inputs=int(x.shape[0]),
                input_min=input_min,
                max_abs_target=scale,
                pair_vs_target=vs_target,
                pair_vs_effective=vs_effective,
                pair_vs_target_relative=_relative(vs_target, scale),
                pair_vs_effective_relative=_relative(vs_effective, scale),
                outside_linear_region=outside,
            )
        )
    return checks


def verify_graph(
    target: GraphTarget,
    ticket: Any,
    config: VerifyConfig = VerifyConfig(),  # noqa: B008 - frozen: one shared default is safe
    *,
    data: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> Report:
    """Measure how closely the graph ticket's g follows the graph target f (see the module docstring).

    Args:
        target: the graph target.
        ticket: its ticket (``ticket.graph`` set).
        config: dtypes, random inputs, worst-case steps and starts, per-unit checks, seed; ``input_box`` bounds the
            random float inputs (None: the ticket's build box, else the data's range, else [-6, 6]).
        data: ``(inputs, labels)``: float images/features or int64 token ids; labels per input (N,) or per position
            (N, T), or None.
        device: where f and g run (default: CUDA when present, else the CPU; float32 is IEEE there, TF32 off); inputs
            go there chunk by chunk and outputs come back to the CPU.
        progress: called as ``progress(step, fraction done)``.

    Raises:
        VerificationError: the ticket was not built from this graph, the data does not fit it, or an unknown or
            absent device.
    """
    spec = target.spec
    graph = ticket.graph
    if graph is None or [u.weight_shape for u in graph.units] != [u.weight_shape for u in spec.units]:
        raise VerificationError("the ticket was not built from this graph target")
    tick = progress or (lambda *_: None)
    dev = _resolve_device(device)
    with _ieee_float32(dev):
        return _verify_graph(target, ticket, config, data, dev, tick)


def _verify_graph(
    target: GraphTarget,
    ticket: Any,
    config: VerifyConfig,
    data: tuple[torch.Tensor, torch.Tensor | None] | None,
    dev: torch.device,
    tick: Callable[[str, float], None],
) -> Report:
    spec = target.spec
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(config.seed)
    box, source = _box(config, ticket, data, spec.tokens)
    x_random = sample_inputs(spec, config.n_random, generator, box)
    if data is not None:
        x_data, y_data = data
        if tuple(x_data.shape[1:]) != tuple(spec.input_shape):
            raise VerificationError(
                f"data of per-sample shape {tuple(x_data.shape[1:])}; the network takes {tuple(spec.input_shape)}"
            )
    g32 = ticket.to_module()
    report = Report(
        device=str(dev),
        device_note=_device_note(dev),
        dtypes=list(config.dtypes),
        input_shape=list(spec.input_shape),
        input_box={
            "source": source,
            "law_name": "uniform token ids" if spec.tokens else "uniform",
            "law": f"token ids uniform over [0, {spec.vocab})" if spec.tokens else f"uniform on [{box[0]}, {box[1]}]",
            "lo_min": 0 if spec.tokens else box[0],
            "lo_max": 0 if spec.tokens else box[0],
            "hi_min": (spec.vocab or 1) - 1 if spec.tokens else box[1],
            "hi_max": (spec.vocab or 1) - 1 if spec.tokens else box[1],
        },
        seed=config.seed,
        torch_version=torch.__version__,
    )
    observed = [u for u in ticket.build.get("graph_units", []) if "observed" in str(u.get("box") or "")]
    report.notes.append(
        GRAPH_NOT_CERTIFIED
        + (
            f"; {len(observed)} of {len(spec.units)} units' L boxes are observed on calibration inputs (sound "
            "interval bounds were too loose), so their pairs are linear on those inputs, not provably on the box"
            if observed
            else "; every L box is a sound interval bound over the input box"
        )
    )
    report.notes.extend(f"capture: {note}" for note in spec.notes)
    steps = len(config.dtypes)
    for i, dtype_name in enumerate(config.dtypes):
        dtype = _DTYPES[dtype_name]
        f = target.network(dtype).to(dev)
        g = copy.deepcopy(g32).to(device=dev, dtype=dtype)
        sets: list[tuple[str, torch.Tensor, torch.Tensor | None]] = [("random", x_random, None)]
        if data is not None:
            sets.insert(0, ("data", x_data, y_data))
        errors: list[torch.Tensor] = []  # per input max |f - g|, in the order of the sets: the worst-case starts
        for name, x, y in sets:
            inputs = x if spec.tokens else x.to(dtype)
            f_out = _forward_chunks(f, inputs, config.batch_size, dev)
            g_out = _forward_chunks(g, inputs, config.batch_size, dev)
            comparison = OutputComparison(per_position=f_out.dim() > 2)
            comparison.update(f_out, g_out, y)
            report.sections.setdefault(name, {})[dtype_name] = comparison.result()
            errors.append(comparison.per_input_abs_error)
            tick(f"{dtype_name} {name}", (i + 0.5) / steps)
        if config.layer_check_inputs > 0:
            probe = (x_data if data is not None else x_random)[: min(config.layer_check_inputs, _CHUNK)]
            probe = (probe if spec.tokens else probe.to(dtype)).to(dev)
            report.layers[dtype_name] = check_units(f, g, probe, dtype_name)
        if config.worst_case_steps > 0 and config.worst_case_starts > 0 and not spec.tokens:
            pool = torch.cat([x.to(dtype) for _, x, _ in sets])
            order = torch.cat(errors).argsort(descending=True)[: config.worst_case_starts]
            report.worst_case[dtype_name] = search_worst_case(
                f, g, pool[order].to(dev), (box[0], box[1]), steps=config.worst_case_steps
            )
        tick(dtype_name, (i + 1) / steps)
    report.seconds["total"] = time.perf_counter() - start
    return report


def _box(config: VerifyConfig, ticket: Any, data: Any, tokens: bool) -> tuple[tuple[float, float], str]:
    if tokens:
        return (0.0, 1.0), "token ids"
    if config.input_box is not None:
        return (float(config.input_box[0]), float(config.input_box[1])), "declared"
    if ticket.input_domain is not None:
        origin = ticket.build.get("input_domain_origin")
        return (float(ticket.input_domain[0]), float(ticket.input_domain[1])), f"ticket ({origin or 'declared'})"
    if data is not None:
        x = data[0]
        return (float(x.min()), float(x.max())), "data range"
    return (-6.0, 6.0), "default"
