"""A single random layer of a ticket, whose mask was learned rather than constructed.

A constructed ticket replaces each target layer by a pair (:class:`~ticketsolver.construction.PairLayout`);
a learned-mask ticket (edge-popup, IteRand: :mod:`ticketsolver.learning`) is a random network whose every
Linear/Conv2d is one :class:`LayerLayout`: a weight (and optionally a bias) regenerated from the seeded source,
times a mask. Both kinds are *units* of the same ticket file; steps name a layer unit as
``{"op": "layer", "unit": k}``.

Each tensor names its :class:`Stream`, the stream key it is drawn from: a learned network's own layer ``k``
draws from ``(pair=k, tensor="W"/"b")`` with an initialisation law of the papers (``signed_constant``,
``normal``); a network learned on a construction's source (``--source-of``, ``--init-from``) draws from that
pair's ``U``/``beta``/``V`` keys with their laws, so its values are the construction's bit for bit
(:func:`layers_of_pair`).

Re-randomisation (IteRand) is per entry: ``draws`` holds one uint8 draw index per entry (weight then bias, C
order), and entry ``i`` holds draw ``draws[i]`` of its stream. Every entry may be kept: a learned mask has no
structural constraint.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from torch import nn

from ticketsolver.construction.layout import ConvGeometry, PairLayout, empty_layer, set_masked
from ticketsolver.errors import TicketFormatError
from ticketsolver.source import LAWS, TENSOR_IDS, Law, RandomSource

__all__ = ["LayerLayout", "Stream", "layers_of_pair"]

#: the manifest marker of a layer unit (a pair entry has none)
UNIT_KIND = "layer"


@dataclass(frozen=True)
class Stream:
    """Where one random tensor's values come from: stream key ``(pair, tensor)``, its law and scale.

    ``scale`` is the bound of a uniform law, the constant of ``signed_constant``, the standard deviation of
    ``normal``.
    """

    pair: int
    tensor: str
    law: Law
    scale: float

    def to_dict(self) -> dict[str, Any]:
        return {"pair": self.pair, "tensor": self.tensor, "law": self.law, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: Any) -> Stream:
        if not isinstance(data, dict):
            raise TicketFormatError(f"a stream entry must be an object, got {type(data).__name__}")
        stream = cls(int(data["pair"]), str(data["tensor"]), data["law"], float(data["scale"]))
        if stream.tensor not in TENSOR_IDS or stream.law not in LAWS:
            raise TicketFormatError(f"unknown stream tensor {stream.tensor!r} or law {stream.law!r}")
        if not 0 <= stream.pair < 2**32 or not math.isfinite(stream.scale) or stream.scale <= 0:
            raise TicketFormatError(f"stream {stream.tensor} of pair {stream.pair}: bad pair index or scale")
        return stream


@dataclass(frozen=True)
class LayerLayout:
    """Shape and streams of one random layer (dense view: weight ``(d_out, d_in)``, ``d_in = c_in*kh*kw``)."""

    unit: int  # position in the ticket's units
    kind: Literal["linear", "conv2d"]
    d_out: int
    d_in: int
    weight: Stream
    bias: Stream | None = None
    conv: ConvGeometry | None = None

    tensor_names: ClassVar[tuple[str, ...]] = ("weight", "bias")

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes: dict[str, tuple[int, ...]] = {"weight": (self.d_out, self.d_in)}
        if self.bias is not None:
            shapes["bias"] = (self.d_out,)
        return shapes

    def streams(self) -> dict[str, Stream]:
        return {"weight": self.weight} | ({} if self.bias is None else {"bias": self.bias})

    @property
    def draw_shape(self) -> tuple[int]:
        """One draw index per entry: the weight's, then the bias's, in C order."""
        return (self.source_params(),)

    def source_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes().values())

    def structural_candidate_counts(self) -> dict[str, int]:
        """Every entry is a candidate, so every mask blob's length is fixed by the shapes alone."""
        return {name: math.prod(shape) for name, shape in self.shapes().items()}

    def law(self, name: str) -> Law:
        return self.streams()[name].law

    # -- regeneration -------------------------------------------------------------------------------

    def tensor(self, source: RandomSource, name: str, draw: int = 0) -> np.ndarray:
        """Tensor ``name`` (``weight`` or ``bias``) at draw ``draw``, in its dense-view shape."""
        s = self.streams()[name]
        return source.tensor(s.pair, s.tensor, self.shapes()[name], s.scale, draw, s.law)

    def entry_draws(self, draws: np.ndarray) -> dict[str, np.ndarray]:
        """The flat per-entry draw indices split into the tensors' shapes."""
        if draws.shape != self.draw_shape:
            raise TicketFormatError(f"unit {self.unit}: draws of shape {draws.shape}, expected {self.draw_shape}")
        out, start = {}, 0
        for name, shape in self.shapes().items():
            size = math.prod(shape)
            out[name] = draws[start : start + size].reshape(shape)
            start += size
        return out

    def source_tensors(self, source: RandomSource, draws: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The random tensors as the network holds them: entry ``i`` is draw ``draws[i]`` of its stream."""
        tensors = {name: self.tensor(source, name) for name in self.shapes()}
        if draws is None or not draws.any():
            return tensors
        for name, entry in self.entry_draws(draws).items():
            for d in np.unique(entry[entry > 0]).tolist():
                hit = entry == d
                tensors[name][hit] = self.tensor(source, name, d)[hit]
        return tensors

    def held_tensors(self, source: RandomSource, draws: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """A layer holds its tensors in their dense view (:meth:`source_tensors`): no entry is pruned by structure."""
        return self.source_tensors(source, draws)

    def kept_bytes(self, name: str, held: np.ndarray, mask: np.ndarray) -> Iterator[bytes]:
        """The kept values of tensor ``name`` (0 where pruned) as float32 bytes, C order (see PairLayout.kept_bytes)."""
        yield np.where(mask, held, np.float32(0)).tobytes()

    def candidates(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A learned mask may keep any entry."""
        return {name: np.ones(shape, dtype=bool) for name, shape in self.shapes().items()}

    # -- materialisation ----------------------------------------------------------------------------

    def to_module(
        self, tensors: dict[str, np.ndarray], masks: dict[str, np.ndarray], prune_buffers: bool = False
    ) -> nn.Linear | nn.Conv2d:
        """The pruned layer: weight (and bias) = source * mask, float32, frozen, eval mode."""
        layer = empty_layer(self.kind, self.d_in, self.d_out, self.conv, bias=self.bias is not None)
        for name in self.shapes():
            set_masked(layer, name, tensors[name], masks[name], prune_buffers)
        return layer.eval()

    # -- manifest -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "unit_kind": UNIT_KIND,
            "unit": self.unit,
            "kind": self.kind,
            "d_out": self.d_out,
            "d_in": self.d_in,
            "weight": self.weight.to_dict(),
            "bias": None if self.bias is None else self.bias.to_dict(),
            "conv": None if self.conv is None else self.conv.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerLayout:
        try:
            layout = cls(
                unit=int(data["unit"]),
                kind=data["kind"],
                d_out=int(data["d_out"]),
                d_in=int(data["d_in"]),
                weight=Stream.from_dict(data["weight"]),
                bias=None if data.get("bias") is None else Stream.from_dict(data["bias"]),
                conv=None if data.get("conv") is None else ConvGeometry.from_dict(data["conv"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TicketFormatError(f"malformed layer entry in the manifest: {exc!r}") from exc
        if layout.kind not in ("linear", "conv2d") or (layout.kind == "conv2d") != (layout.conv is not None):
            raise TicketFormatError(f"unit {layout.unit}: unknown kind or conv geometry")
        if min(layout.d_out, layout.d_in) < 1 or (
            layout.conv is not None and layout.d_in != layout.conv.in_channels * math.prod(layout.conv.kernel_size)
        ):
            raise TicketFormatError(f"unit {layout.unit}: inconsistent shapes in the manifest")
        return layout


def unit_from_dict(data: Any) -> PairLayout | LayerLayout:
    """A manifest unit entry: a layer (``unit_kind: layer``) or a pair (no marker, as in format 3)."""
    if not isinstance(data, dict):
        raise TicketFormatError(f"a unit entry of the manifest must be an object, got {type(data).__name__}")
    if data.get("unit_kind") == UNIT_KIND:
        return LayerLayout.from_dict(data)
    if "unit_kind" in data:
        raise TicketFormatError(f"unknown unit kind {data['unit_kind']!r} in the manifest")
    return PairLayout.from_dict(data)


def layers_of_pair(pair: PairLayout, first_unit: int) -> tuple[LayerLayout, LayerLayout]:
    """A pair's two random layers as layer units, drawing from the pair's own streams (same values, bit for bit).

    The first is U (with beta where the pair has it) on the target's geometry, the second V (a 1x1 conv for a
    conv pair); a ReLU goes between them.
    """
    p = pair.pair
    beta = Stream(p, "beta", pair.law("beta"), pair.scales["beta"]) if "beta" in pair.shapes() else None
    first = LayerLayout(
        unit=first_unit,
        kind=pair.kind,
        d_out=pair.hidden,
        d_in=pair.d_in,
        weight=Stream(p, "U", pair.law("U"), pair.scales["U"]),
        bias=beta,
        conv=pair.conv,
    )
    one_by_one = ConvGeometry.one_by_one(pair.hidden) if pair.conv is not None else None
    second = LayerLayout(
        unit=first_unit + 1,
        kind=pair.kind,
        d_out=pair.d_out,
        d_in=pair.hidden,
        weight=Stream(p, "V", pair.law("V"), pair.scales["V"]),
        conv=one_by_one,
    )
    return first, second
