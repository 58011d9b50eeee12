"""The ticket: a tiny, regenerable file that *is* the pruned random network.

A ticket holds no weight values. It holds the seed and the stream layout (so every random value can be
regenerated on any machine), each random layer's shape, scale and construction, its masks (bit-packed,
compressed) and the draw indices where resampling kept a later draw, plus the build's statistics. Its
*units* are pairs (a constructed ticket: two random layers per target layer) or single random layers (a
learned-mask ticket, :mod:`ticketsolver.ticket.layer`). It is
stored as safetensors: one uint8 tensor per compressed mask, the manifest as JSON metadata. Loading
regenerates the kept values and checks them against a stored SHA-256, so a ticket that does not rebuild
exactly the network it was saved from is refused; a second SHA-256 covers the build's statistics, the sizes
and the draw indices, and the sizes are recomputed and compared, so edited statistics are refused too. The
format, and every check of :meth:`Ticket.load`, is docs/design.md section 4.

Counting, as every report states it: *target params* = weights and biases of the target's linear/conv
layers; *source params* = every entry of the random tensors (U, beta, V) — of an Erdős–Rényi sparse source,
the entries that exist (its ER nonzeros); *kept params* = source entries whose mask is True (the rest are
pruned, i.e. zero in the network). *source kind* = ``iid`` when every
random tensor is its law at draw 0 (one i.i.d. random network), ``rerandomized`` when some unit kept a later
draw (IteRand-style, chosen with knowledge of the target); *examined values* = every random value the build
drew and compared, discarded draws included (equal to the source params for an iid ticket).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import math
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
from torch import nn

from ticketsolver.construction import OffsetPair, PairLayout, PrunedPair, module_from_step
from ticketsolver.construction.copies import CopyPlan, CopyStage
from ticketsolver.errors import TicketFormatError
from ticketsolver.graph.ir import GraphSpec
from ticketsolver.graph.network import GraphNetwork, PairUnit
from ticketsolver.source import RNG_LAYOUT, RandomSource
from ticketsolver.ticket.layer import LayerLayout, unit_from_dict

__all__ = ["FORMAT", "FORMAT_VERSION", "SourceKind", "Ticket", "TicketSizes", "Unit"]

FORMAT = "ticketsolver.ticket"
# 2: construction I records the draw of each input block (an extra row of draws)
# 3: sizes state source_kind and examined_values; build_sha256 covers the build statistics, sizes and draws
# 4: units may be single random layers (learned masks: "unit_kind": "layer", steps {"op": "layer", "unit": k})
FORMAT_VERSION = 4
#: versions this ticketsolver reads (a version-3 ticket is a version-4 ticket made of pairs only)
READABLE_VERSIONS = (3, 4)

#: a ticket's unit: a pair of random layers (construction) or one random layer (learned mask)
Unit = PairLayout | LayerLayout
#: a ticket file larger than this is not a ticket (LeNet5's is ~100 KB)
MAX_TICKET_BYTES = 256 * 1024 * 1024
#: default limit on the random source a ticket may describe (float32: 1.6 GB); Ticket.load(max_source_params=)
MAX_SOURCE_PARAMS = 400_000_000


def _package_version() -> str:
    from ticketsolver._version import __version__

    return __version__


def _filters(size: int) -> list[dict[str, int]]:
    # a dictionary as large as the data (LZMA's minimum is 4 KiB) compresses as well as preset 9's 64 MiB
    # and keeps both the encoder fast and the decoder's memory small
    return [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": max(4096, size)}]


def _pack(values: np.ndarray) -> np.ndarray:
    """bool -> LZMA-compressed packbits, as a uint8 tensor; uint8 -> LZMA-compressed bytes."""
    raw = (np.packbits(values.ravel()) if values.dtype == np.bool_ else values.ravel()).tobytes()
    return np.frombuffer(lzma.compress(raw, format=lzma.FORMAT_XZ, filters=_filters(len(raw))), dtype=np.uint8)


def _unpack(blob: np.ndarray, count: int, as_bool: bool, what: str) -> np.ndarray:
    """Decompress ``count`` bits (or bytes) from a blob; a blob of any other length is refused."""
    expected = (count + 7) // 8 if as_bool else count
    try:
        # bounded: never inflate more than the expected size (+1 to detect excess); decoder memory up to what
        # the largest standard preset needs (a 64 MiB dictionary), not what a crafted header asks for
        decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=(96 << 20) + 16 * expected)
        raw = decoder.decompress(blob.tobytes(), max_length=expected + 1)
    except lzma.LZMAError as exc:
        raise TicketFormatError(f"{what}: corrupt compressed data ({exc})") from exc
    if len(raw) != expected:
        raise TicketFormatError(f"{what}: {len(raw)} bytes after decompression, expected {expected}")
    buf = np.frombuffer(raw, dtype=np.uint8)
    return np.unpackbits(buf, count=count).astype(bool) if as_bool else buf.copy()


def _read_only(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for array in tensors.values():
        array.flags.writeable = False  # shared by every caller: the ticket's network must not change under it
    return tensors


def _canonical_json(value: Any) -> bytes:
    """One byte string per JSON value: the in-memory build (tuples, int keys) and its loaded copy agree."""
    return json.dumps(json.loads(json.dumps(value)), sort_keys=True, separators=(",", ":")).encode()


SourceKind = Literal["iid", "rerandomized"]


class TicketSizes(TypedDict):
    """What :meth:`Ticket.sizes` reports (kept + pruned = source)."""

    target_params: int  # weights and biases of the target's linear/conv layers
    source_params: int  # every entry of the random tensors (U, beta, V)
    kept_params: int  # source entries whose mask is True
    pruned_params: int  # source entries whose mask is False (zero in the network)
    source_kind: SourceKind  # iid: every tensor its law at draw 0; rerandomized: some unit kept a later draw
    examined_values: int | None  # random values drawn and compared, discarded draws included; None = not recorded


_KNOWN_OPS = {"pair", "layer", "relu", "maxpool2d", "avgpool2d", "flatten"}


def unit_of_step(step: dict[str, Any]) -> int | None:
    """The unit a step names (``{"op": "pair", "pair": k}`` or ``{"op": "layer", "unit": k}``), else None."""
    if step.get("op") == "pair":
        return step.get("pair")
    if step.get("op") == "layer":
        return step.get("unit")
    return None


def _check_steps(steps: Any, units: list[Unit]) -> list[dict[str, Any]]:
    """The network's sequence must name every unit once, in order, each by its kind's step (a pair by
    ``pair``, a layer by ``layer``), and otherwise only known modules."""
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise TicketFormatError("the manifest's steps must be a list of objects")
    named = [unit_of_step(step) for step in steps if step.get("op") in ("pair", "layer")]
    if named != list(range(len(units))):
        raise TicketFormatError(f"the steps name units {named}, expected each of 0..{len(units) - 1} once, in order")
    for step in steps:
        if step.get("op") not in _KNOWN_OPS:
            raise TicketFormatError(f"unknown step {step.get('op')!r} in the ticket")
        k = unit_of_step(step)
        if k is None:
            module_from_step(step)  # raises TicketFormatError when malformed
        elif (step["op"] == "layer") != isinstance(units[k], LayerLayout):
            raise TicketFormatError(f"step {step['op']!r} names unit {k}, which is not a {step['op']}")
    return steps


def _read_file(path: Path) -> tuple[dict[str, np.ndarray], Any]:
    """The mask/draw blobs of a ticket file and its parsed manifest, read through safetensors' own parser.

    ``safetensors.safe_open`` refuses a header over 100 MB, a header length beyond the file, invalid JSON or
    UTF-8, metadata values that are not strings, tensors whose offsets overlap, leave bytes uncovered or disagree
    with their shape, and shapes whose size overflows. On top of that a ticket must be a regular file of at most
    :data:`MAX_TICKET_BYTES` and hold nothing but 1-D uint8 blobs; their sizes are checked before any is read.

    Raises:
        TicketFormatError: unreadable, not a regular file, too large, not safetensors, or no JSON manifest.
    """
    from safetensors import SafetensorError, safe_open

    try:
        info = path.stat()
    except OSError as exc:
        raise TicketFormatError(f"cannot read ticket {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise TicketFormatError(f"cannot read ticket {path}: not a regular file")
    if info.st_size > MAX_TICKET_BYTES:
        raise TicketFormatError(f"{path} is {info.st_size:,} bytes; a ticket is at most {MAX_TICKET_BYTES:,}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            if "manifest" not in metadata:
                raise TicketFormatError(f"{path} is not a ticketsolver ticket (no manifest in its metadata)")
            blobs = {name: f.get_slice(name) for name in f.keys()}
            if any(blob.get_dtype() != "U8" or len(blob.get_shape()) != 1 for blob in blobs.values()):
                raise TicketFormatError(
                    f"{path} is not a ticketsolver ticket (it holds tensors other than uint8 blobs)"
                )
            # the file may have grown since stat(): its tensors are what would be copied into memory
            stored = sum(blob.get_shape()[0] for blob in blobs.values())
            if stored > MAX_TICKET_BYTES:
                raise TicketFormatError(
                    f"{path} holds {stored:,} bytes of tensors; a ticket is at most {MAX_TICKET_BYTES:,}"
                )
            tensors = {name: f.get_tensor(name) for name in blobs}
        manifest = json.loads(metadata["manifest"])
    except TicketFormatError:
        raise
    except SafetensorError as exc:
        raise TicketFormatError(f"{path} is not a ticketsolver ticket ({exc})") from exc
    except ValueError as exc:  # the manifest is not JSON
        raise TicketFormatError(f"{path} is not a ticketsolver ticket (manifest: {exc})") from exc
    except OSError as exc:
        raise TicketFormatError(f"cannot read ticket {path}: {exc.strerror or exc}") from exc
    return tensors, manifest


class Ticket:
    """A strong lottery ticket: seed + layouts + masks (+ draws) of a pruned random network.

    Build one with :func:`ticketsolver.build_ticket`, or read one with :meth:`load`.

    Attributes:
        seed: the random source's seed.
        input_shape: per-sample input shape of the network.
        input_domain: the declared input box (lo, hi), or None.
        steps: the network's sequence: ``{"op": "pair", "pair": k}``, ``{"op": "layer", "unit": k}`` or a kept
            module (relu, pools, flatten).
        layouts: one unit per pair or layer: a :class:`PairLayout` (construction) or a :class:`LayerLayout`
            (learned mask).
        masks: per unit, tensor name -> bool array (True = kept): ``U``, ``beta``, ``V`` of a pair, ``weight``,
            ``bias`` of a layer; in the held shapes (an L pair's U as its block diagonal (d_in, n),
            :meth:`PairLayout.mask_shapes`; :meth:`dense_masks` gives the dense view).
        draws: per unit, uint8 draw indices, shaped as its ``draw_shape`` says (a pair: per block unit; a
            layer: per entry).
        build: the build's (or the mask learning's) configuration and statistics.
    """

    def __init__(
        self,
        *,
        seed: int,
        input_shape: tuple[int, ...],
        input_domain: tuple[float, float] | None,
        steps: list[dict[str, Any]],
        layouts: Sequence[Unit],
        masks: list[dict[str, np.ndarray]],
        draws: list[np.ndarray],
        build: dict[str, Any],
    ) -> None:
        self.seed = int(seed)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.input_domain = None if input_domain is None else (float(input_domain[0]), float(input_domain[1]))
        self.steps = steps
        self.layouts: list[Unit] = list(layouts)
        self.masks = masks
        self.draws = draws
        self.build = build
        self._kept_hash: str | None = None
        self._graph: GraphSpec | None = None
        self._held: dict[int, dict[str, np.ndarray]] = {}  # regenerated random tensors, held form, per unit
        self._sources: dict[int, dict[str, np.ndarray]] = {}  # their dense view, per unit (shares the held arrays)
        self._source_params: dict[int, int] = {}  # per unit: its source params (a sparse pair's ER nonzeros)

    @property
    def source(self) -> RandomSource:
        return RandomSource(self.seed)

    # -- the network ------------------------------------------------------------------------------------

    def held_tensors(self, pair: int) -> dict[str, np.ndarray]:
        """The random tensors of unit ``pair`` in the masks' shapes (draws applied, 0 outside the ER masks of a
        sparse source): its dense view but for an L pair's U, held as its block diagonal (d_in, n), the only entries
        its mask can keep (:meth:`PairLayout.held_tensors`). Regenerated once, then kept (read-only)."""
        if pair not in self._held:
            layout = self.layouts[pair]
            if isinstance(layout, PairLayout) and layout.sparse:
                er = layout.er_masks(self.source)
                self._held[pair] = _read_only(layout.held_tensors(self.source, self.draws[pair], er))
                self._source_params.setdefault(pair, layout.source_params(er))
            else:
                self._held[pair] = _read_only(layout.held_tensors(self.source, self.draws[pair]))
        return self._held[pair]

    def source_tensors(self, pair: int) -> dict[str, np.ndarray]:
        """The random tensors of unit ``pair`` in their dense view, as a dense network holds them (draws applied, 0
        outside the ER masks of a sparse source), before masking. An L pair's U is drawn whole here (d_in·n + bias
        rows of d_in): graph networks and the kept hash use :meth:`held_tensors` instead."""
        if pair not in self._sources:
            layout = self.layouts[pair]
            held = self.held_tensors(pair)
            if isinstance(layout, PairLayout):
                self._sources[pair] = _read_only(layout.dense_tensors(dict(held), self.source))
            else:
                self._sources[pair] = held
        return self._sources[pair]

    def dense_masks(self, pair: int) -> dict[str, np.ndarray]:
        """Unit ``pair``'s masks in the dense view of its tensors (an L pair's U expanded from its diagonal)."""
        layout = self.layouts[pair]
        return layout.dense_masks(self.masks[pair]) if isinstance(layout, PairLayout) else self.masks[pair]

    def er_masks(self, pair: int) -> dict[str, np.ndarray]:
        """The ER masks (True = the entry exists) of unit ``pair``'s sparse tensors; empty for a dense source.
        Regenerated from the seed on each call (not kept: a bool mask would add a quarter to the source's memory)."""
        layout = self.layouts[pair]
        return layout.er_masks(self.source) if isinstance(layout, PairLayout) else {}

    def source_params(self, pair: int) -> int:
        """Unit ``pair``'s source params: every entry of its random tensors; of a sparse source, its ER nonzeros."""
        if pair not in self._source_params:
            layout = self.layouts[pair]
            if isinstance(layout, PairLayout):
                self._source_params[pair] = layout.source_params(self.er_masks(pair) if layout.sparse else None)
            else:
                self._source_params[pair] = layout.source_params()
        return self._source_params[pair]

    def candidates(self, pair: int) -> dict[str, np.ndarray]:
        """Where unit ``pair``'s masks may keep an entry: its construction's positions, inside the ER masks of a
        sparse source (see :meth:`PairLayout.candidates`)."""
        layout = self.layouts[pair]
        if isinstance(layout, PairLayout) and layout.sparse:
            return layout.candidates(self.held_tensors(pair), self.er_masks(pair))
        return layout.candidates(self.held_tensors(pair))

    @property
    def learned(self) -> bool:
        """True for a learned-mask ticket (its units are single random layers), False for a constructed one
        (pairs, or the stages of a depth-L+1 build)."""
        return self.depth == "learned"

    @property
    def depth(self) -> str:
        """``"2L"`` (a pair per target layer), ``"L+1"`` (docs/design.md section 2.9) or ``"learned"``."""
        config = self.build.get("config")
        recorded = config.get("depth") if isinstance(config, dict) else None
        if recorded == "L+1":
            return "L+1"
        return "learned" if any(isinstance(layout, LayerLayout) for layout in self.layouts) else "2L"

    @property
    def graph(self) -> GraphSpec | None:
        """The graph of a ticket built from a graph target (``build["graph"]``, checked), None for a chain."""
        raw = self.build.get("graph")
        if raw is None:
            return None
        if self._graph is None:
            spec = GraphSpec.from_dict(raw)
            pairs = [p for unit in spec.units for p in unit.pairs]
            if pairs != list(range(len(self.layouts))) or any(not isinstance(u, PairLayout) for u in self.layouts):
                raise TicketFormatError("the graph's units must name every pair once, in order")
            self._graph = spec
        return self._graph

    def random_layers(self) -> int:
        """Weight layers of the random network g: two per pair, one per layer unit."""
        return sum(2 if isinstance(layout, PairLayout) else 1 for layout in self.layouts)

    def copy_plans(self) -> list[CopyPlan] | None:
        """The copy structure of each stage of a depth-L+1 ticket (None for any other), checked against its units."""
        if self.depth != "L+1":
            return None
        raw = self.build.get("copies")
        if not isinstance(raw, list) or len(raw) != len(self.layouts):
            raise TicketFormatError("a depth-L+1 ticket must record one copy plan per unit")
        plans = [CopyPlan.from_dict(entry) for entry in raw]
        for k, (plan, layout) in enumerate(zip(plans, self.layouts, strict=True)):
            first = isinstance(layout, PairLayout)
            if plan.unit != k or first != (k == 0) or layout.d_out != plan.rows:
                raise TicketFormatError(f"unit {k}: its copy plan does not match its layout")
            if not first and layout.d_in != plan.channels * plan.positions:
                raise TicketFormatError(f"unit {k}: its copy plan does not match its layout's inputs")
        return plans

    def unit_module(self, k: int, prune_buffers: bool = False) -> nn.Module:
        """Unit ``k`` materialised: a :class:`PrunedPair` or a pruned ``nn.Linear``/``nn.Conv2d``; an L pair of a
        graph's conv or Linear as an :class:`OffsetPair` (its first layer a grouped conv of U's diagonal, U never
        whole) unless ``prune_buffers`` asks for the whole source."""
        layout = self.layouts[k]
        if not prune_buffers and self.runs_held(k):
            assert isinstance(layout, PairLayout)
            return OffsetPair.from_held(layout, self.held_tensors(k), self.masks[k])
        return layout.to_module(self.source_tensors(k), self.masks[k], prune_buffers)

    def runs_held(self, k: int) -> bool:
        """Whether pair ``k`` runs as an :class:`OffsetPair`: an L pair of a graph's conv or Linear unit (an
        embedding's pair stays a gather over its dense first layer, a tensor unit's a pair on a constant 1)."""
        graph = self.graph
        if graph is None or not OffsetPair.holds(self.layouts[k]):
            return False
        return any(k in unit.pairs and unit.kind in ("conv", "linear") for unit in graph.units)

    def pairs(self, prune_buffers: bool = False) -> Iterator[PrunedPair]:
        """The pruned pairs, in order (a learned ticket has none)."""
        for k, layout in enumerate(self.layouts):
            if isinstance(layout, PairLayout):
                yield layout.to_module(self.source_tensors(k), self.masks[k], prune_buffers)

    def to_module(self, prune_buffers: bool = False) -> nn.Module:
        """The pruned random network (float32, eval mode): a plain ``nn.Sequential`` for a chain, a
        :class:`~ticketsolver.graph.GraphNetwork` of pair units for a graph.

        Args:
            prune_buffers: keep each random tensor whole as ``weight_orig`` with its ``weight_mask``
                (``torch.nn.utils.prune``) instead of plain pruned weights.
        """
        graph = self.graph
        if graph is not None:
            units = [PairUnit(unit, [self.unit_module(p, prune_buffers) for p in unit.pairs]) for unit in graph.units]
            return GraphNetwork(graph, units).eval()
        plans = self.copy_plans()
        if plans is not None:
            return self._shallow_module(plans, prune_buffers)
        modules: list[nn.Module] = []
        for step in self.steps:
            k = unit_of_step(step)
            modules.append(module_from_step(step) if k is None else self.unit_module(int(k), prune_buffers))
        return nn.Sequential(*modules).eval()

    def _shallow_module(self, plans: list[CopyPlan], prune_buffers: bool) -> nn.Sequential:
        """A depth-L+1 network: each unit wrapped in its :class:`CopyStage`, whose input constants are computed
        from the stages before it (their constant rows, through the ReLUs in between)."""
        import torch

        modules: list[nn.Module] = []
        constants = torch.zeros(0, dtype=torch.float64)
        for step in self.steps:
            k = unit_of_step(step)
            if k is None:
                module = module_from_step(step)
                if isinstance(module, nn.ReLU):
                    constants = constants.clamp(min=0)
                modules.append(module)
                continue
            plan = plans[int(k)]
            if constants.numel() != plan.constants_in:
                raise TicketFormatError(
                    f"unit {k}: {constants.numel()} constants reach it, its plan expects {plan.constants_in}"
                )
            stage = CopyStage(self.unit_module(int(k), prune_buffers), plan, constants)
            constants = stage.constants_out()
            modules.append(stage)
        return nn.Sequential(*modules).eval()

    # -- sizes --------------------------------------------------------------------------------------------

    def sizes(self) -> TicketSizes:
        """Parameter counts (target, random source, kept = mask True, pruned), the source kind and the number
        of random values the build examined.

        ``source_kind`` is ``"iid"`` when no unit carries a draw index above 0 (one i.i.d. random network), else
        ``"rerandomized"`` (construction: redrawn knowing the target; IteRand: redrawn while learning the task).
        ``examined_values`` sums :meth:`examined_values` over the units; it is None when a rerandomized pair's
        build did not record its count.
        """
        source = sum(self.source_params(k) for k in range(len(self.layouts)))
        kept = sum(int(m.sum()) for masks in self.masks for m in masks.values())
        examined = [self.examined_values(k) for k in range(len(self.layouts))]
        return {
            "target_params": int(self.build.get("target_params", 0)),
            "source_params": source,
            "kept_params": kept,
            "pruned_params": source - kept,
            "source_kind": "rerandomized" if any(d.any() for d in self.draws) else "iid",
            "examined_values": None if None in examined else sum(v for v in examined if v is not None),
        }

    def examined_values(self, pair: int) -> int | None:
        """Random values the build drew and compared for unit ``pair``, discarded draws included.

        The builder's record (``build["pairs"][pair]["examined_values"]``, one entry per unit) where there is
        one; else, for a pure unit (every draw index 0), exactly its source params (:meth:`source_params`); else None:
        a rerandomized
        pair whose count was not recorded is unknown (its draw indices say which draw was kept, not how many
        were compared).
        """
        pairs = self.build.get("pairs")
        stats = pairs[pair] if isinstance(pairs, list) and pair < len(pairs) and isinstance(pairs[pair], dict) else {}
        recorded = stats.get("examined_values")
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            return recorded
        return None if self.draws[pair].any() else self.source_params(pair)

    def kept_hash(self) -> str:
        """SHA-256 of the network: its structure (input shape, steps, layouts as JSON) and every kept value
        (float32, C order, 0 where pruned), unit by unit, tensors in the unit's ``tensor_names`` order (U, beta, V
        of a pair; weight, bias of a layer), each in its dense view (an L pair's U streamed from its held diagonal,
        :meth:`PairLayout.kept_bytes`: the same bytes)."""
        if self._kept_hash is None:
            structure = {
                "input_shape": list(self.input_shape),
                "steps": self.steps,
                "pairs": [layout.to_dict() for layout in self.layouts],
            }
            digest = hashlib.sha256(json.dumps(structure, sort_keys=True).encode())
            for k, layout in enumerate(self.layouts):
                tensors = self.held_tensors(k)
                for name in layout.tensor_names:
                    if name not in tensors:
                        continue
                    digest.update(name.encode())
                    for chunk in layout.kept_bytes(name, tensors[name], self.masks[k][name]):  # L's U streamed
                        digest.update(chunk)
            self._kept_hash = digest.hexdigest()
        return self._kept_hash

    def build_hash(self) -> str:
        """SHA-256 of what :meth:`kept_hash` leaves out but a report states: the canonical JSON of the build
        section (configuration and statistics) and of :meth:`sizes`, then every pair's draw indices (uint8)."""
        digest = hashlib.sha256(_canonical_json({"build": self.build, "sizes": self.sizes()}))
        for k, draws in enumerate(self.draws):
            digest.update(f"pair{k}.draws".encode())
            digest.update(np.ascontiguousarray(draws, dtype=np.uint8).tobytes())
        return digest.hexdigest()

    def _check_statistics(self, manifest: dict[str, Any], path: Path) -> None:
        """Refuse a manifest whose recorded statistics are not this ticket's: sizes and resampled flags are
        recomputed and compared, the build section is checked against build_sha256, and a recorded
        examined_values must be at least the pair's source (exactly it for a pure pair)."""
        sizes = self.sizes()
        stored = manifest.get("sizes")
        if not isinstance(stored, dict) or stored != sizes:
            differ = (
                ", ".join(
                    f"{key} {stored.get(key)!r} stored, {value!r} recomputed"
                    for key, value in sizes.items()
                    if stored.get(key) != value
                )
                if isinstance(stored, dict)
                else "missing"
            )
            raise TicketFormatError(f"{path}: the manifest's sizes do not match the ticket ({differ or 'extra keys'})")
        if manifest.get("resampled") != [bool(d.any()) for d in self.draws]:
            raise TicketFormatError(f"{path}: the manifest's resampled flags do not match the stored draw indices")
        for k in range(len(self.layouts)):
            recorded, source, pure = self.examined_values(k), self.source_params(k), not self.draws[k].any()
            if recorded is not None and (recorded < source or (pure and recorded != source)):
                rule = "a pure pair examines exactly its source" if pure else "every source value is examined"
                raise TicketFormatError(
                    f"{path}: pair {k} records examined_values {recorded:,} for a source of {source:,} values ({rule})"
                )
        if self.build_hash() != manifest.get("build_sha256"):
            raise TicketFormatError(
                f"{path}: the build statistics do not match the stored build_sha256 "
                "(edited or corrupted build section, sizes or draw indices)"
            )

    # -- file format -----------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": _package_version(),
            "numpy_version": np.__version__,
            "seed": self.seed,
            "rng": RNG_LAYOUT,
            "input_shape": list(self.input_shape),
            "input_domain": None if self.input_domain is None else list(self.input_domain),
            "steps": self.steps,
            "pairs": [layout.to_dict() for layout in self.layouts],
            "resampled": [bool(d.any()) for d in self.draws],
            "mask_encoding": (
                "bits of the bool mask (dense-view shape, C order) at the construction's candidate positions only "
                "(O: U > 0, beta > 0, V block diagonal; I: U block diagonal, beta > 0 on the bias block, V all; "
                "L: U block diagonal of the input blocks, beta > 0, V all; a learned layer: every entry), "
                "numpy.packbits, LZMA-compressed"
            ),
            "counting": "kept = mask True; pruned = mask False (zero in the network); source = all entries",
            "sizes": self.sizes(),
            "build": self.build,
            "kept_values_sha256": self.kept_hash(),  # covers the structure too (see kept_hash)
            "build_sha256": self.build_hash(),  # covers build, sizes and draws (see build_hash)
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the ticket (safetensors) atomically; returns the path."""
        from safetensors.numpy import save_file

        tensors: dict[str, np.ndarray] = {}
        for k, masks in enumerate(self.masks):
            allowed = self.candidates(k)
            for name, mask in masks.items():
                if (mask & ~allowed[name]).any():
                    raise TicketFormatError(f"unit {k}: mask {name} keeps an entry its construction forbids")
                tensors[f"pair{k}.{name}.mask"] = _pack(mask[allowed[name]])
            if self.draws[k].any():
                tensors[f"pair{k}.draws"] = _pack(self.draws[k])
        from safetensors import SafetensorError

        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            save_file(tensors, str(tmp), metadata={"manifest": json.dumps(self.manifest())})
            os.replace(tmp, path)
        except SafetensorError as exc:  # its I/O failures are not OSErrors; say what could not be written
            raise OSError(f"cannot write the ticket to {path}: {exc}") from exc
        return path

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], verify_hash: bool = True, max_source_params: int = MAX_SOURCE_PARAMS
    ) -> Ticket:
        """Read a ticket, regenerate its network and check the network's hash.

        Args:
            path: the ticket file.
            verify_hash: check the stored SHA-256 of the structure and kept values, and the recorded statistics:
                sizes recomputed, build section and draws against ``build_sha256`` (default True).
            max_source_params: refuse tickets whose random source is larger, before regenerating anything.

        Raises:
            TicketFormatError: not a ticket, unknown format version, malformed or inconsistent entries, a
                source beyond ``max_source_params``, a hash mismatch, or statistics that are not the ticket's.
        """
        path = Path(path)
        tensors, manifest = _read_file(path)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise TicketFormatError(f"{path} is not a ticketsolver ticket")
        version = manifest.get("format_version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise TicketFormatError(
                f"{path} has format version {version}; this ticketsolver reads "
                f"{' and '.join(map(str, READABLE_VERSIONS))}"
            )
        try:
            if not isinstance(manifest["pairs"], list):
                raise TicketFormatError("the manifest's pairs must be a list")
            layouts = [PairLayout.from_dict(p) if version == 3 else unit_from_dict(p) for p in manifest["pairs"]]
            numbers = [layout.pair if isinstance(layout, PairLayout) else layout.unit for layout in layouts]
            if numbers != list(range(len(layouts))):
                raise TicketFormatError("the manifest's units must be numbered 0, 1, ... in order")
            steps = _check_steps(manifest["steps"], layouts)
            # what is regenerated: every held entry (an L pair's U only as its diagonal; a sparse source's tensors
            # whole, 0 outside its ER masks)
            claimed = sum(
                layout.held_params() if isinstance(layout, PairLayout) else layout.source_params() for layout in layouts
            )
            if claimed > max_source_params:
                raise TicketFormatError(
                    f"{path} describes a random source that regenerates {claimed:,} values "
                    f"(limit {max_source_params:,})"
                )
            # Cheap consistency first: blobs whose length the layout alone fixes are checked before any
            # random tensor is regenerated, so a manifest claiming another size is refused without allocating it.
            for k, layout in enumerate(layouts):
                for name, count in layout.structural_candidate_counts().items():
                    _unpack(tensors[f"pair{k}.{name}.mask"], count, True, f"pair {k} mask {name}")
            masks, draws, sources, counts = [], [], [], {}
            source = RandomSource(int(manifest["seed"]))
            for k, layout in enumerate(layouts):
                key = f"pair{k}.draws"
                draws.append(
                    _unpack(tensors[key], math.prod(layout.draw_shape), False, f"pair {k} draws").reshape(
                        layout.draw_shape
                    )
                    if key in tensors
                    else np.zeros(layout.draw_shape, dtype=np.uint8)
                )
                if isinstance(layout, PairLayout) and layout.sparse:
                    er = layout.er_masks(source)  # used here, then dropped (see Ticket.er_masks)
                    sources.append(_read_only(layout.held_tensors(source, draws[k], er)))
                    allowed = layout.candidates(sources[k], er)
                    counts[k] = layout.source_params(er)
                else:
                    sources.append(_read_only(layout.held_tensors(source, draws[k])))
                    allowed = layout.candidates(sources[k])
                pair_masks = {}
                for name in allowed:
                    bits = _unpack(
                        tensors[f"pair{k}.{name}.mask"], int(allowed[name].sum()), True, f"pair {k} mask {name}"
                    )
                    mask = np.zeros(allowed[name].shape, dtype=bool)
                    mask[allowed[name]] = bits
                    pair_masks[name] = mask
                masks.append(pair_masks)
            domain = manifest["input_domain"]
            ticket = cls(
                seed=int(manifest["seed"]),
                input_shape=tuple(manifest["input_shape"]),
                input_domain=None if domain is None else (float(domain[0]), float(domain[1])),
                steps=steps,
                layouts=layouts,
                masks=masks,
                draws=draws,
                build=dict(manifest.get("build", {})),
            )
            ticket._held = dict(enumerate(sources))
            ticket._source_params = counts
        except KeyError as exc:
            raise TicketFormatError(f"{path}: missing entry {exc} in the ticket") from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise TicketFormatError(f"{path}: malformed ticket ({exc})") from exc
        if verify_hash and ticket.kept_hash() != manifest.get("kept_values_sha256"):
            raise TicketFormatError(
                f"{path}: the regenerated network does not match the stored hash "
                "(corrupted masks or manifest, or a different random generator)"
            )
        if verify_hash:
            ticket._check_statistics(manifest, path)
        ticket.copy_plans()  # a depth-L+1 ticket's plans must match its units (TicketFormatError otherwise)
        _ = ticket.graph  # a graph ticket's units must name its pairs (TicketFormatError otherwise)
        return ticket

    def __repr__(self) -> str:
        s = self.sizes()
        units = (
            f"layers={len(self.layouts)}, learned"
            if self.learned
            else f"pairs={len(self.layouts)}, n={[getattr(layout, 'n', None) for layout in self.layouts]}"
        )
        return f"Ticket({units}, seed={self.seed}, kept={s['kept_params']:,}/{s['source_params']:,})"
