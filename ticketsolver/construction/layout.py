"""The layout of one pair's random tensors: shapes, how draws replace blocks, and materialisation.

Everything here is a pure function of the manifest entry and the seed, so the builder (which chooses the
masks) and :meth:`Ticket.load` (which regenerates them) share one definition. Tensors use a *dense view*:
a target layer is a matrix W of shape (d_out, d_in) with d_in = c_in * kh * kw for a conv, and

- output blocks (O): U (d_out·n, d_in), beta (d_out·n), V (d_out, d_out·n); hidden unit (l, t) = l·n + t;
- input blocks (I): U (H, d_in), beta (H), V (d_out, H) with H = (d_in + has_bias)·n; hidden unit
  (j, t) = j·n + t, and block j = d_in (when the target has a bias) is the bias block.
- offset blocks (L): U (H, d_in), beta (H), V (d_out, H) with H = d_in·n + bias_units; hidden unit
  (j, t) = j·n + t for the input blocks, then the ``bias_units`` units of the bias block. beta follows the
  non-negative law (uniform on [0, scale]) and exists whether or not the target has a bias.

A conv's U is that matrix reshaped to (hidden, c_in, kh, kw) and V to (d_out, hidden, 1, 1).

*Held form.* Construction L can keep only U's block diagonal U[(j, t), j] (every other entry of U is pruned by
construction), so masks and solutions hold L's U mask as that diagonal, shape (d_in, n): entry [j, t] keeps
U[j·n + t, j] (:meth:`PairLayout.mask_shapes`), and :meth:`PairLayout.held_tensors` regenerates U's values in the
same form (:meth:`PairLayout.offset_diagonal`, a d_in-th of U). Every other tensor is held in its dense view. The
dense view of either is :meth:`PairLayout.dense_mask` / :meth:`PairLayout.dense_tensors`; the kept values of a held
tensor stream out in the dense view's bytes (:meth:`PairLayout.kept_bytes`), so a ResNet-18's 2.8e9 entries of U are
never materialised to hash or save its ticket.

An Erdős–Rényi sparse source (``densities``, :mod:`ticketsolver.construction.sparsity`) gives U and V each a
density p < 1: only the entries of the tensor's ER mask exist (regenerated from the seed like the values), the
tensors hold 0 elsewhere, and no mask may keep an entry outside it. A dense layout (no densities) draws no ER mask.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import skip_init

from ticketsolver.construction.pair import Construction, PrunedPair
from ticketsolver.construction.steps import as_pair
from ticketsolver.errors import ConstructionError, TicketFormatError
from ticketsolver.source import Law, RandomSource

__all__ = ["ConvGeometry", "DrawCache", "PairLayout", "empty_layer", "set_masked"]

#: dense-view float32 entries per chunk when a held tensor's kept values stream out (:meth:`PairLayout.kept_bytes`)
KEPT_CHUNK = 1 << 22


@dataclass(frozen=True)
class ConvGeometry:
    """The target conv's geometry, copied to the first random layer (the second is 1x1)."""

    in_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    @classmethod
    def of(cls, module: nn.Module) -> ConvGeometry | None:
        """The geometry of a conv (None for anything else, e.g. a Linear)."""
        if not isinstance(module, nn.Conv2d):
            return None
        return cls(
            in_channels=int(module.in_channels),
            kernel_size=tuple(as_pair(module.kernel_size)),  # type: ignore[arg-type]
            stride=tuple(as_pair(module.stride)),  # type: ignore[arg-type]
            padding=tuple(as_pair(module.padding)),  # type: ignore[arg-type]
            dilation=tuple(as_pair(module.dilation)),  # type: ignore[arg-type]
        )

    @classmethod
    def one_by_one(cls, channels: int) -> ConvGeometry:
        """A pair's second layer V: a 1x1 conv over ``channels`` hidden channels."""
        return cls(channels, (1, 1), (1, 1), (0, 0), (1, 1))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> ConvGeometry:
        """Parse a manifest entry; anything but the five fields of integers raises KeyError/TypeError/ValueError."""
        return cls(
            in_channels=int(data["in_channels"]),
            **{k: _int_pair(data[k]) for k in ("kernel_size", "stride", "padding", "dilation")},
        )


@dataclass(frozen=True)
class PairLayout:
    """Shapes, scales and construction of the two random layers that replace target layer ``pair``."""

    pair: int  # ordinal of the target's linear/conv layer; part of every stream key
    construction: Construction
    kind: Literal["linear", "conv2d"]
    d_out: int
    d_in: int
    n: int
    has_bias: bool
    scales: dict[str, float] = field(default_factory=dict)  # per random tensor: U, beta, V
    conv: ConvGeometry | None = None
    bias_units: int = 0  # construction L: width of the bias block (it cancels the offsets' constants)
    # Erdős–Rényi sparse source: density of U and of V (beta stays dense); empty = a dense source
    densities: dict[str, float] = field(default_factory=dict)

    #: the random tensors, in the order the ticket's hash reads them
    tensor_names: ClassVar[tuple[str, ...]] = ("U", "beta", "V")
    #: the tensors an ER sparse source may thin out (the random layers' weights; biases stay dense)
    sparse_names: ClassVar[tuple[str, ...]] = ("U", "V")

    @property
    def hidden(self) -> int:
        if self.construction == "output_blocks":
            return self.d_out * self.n
        if self.construction == "offset_blocks":
            return self.d_in * self.n + self.bias_units
        return (self.d_in + int(self.has_bias)) * self.n

    @property
    def first_has_bias(self) -> bool:
        """Whether the first random layer has a bias (beta): L always (its offsets), O and I with the target."""
        return self.has_bias or self.construction == "offset_blocks"

    def law(self, name: str) -> Law:
        """The law of random tensor ``name``: L's beta is uniform on [0, scale], every other tensor on
        [-scale, scale]."""
        return "nonnegative" if name == "beta" and self.construction == "offset_blocks" else "symmetric"

    @property
    def draw_shape(self) -> tuple[int, int]:
        """Shape of the draw indices, columns = the d_in weights of a row, then the bias.

        O: one row per output: the draw of each weight's (and the bias's) unit. I: rows 0..d_out-1 hold
        the draws of the weights' x+ problems (and of the biases), rows d_out..2·d_out-1 those of their x-
        problems (bias column unused, 0), and the last row the draw of each input block's U rows and of
        the bias block's beta (see input_blocks).
        """
        rows = self.d_out if self.construction == "output_blocks" else 2 * self.d_out + 1
        return (rows, self.d_in + int(self.has_bias))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Dense-view shapes of the random tensors (beta only where the target has a bias)."""
        shapes: dict[str, tuple[int, ...]] = {"U": (self.hidden, self.d_in), "V": (self.d_out, self.hidden)}
        if self.first_has_bias:
            shapes["beta"] = (self.hidden,)
        return shapes

    def weight_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the two random layers' weights as torch holds them (a conv's with its kernel): what the
        density policies of :mod:`~ticketsolver.construction.sparsity` read."""
        if self.conv is None:
            return {"U": (self.hidden, self.d_in), "V": (self.d_out, self.hidden)}
        return {"U": (self.hidden, self.conv.in_channels, *self.conv.kernel_size), "V": (self.d_out, self.hidden, 1, 1)}

    @property
    def sparse(self) -> bool:
        """True for an Erdős–Rényi sparse source (some tensor's density below 1)."""
        return any(d < 1.0 for d in self.densities.values())

    def density(self, name: str) -> float:
        """The ER density of random tensor ``name`` (1.0: every entry exists)."""
        return self.densities.get(name, 1.0)

    def er_masks(self, source: RandomSource) -> dict[str, np.ndarray]:
        """The ER masks (True = the entry exists) of the tensors whose density is below 1; none for a dense source.
        Regenerated from the seed (their own streams, see :meth:`RandomSource.er_mask`), the same for every draw."""
        shapes = self.shapes()
        return {
            name: source.er_mask(self.pair, name, shapes[name], self.density(name))
            for name in self.sparse_names
            if self.density(name) < 1.0
        }

    def dense_params(self) -> int:
        """Every entry of the dense-view tensors: what regenerating them takes in memory (float32 each)."""
        # Python ints: np.prod would wrap around in int64 for absurd (forged) shapes
        return sum(math.prod(s) for s in self.shapes().values())

    def source_params(self, er: dict[str, np.ndarray] | None = None) -> int:
        """The random source's parameters: every entry of U, beta, V; of an ER sparse tensor only the entries that
        exist, counted from ``er`` (:meth:`er_masks`, required for a sparse layout)."""
        if not self.sparse:
            return self.dense_params()
        if er is None or set(er) != {name for name in self.sparse_names if self.density(name) < 1.0}:
            raise ConstructionError(f"pair {self.pair}: counting a sparse source needs its ER masks")
        return sum(
            int(np.count_nonzero(er[name])) if name in er else math.prod(shape) for name, shape in self.shapes().items()
        )

    # -- the held form (module docstring) ---------------------------------------------------------------

    def compact(self, name: str) -> bool:
        """Whether tensor ``name`` is held compactly: construction L's U, as its block diagonal (d_in, n)."""
        return name == "U" and self.construction == "offset_blocks"

    def mask_shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes of the masks (and held tensors) as solutions and tickets hold them: :meth:`shapes`, except L's U,
        held as its block diagonal (d_in, n) — entry [j, t] stands for U[j·n + t, j]."""
        shapes = self.shapes()
        if self.construction == "offset_blocks":
            shapes["U"] = (self.d_in, self.n)
        return shapes

    def held_params(self) -> int:
        """Entries regenerated to hold the pair (:meth:`held_tensors`; a sparse source also draws its ER masks
        whole, so there the dense count): what loading its ticket costs in memory, float32 each."""
        if self.sparse:
            return self.dense_params()
        return sum(math.prod(s) for s in self.mask_shapes().values())

    def _diagonal(self) -> tuple[np.ndarray, slice, np.ndarray]:
        """Index of U's block diagonal in U's dense view reshaped to (d_in, n, d_in)[: d_in·n rows]."""
        cols = np.arange(self.d_in)
        return (cols, slice(None), cols)

    def dense_mask(self, name: str, mask: np.ndarray) -> np.ndarray:
        """Mask ``name`` in its dense view (:meth:`shapes`): L's U expanded from its diagonal, else ``mask`` itself
        (also a mask already dense: the two shapes of L's U never coincide, hidden > d_in)."""
        if not self.compact(name) or mask.shape == self.shapes()[name]:
            return mask
        d_in, n = self.d_in, self.n
        dense = np.zeros((self.hidden, d_in), dtype=bool)
        dense[: d_in * n].reshape(d_in, n, d_in)[self._diagonal()] = mask
        return dense

    def dense_masks(self, masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every mask in its dense view (:meth:`dense_mask`)."""
        return {name: self.dense_mask(name, mask) for name, mask in masks.items()}

    def held_tensors(
        self, source: RandomSource, draws: np.ndarray | None = None, er: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The random tensors in the masks' shapes (:meth:`mask_shapes`): :meth:`source_tensors`, with L's U as its
        block diagonal (:meth:`offset_diagonal`, 0 outside a sparse source's ER mask) and without drawing U whole."""
        if self.construction != "offset_blocks":
            return self.source_tensors(source, draws, er)
        if draws is not None and draws.any():
            raise TicketFormatError(f"pair {self.pair}: construction L is built from draw 0 only; it has no draws")
        tensors = {name: self.tensor(source, name) for name in ("beta", "V")}
        if self.density("V") < 1.0:
            exists = (
                er["V"]
                if er is not None and "V" in er
                else source.er_mask(self.pair, "V", self.shapes()["V"], self.density("V"))
            )
            tensors["V"][~exists] = 0.0
        return {"U": self.offset_diagonal(source), **tensors}

    def dense_tensors(
        self, held: dict[str, np.ndarray], source: RandomSource, er: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The dense view of held tensors (:meth:`held_tensors`): L's U drawn whole (0 outside a sparse source's ER
        mask, ``er`` or regenerated), every other tensor as held (the same arrays)."""
        if self.construction != "offset_blocks":
            return held
        u = self.tensor(source, "U")
        if self.density("U") < 1.0:
            u[~(er["U"] if er is not None and "U" in er else self.er_masks(source)["U"])] = 0.0
        return {**held, "U": u}

    def kept_bytes(self, name: str, held: np.ndarray, mask: np.ndarray) -> Iterator[bytes]:
        """The kept values of tensor ``name`` (held values × mask, 0 where pruned) as float32 bytes of its dense view
        in C order, in chunks: their concatenation is ``np.where(dense_mask, dense_tensor, 0).tobytes()``, without
        the dense view of L's U (zeros but for its diagonal) in memory at once."""
        kept = np.where(mask, held, np.float32(0)).astype(np.float32, copy=False)
        if not self.compact(name):
            yield kept.tobytes()
            return
        d_in, n = self.d_in, self.n
        step = max(1, KEPT_CHUNK // max(1, n * d_in))  # input blocks (n rows of d_in entries each) per chunk
        for start in range(0, d_in, step):
            stop = min(d_in, start + step)
            rows = np.zeros((stop - start, n, d_in), dtype=np.float32)
            rows[np.arange(stop - start), :, np.arange(start, stop)] = kept[start:stop]
            yield rows.tobytes()
        zeros = (self.hidden - d_in * n) * d_in  # the bias block's rows: nothing feeds them
        chunk = np.zeros(min(zeros, KEPT_CHUNK), dtype=np.float32).tobytes()
        for start in range(0, zeros, KEPT_CHUNK):
            yield chunk if zeros - start >= KEPT_CHUNK else chunk[: 4 * (zeros - start)]

    def structural_candidate_counts(self) -> dict[str, int]:
        """Candidate counts fixed by the layout alone (no random values needed): O's V, I's U and V, where dense."""
        if self.construction == "output_blocks":
            counts = {"V": self.d_out * self.n}
        else:
            counts = {"U": self.d_in * self.n, "V": self.d_out * self.hidden}  # I and L
        return {name: count for name, count in counts.items() if self.density(name) == 1.0}

    # -- regeneration -------------------------------------------------------------------------------

    def tensor(self, source: RandomSource, name: str, draw: int = 0) -> np.ndarray:
        return source.tensor(self.pair, name, self.shapes()[name], self.scales[name], draw, self.law(name))

    def offset_diagonal(self, source: RandomSource) -> np.ndarray:
        """(d_in, n) float32: the only entries of an L pair's U that can be kept, U[(j, t), j] of its input blocks
        (row j·n + t, column j), at draw 0, computed without the rest of U (a d_in-th of it; :meth:`RandomSource.
        values_at`). Bit-identical to the full draw::

            cols = np.arange(d_in)
            layout.tensor(source, "U")[: d_in * n].reshape(d_in, n, d_in)[cols, :, cols]

        and so, for a dense source, to the same entries of ``source_tensors(source)["U"]``. A sparse source's
        entries outside U's ER mask are 0, as in ``source_tensors`` (then it equals that, not the raw draw). Every
        other entry of U is pruned: with these (and beta, V) the pair can be materialised compactly, e.g. a conv's U
        as a grouped conv with one n-channel group per input entry (c, a, b).

        Raises:
            ConstructionError: the layout is not construction L.
        """
        if self.construction != "offset_blocks":
            raise ConstructionError(f"pair {self.pair}: offset_diagonal is construction L's, not {self.construction}'s")
        d_in, n = self.d_in, self.n
        cols = np.arange(d_in, dtype=np.int64)[:, None]
        index = (cols * n + np.arange(n, dtype=np.int64)[None, :]) * d_in + cols  # flat position of U[(j, t), j]
        values = source.values_at(self.pair, "U", index, self.scales["U"], 0, self.law("U"))
        if self.density("U") < 1.0:
            values[~source.er_mask_at(self.pair, "U", index, self.density("U"))] = 0.0
        return values

    def source_tensors(
        self, source: RandomSource, draws: np.ndarray | None = None, er: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """The random tensors as the network holds them: draw 0, with redrawn units' blocks replaced, and 0 outside
        the ER masks of a sparse source (``er``: :meth:`er_masks`, regenerated when not given)."""
        tensors = self._drawn_tensors(source, draws)
        if self.sparse:
            for name, exists in (self.er_masks(source) if er is None else er).items():
                tensors[name][~exists] = 0.0
        return tensors

    def _drawn_tensors(self, source: RandomSource, draws: np.ndarray | None) -> dict[str, np.ndarray]:
        """The random tensors at draw 0 with redrawn units' blocks replaced (dense: before any ER mask)."""
        tensors = {name: self.tensor(source, name) for name in self.shapes()}
        if draws is None or not draws.any():
            return tensors
        if draws.shape != self.draw_shape:
            raise TicketFormatError(f"pair {self.pair}: draws of shape {draws.shape}, expected {self.draw_shape}")
        if self.construction == "offset_blocks":
            raise TicketFormatError(f"pair {self.pair}: construction L is built from draw 0 only; it has no draws")
        if self.construction == "input_blocks":
            self._apply_input_block_draws(source, tensors, draws)
            return tensors
        n, d_out, d_in = self.n, self.d_out, self.d_in
        for d in np.unique(draws[draws > 0]).tolist():
            # a weight's unit is its U column inside block l; a bias's is beta's block l
            hit = draws == d
            u = tensors["U"].reshape(d_out, n, d_in)
            u_d = self.tensor(source, "U", d).reshape(d_out, n, d_in)
            w_hit = np.broadcast_to(hit[:, None, :d_in], u.shape)
            u[w_hit] = u_d[w_hit]
            if self.has_bias:
                b = tensors["beta"].reshape(d_out, n)
                b_d = self.tensor(source, "beta", d).reshape(d_out, n)
                b_hit = np.broadcast_to(hit[:, d_in, None], b.shape)
                b[b_hit] = b_d[b_hit]
        return tensors

    def _apply_input_block_draws(self, source: RandomSource, tensors: dict[str, np.ndarray], draws: np.ndarray) -> None:
        """Construction I, in place: first each input block's U rows (and the bias block's beta) from the
        last row of ``draws``; then every entry V[i, (j, t)] from the draw of the problem it serves — weight
        (i, j)'s x+ problem where U[(j, t), j] > 0, else its x- problem; the bias block's from the bias's."""
        n, d_out, d_in = self.n, self.d_out, self.d_in
        blocks = self.draw_shape[1]
        block_draws = draws[2 * d_out]
        for d in np.unique(block_draws[block_draws > 0]).tolist():
            hit = block_draws == d
            u = tensors["U"].reshape(blocks, n, d_in)[:d_in]  # the bias block's U rows are never kept
            u[hit[:d_in]] = self.tensor(source, "U", d).reshape(blocks, n, d_in)[:d_in][hit[:d_in]]
            if self.has_bias and hit[d_in]:
                b = tensors["beta"].reshape(blocks, n)
                b[d_in] = self.tensor(source, "beta", d).reshape(b.shape)[d_in]
        cols = np.arange(d_in)
        positive = tensors["U"].reshape(blocks, n, d_in)[cols, :, cols] > 0  # (d_in, n)
        entry = np.empty((d_out, blocks, n), dtype=np.uint8)  # the draw of every entry of V
        entry[:, :d_in] = np.where(positive, draws[:d_out, :d_in, None], draws[d_out : 2 * d_out, :d_in, None])
        if self.has_bias:
            entry[:, d_in] = draws[:d_out, d_in, None]
        v = tensors["V"].reshape(entry.shape)
        for d in np.unique(entry[entry > 0]).tolist():
            hit = entry == d
            v[hit] = self.tensor(source, "V", d).reshape(entry.shape)[hit]

    def candidates(
        self, tensors: dict[str, np.ndarray], er: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Where the construction allows a kept entry; a mask is True only inside these positions.

        O: U > 0, beta > 0, V on its block diagonal. I: U on its block diagonal, beta > 0 on the bias
        block, V anywhere. L: U on its input blocks' diagonal, beta > 0, V anywhere. A sparse source's are
        also inside its ER masks (``er``, :meth:`er_masks`, required then). The ticket stores mask bits at these
        positions only. ``tensors`` and the result are in the held form (:meth:`mask_shapes`): L's U candidates are
        its whole diagonal (d_in, n), in the C order of their dense positions.
        """
        out = self._construction_candidates(tensors)
        if self.sparse:
            if er is None:
                raise ConstructionError(f"pair {self.pair}: the candidates of a sparse source need its ER masks")
            for name, exists in er.items():
                if self.compact(name):  # held as U's diagonal: where its diagonal entries exist
                    exists = exists[: self.d_in * self.n].reshape(self.d_in, self.n, self.d_in)[self._diagonal()]
                out[name] = out[name] & exists
        return out

    def _construction_candidates(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n, d_out, d_in = self.n, self.d_out, self.d_in
        out: dict[str, np.ndarray] = {}
        if self.construction == "offset_blocks":
            out["U"] = np.ones((d_in, n), dtype=bool)
            out["V"] = np.ones((d_out, self.hidden), dtype=bool)
            out["beta"] = tensors["beta"] > 0
        elif self.construction == "output_blocks":
            out["U"] = tensors["U"] > 0
            v = np.zeros((d_out, d_out, n), dtype=bool)
            v[np.arange(d_out), np.arange(d_out)] = True
            out["V"] = v.reshape(d_out, d_out * n)
            if self.has_bias:
                out["beta"] = tensors["beta"] > 0
        else:
            blocks = self.draw_shape[1]
            u = np.zeros((blocks, n, d_in), dtype=bool)
            cols = np.arange(d_in)
            u[cols, :, cols] = True
            out["U"] = u.reshape(blocks * n, d_in)
            out["V"] = np.ones((d_out, blocks * n), dtype=bool)
            if self.has_bias:
                beta = np.zeros((blocks, n), dtype=bool)
                beta[d_in] = True
                out["beta"] = beta.reshape(-1) & (tensors["beta"] > 0)
        return out

    # -- materialisation ----------------------------------------------------------------------------

    def to_module(
        self, tensors: dict[str, np.ndarray], masks: dict[str, np.ndarray], prune_buffers: bool = False
    ) -> PrunedPair:
        """The pruned pair: weights = source * mask, as float32 torch layers.

        Args:
            tensors: the random tensors in their dense view (see :meth:`source_tensors`).
            masks: bool masks (True = kept), held (:meth:`mask_shapes`) or dense.
            prune_buffers: keep the full source as ``weight_orig`` and the mask as ``weight_mask`` buffers
                (``torch.nn.utils.prune``), instead of plain pruned weights.
        """
        first = empty_layer(self.kind, self.d_in, self.hidden, self.conv, bias=self.first_has_bias)
        one_by_one = None if self.conv is None else ConvGeometry.one_by_one(self.hidden)
        second = empty_layer(self.kind, self.hidden, self.d_out, one_by_one, bias=False)
        masks = self.dense_masks(masks)
        for layer, wname, bname in ((first, "U", "beta"), (second, "V", None)):
            set_masked(layer, "weight", tensors[wname], masks[wname], prune_buffers)
            if bname is not None and self.first_has_bias:
                set_masked(layer, "bias", tensors[bname], masks[bname], prune_buffers)
        return PrunedPair(first, second, self.construction).eval()

    # -- manifest -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The manifest entry; ``densities`` only for a sparse source, so a dense layout's entry (and the kept
        hash, which reads it) is what it was before sparse sources existed."""
        data = asdict(self)
        if not self.densities:
            del data["densities"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PairLayout:
        if not isinstance(data, dict):
            raise TicketFormatError(f"a pair entry of the manifest must be an object, got {type(data).__name__}")
        try:
            conv = data.get("conv")
            geometry = ConvGeometry.from_dict(conv) if conv else None
            layout = cls(
                pair=int(data["pair"]),
                construction=data["construction"],
                kind=data["kind"],
                d_out=int(data["d_out"]),
                d_in=int(data["d_in"]),
                n=int(data["n"]),
                has_bias=bool(data["has_bias"]),
                scales={k: float(v) for k, v in data["scales"].items()},
                conv=geometry,
                bias_units=int(data.get("bias_units", 0)),
                densities={str(k): float(v) for k, v in data.get("densities", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TicketFormatError(f"malformed pair entry in the manifest: {exc!r}") from exc
        if layout.construction not in ("output_blocks", "input_blocks", "offset_blocks") or layout.kind not in (
            "linear",
            "conv2d",
        ):
            raise TicketFormatError(f"pair {layout.pair}: unknown construction or kind")
        bias_ok = layout.bias_units >= 1 if layout.construction == "offset_blocks" else layout.bias_units == 0
        if (
            min(layout.d_out, layout.d_in, layout.n) < 1
            or (layout.kind == "conv2d") != (geometry is not None)
            or not bias_ok
        ):
            raise TicketFormatError(f"pair {layout.pair}: inconsistent shapes in the manifest")
        if any(
            name not in cls.sparse_names or not (0.0 < d <= 1.0)  # also refuses NaN
            for name, d in layout.densities.items()
        ):
            raise TicketFormatError(f"pair {layout.pair}: ER densities must be in (0, 1] for U and V")
        return layout


class DrawCache:
    """A pair's random tensors by (name, draw), regenerated on demand; keeps draw 0 (used by every round)
    and the most recent other draw (resampling visits draws in order, so older ones are never asked again).

    A sparse source's tensors hold 0 outside their ER masks (``er``, the same for every draw), and
    :meth:`exists` says which entries exist: the problem makers mark a coefficient usable only where each random
    entry of its product exists.
    """

    def __init__(self, layout: PairLayout, source: RandomSource) -> None:
        self.layout, self.source = layout, source
        self.er = layout.er_masks(source)
        self._tensors: dict[tuple[str, int], np.ndarray] = {}

    def __call__(self, name: str, draw: int = 0) -> np.ndarray:
        key = (name, draw)
        if key not in self._tensors:
            if draw > 0:
                for old in [k for k in self._tensors if k[1] > 0 and k[1] != draw]:
                    del self._tensors[old]
            values = self.layout.tensor(self.source, name, draw)
            if name in self.er:
                values[~self.er[name]] = 0.0
            self._tensors[key] = values
        return self._tensors[key]

    def exists(self, name: str) -> np.ndarray | None:
        """The ER mask of tensor ``name`` (True = the entry exists), or None where every entry exists."""
        return self.er.get(name)


def _int_pair(value: Any) -> tuple[int, int]:
    first, second = (int(v) for v in value)  # anything but two integers is a malformed manifest
    return first, second


def empty_layer(
    kind: Literal["linear", "conv2d"], d_in: int, d_out: int, conv: ConvGeometry | None, *, bias: bool
) -> nn.Linear | nn.Conv2d:
    """An uninitialised ``nn.Linear(d_in, d_out)``, or ``nn.Conv2d`` of geometry ``conv`` with d_out channels, for
    :func:`set_masked` to fill (skip_init: default initialisation would draw from torch's global generator only to
    be overwritten)."""
    if kind == "linear":
        return skip_init(nn.Linear, d_in, d_out, bias=bias)
    assert conv is not None
    return skip_init(
        nn.Conv2d, conv.in_channels, d_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=bias
    )


def set_masked(layer: nn.Module, name: str, source: np.ndarray, mask: np.ndarray, prune_buffers: bool) -> None:
    """Set ``layer.<name>`` to ``source * mask`` (frozen), or, with ``prune_buffers``, to the whole source with
    the mask as a ``torch.nn.utils.prune`` buffer."""
    param = getattr(layer, name)
    src = torch.tensor(source).reshape(param.shape)  # a copy: the ticket's regenerated source stays read-only
    keep = torch.tensor(mask).reshape(param.shape)
    with torch.no_grad():
        param.copy_(src * keep)
    param.requires_grad_(False)
    if prune_buffers:
        from torch.nn.utils import prune

        with torch.no_grad():
            param.copy_(src)
        prune.custom_from_mask(layer, name, keep)
