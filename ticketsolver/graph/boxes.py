"""Input boxes of a graph's units for construction L: sound interval bounds where they are tight enough, else
observed on calibration inputs and widened.

Construction L keeps a hidden unit ``relu(u·x_j + beta)`` only where it is linear for every ``x_j`` of its column's
box (docs/design.md section 2.4). :mod:`ticketsolver.graph.intervals` propagates sound interval bounds through the
graph: tight after LayerNorm (|z| <= sqrt(m - 1)), ReLU6 ([0, 6]), softmax and attention (the hull of V), so a
transformer's or a MobileNet's units get *certified* boxes (every input of the box keeps every L unit linear).
Through a deep residual network plain intervals grow by roughly the l1 norm of every layer's rows (~20x per 3x3
conv: 5e5x the observed range at a small ResNet's head), and the offsets of L, hence the constants its bias block
cancels in float32, grow with the box. A unit whose sound box is more than :data:`LOOSE` times wider than what the
calibration inputs reach, or that has none, gets an *observed* box instead: the target f runs on calibration inputs
drawn from the input box (uniform values, smooth images at three scales, and the box's corners; for token models,
uniform token ids) and every unit's input range over all its columns (features or channels, joined with 0 where a
conv pads) is widened — its half-width times :data:`WIDEN`, around its centre, plus :data:`PAD` of its scale — and
given to every column: per-column ranges would trust a channel the calibration inputs leave silent, and real inputs
excite some (a trained ResNet-18's deep channels reach ~1e9 times their calibration range on its own test images). L's
offsets scale with the widest column anyway, so the unit's range costs no float32 accuracy. Where the sign analysis
proves a column >= 0, its lower end stays at 0. An embedding reads a one-hot input ([0, 1]) and a tensor
unit a constant 1 ([1, 1]): those boxes are exact.

Observed boxes are not certified: an input whose activations leave them makes some unit nonlinear. Verification
measures it (the least pre-activation margin of every kept unit on every input it runs) and says so, and the ticket
records each unit's box origin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ticketsolver.graph.capture import GraphTarget
from ticketsolver.graph.network import unit_input_hook

__all__ = ["LOOSE", "PAD", "WIDEN", "UnitBox", "calibration_inputs", "observed_boxes", "unit_boxes"]

#: half-width multiplier of an observed range
WIDEN = 2.0
#: a sound box at most this many times wider (in total width, and in largest |bound|) than the observed range is used
LOOSE = 16.0
#: absolute padding, relative to the largest |bound| of the unit's input
PAD = 1e-3
#: calibration inputs per kind (uniform, smooth at each scale)
_PER_KIND = 64


@dataclass(frozen=True)
class UnitBox:
    """Per pair of a unit: the column box (d_in,) lo and hi; ``origin`` says how it was obtained."""

    columns: list[tuple[np.ndarray, np.ndarray]]  # one (lo, hi) per pair of the unit
    origin: str


def calibration_inputs(target: GraphTarget, box: tuple[float, float], seed: int = 0) -> torch.Tensor:
    """Inputs the boxes are observed on: uniform in the box, smooth random images (2x2, 4x4, 8x8 cells upsampled)
    for image-shaped inputs, the box's two corners and its centre; uniform token ids for token models."""
    spec = target.spec
    generator = torch.Generator().manual_seed(seed)
    shape = spec.input_shape
    if spec.tokens:
        assert spec.vocab is not None
        return torch.randint(0, spec.vocab, (4 * _PER_KIND, *shape), generator=generator)
    lo, hi = box
    parts = [torch.rand((_PER_KIND * 2, *shape), generator=generator, dtype=torch.float64) * (hi - lo) + lo]
    if len(shape) == 3:
        for cells in (2, 4, 8):
            coarse = torch.rand((_PER_KIND, shape[0], cells, cells), generator=generator, dtype=torch.float64)
            smooth = F.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)
            parts.append(smooth * (hi - lo) + lo)
    parts.append(torch.stack([torch.full(shape, v, dtype=torch.float64) for v in (lo, hi, (lo + hi) / 2)]))
    return torch.cat(parts)


def unit_boxes(
    target: GraphTarget,
    box: tuple[float, float] | None,
    nonnegative: list[bool],
    pair_targets: list[list],
    seed: int = 0,
) -> list[UnitBox]:
    """Every unit's column boxes: the sound interval box where it is within :data:`LOOSE` of the observed range,
    else the observed box widened (see the module docstring); each :class:`UnitBox` says which."""
    from ticketsolver.graph.intervals import unit_input_intervals

    observed, ranges = _observe(target, box or (0.0, 1.0), seed)
    sound = unit_input_intervals(target, box)
    out = []
    for k, unit in enumerate(target.spec.units):
        bounds = sound[k]
        if unit.kind in ("embedding", "tensor"):
            out.append(_exact_box(unit, pair_targets[k]))
            continue
        observed_range = ranges[k]
        assert observed_range is not None
        lo_o, hi_o = observed_range
        if bounds is not None and _tight(bounds, (lo_o, hi_o)):
            lo_s, hi_s = bounds
            if nonnegative[k]:
                lo_s = lo_s.clamp(min=0.0)
            columns = _columns(unit, pair_targets[k], lo_s, hi_s)
            out.append(UnitBox(columns, "interval bounds through the graph (sound)"))
        else:
            why = "no sound bound" if bounds is None else f"sound bound > {LOOSE:g}x the observed range"
            out.append(replace(observed[k], origin=f"{observed[k].origin} ({why})"))
    return out


def _tight(bounds: tuple[torch.Tensor, torch.Tensor], observed: tuple[torch.Tensor, torch.Tensor]) -> bool:
    lo_s, hi_s = bounds
    lo_o, hi_o = observed
    if not bool(torch.isfinite(lo_s).all() and torch.isfinite(hi_s).all()):
        return False
    width = float((hi_s - lo_s).sum()) / max(float((hi_o - lo_o).sum()), 1e-12)
    reach = float(torch.maximum(lo_s.abs(), hi_s.abs()).max()) / max(
        float(torch.maximum(lo_o.abs(), hi_o.abs()).max()), 1e-12
    )
    return width <= LOOSE and reach <= LOOSE


def _exact_box(unit: Any, pairs: list) -> UnitBox:
    if unit.kind == "embedding":
        d_in = pairs[0].weight.shape[1]
        return UnitBox([(np.zeros(d_in), np.ones(d_in))], "exact: one-hot input")
    return UnitBox([(np.ones(1), np.ones(1))], "exact: constant 1")


def _columns(unit: Any, pairs: list, lo_t: torch.Tensor, hi_t: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per pair, the (d_in,) column box from per-feature (linear) or per-channel (conv) bounds."""
    lo_np, hi_np = lo_t.double().numpy(), hi_t.double().numpy()
    if unit.kind == "linear":
        return [(lo_np.copy(), hi_np.copy())]
    columns = []
    per_group = lo_np.size // unit.groups
    for g, pair in enumerate(pairs):
        lo_c, hi_c = lo_np[g * per_group : (g + 1) * per_group], hi_np[g * per_group : (g + 1) * per_group]
        if any(unit.padding):
            lo_c, hi_c = np.minimum(lo_c, 0.0), np.maximum(hi_c, 0.0)
        taps = math.prod(pair.conv.kernel_size)
        columns.append((np.repeat(lo_c, taps), np.repeat(hi_c, taps)))
    return columns


def observed_boxes(
    target: GraphTarget,
    box: tuple[float, float],
    nonnegative: list[bool],
    pair_targets: list[list],
    seed: int = 0,
    chunk: int = 32,
) -> list[UnitBox]:
    """Every unit's column boxes (one per pair), observed on :func:`calibration_inputs` and widened."""
    boxes, _ = _observe(target, box, seed, chunk, nonnegative, pair_targets)
    return boxes


def _observe(
    target: GraphTarget,
    box: tuple[float, float],
    seed: int = 0,
    chunk: int = 32,
    nonnegative: list[bool] | None = None,
    pair_targets: list[list] | None = None,
) -> tuple[list[UnitBox], list[tuple[torch.Tensor, torch.Tensor] | None]]:
    """The observed, widened boxes and the raw observed ranges (per feature or channel) of every unit."""
    spec = target.spec
    if nonnegative is None:
        from ticketsolver.graph.signs import unit_input_signs

        nonnegative = unit_input_signs(spec, box)
    if pair_targets is None:
        pair_targets = [target.pair_targets(k) for k in range(len(spec.units))]
    lows: list[torch.Tensor | None] = [None] * len(spec.units)
    highs: list[torch.Tensor | None] = [None] * len(spec.units)

    def record(k: int, x: torch.Tensor | None) -> None:
        unit = spec.units[k]
        if x is None or unit.kind in ("embedding", "tensor"):
            return
        values = x.detach().double()
        if unit.kind == "linear":
            flat = values.reshape(-1, values.shape[-1])
            lo, hi = flat.amin(0), flat.amax(0)
        else:
            per_channel = values.transpose(0, 1).reshape(values.shape[1], -1)
            lo, hi = per_channel.amin(1), per_channel.amax(1)
        lows[k] = lo if lows[k] is None else torch.minimum(lows[k], lo)  # type: ignore[arg-type]
        highs[k] = hi if highs[k] is None else torch.maximum(highs[k], hi)  # type: ignore[arg-type]

    network = unit_input_hook(target.network(torch.float64), record)
    inputs = calibration_inputs(target, box, seed)
    with torch.no_grad():
        for start in range(0, inputs.shape[0], chunk):
            network(inputs[start : start + chunk])
    unit_input_hook(network, None)
    count = inputs.shape[0]
    boxes = []
    ranges: list[tuple[torch.Tensor, torch.Tensor] | None] = []
    for k, unit in enumerate(spec.units):
        pairs = pair_targets[k]
        if unit.kind in ("embedding", "tensor"):
            boxes.append(_exact_box(unit, pairs))
            ranges.append(None)
            continue
        lo_c, hi_c = lows[k], highs[k]
        assert lo_c is not None and hi_c is not None
        ranges.append((lo_c, hi_c))
        # the unit's range over all its columns, for every column: a channel that the calibration inputs leave
        # silent may be one that real inputs excite (a ResNet-18's deep channels, ~1e9x their calibration range)
        lo_t, hi_t = lo_c.min().expand_as(lo_c), hi_c.max().expand_as(hi_c)
        centre, half = (hi_t + lo_t) / 2, (hi_t - lo_t) / 2
        scale = max(float(torch.maximum(lo_t.abs(), hi_t.abs()).max()), 1e-6)
        lo_w = centre - WIDEN * half - PAD * scale
        hi_w = centre + WIDEN * half + PAD * scale
        if nonnegative[k]:
            lo_w = lo_w.clamp(min=0.0)
        columns = _columns(unit, pairs, lo_w, hi_w)
        boxes.append(
            UnitBox(
                columns,
                f"observed on {count} calibration inputs (the unit's range, every column), half-width x{WIDEN:g}",
            )
        )
    return boxes, ranges
