"""Copies: how a depth-L+1 ticket's activations hold n copies of each target unit (docs/design.md section 2.9).

In a depth-L+1 ticket (:mod:`ticketsolver.construction.shallow`) the activation after stage l holds, for every
channel (or feature) i of the target's activation, ``copies`` channels each approximately equal to it, then
``constants`` channels that hold one constant each (they carry the next stage's bias). Channel ``i·copies + s`` is
copy s of target channel i; channel ``C·copies + c`` is constant c. The target's ReLU, pooling and Flatten act
channel by channel, so they keep that order; after a Flatten, feature ``(i·copies + s)·P + p`` is copy s of target
feature ``i·P + p`` (P positions per channel).

:class:`CopyPlan` says, for one stage, where its input's copies and constants are and how many its output has;
:class:`CopyStage` is the stage as a module of g: its random layer(s) plus the plan, so that verification can feed
it the *target's* activation laid out as copies (:meth:`CopyStage.expand`), read its output back per copy
(:meth:`CopyStage.collapse`) and compare each copy with the target layer and with the stage's effective weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.construction.pair import PrunedPair
from ticketsolver.errors import TicketFormatError

__all__ = ["CopyPlan", "CopyStage"]


@dataclass(frozen=True)
class CopyPlan:
    """The copy structure of one stage of a depth-L+1 ticket (recorded in the build section of its manifest).

    Attributes:
        unit: the ticket unit of this stage (0: the first stage, a pair; then one layer unit per target layer).
        kind: ``linear`` or ``conv2d``, as the target layer.
        d_out: the target layer's outputs (channels of a conv).
        d_in: the target layer's dense-view inputs (``c_in·kh·kw`` of a conv).
        channels_in: C, the target channels of the stage's input (a Linear after a Flatten of C channels: C).
        positions: P, dense-view positions per input channel (kernel taps of a conv, ``H·W`` after a Flatten, else 1).
        copies_in: copies per input channel; 0 for the first stage, which reads the network's input as it is.
        constants_in: constant channels after the input's copies.
        copies_out: copies per output channel (1 at the last stage: the network's output).
        constants_out: constant channels after the output's copies.
    """

    unit: int
    kind: Literal["linear", "conv2d"]
    d_out: int
    d_in: int
    channels_in: int
    positions: int
    copies_in: int
    constants_in: int
    copies_out: int
    constants_out: int

    @property
    def rows(self) -> int:
        """Output channels (features) of the stage: copies, then constants."""
        return self.d_out * self.copies_out + self.constants_out

    @property
    def channels(self) -> int:
        """Input channels of the stage's random layer (first stage: the target's own input channels)."""
        if self.copies_in == 0:
            return self.channels_in
        return self.channels_in * self.copies_in + self.constants_in

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> CopyPlan:
        try:
            numbers = {key: int(data[key]) for key in _FIELDS if key != "kind"}
            plan = cls(kind=data["kind"], **numbers)
        except (KeyError, TypeError, ValueError) as exc:
            raise TicketFormatError(f"malformed copy plan in the manifest: {exc!r}") from exc
        counts = (plan.d_out, plan.d_in, plan.channels_in, plan.positions, plan.copies_out)
        if plan.kind not in ("linear", "conv2d") or min(counts) < 1 or min(plan.copies_in, plan.constants_in) < 0:
            raise TicketFormatError(f"copy plan of unit {plan.unit}: bad kind or counts")
        if plan.channels_in * plan.positions != plan.d_in or plan.constants_out < 0:
            raise TicketFormatError(f"copy plan of unit {plan.unit}: channels x positions != d_in")
        return plan

    # -- target activations <-> the stage's layout of copies -------------------------------------------

    def expand(self, h: torch.Tensor, constants: torch.Tensor) -> torch.Tensor:
        """The target's activation ``h`` (input of the target layer) laid out as this stage's input: each channel
        repeated ``copies_in`` times, then the constant channels holding ``constants`` (first stage: ``h``)."""
        if self.copies_in == 0:
            return h
        batch = h.shape[0]
        if self.kind == "linear":
            grid = h.reshape(batch, self.channels_in, self.positions)
        else:
            grid = h
        copies = grid.repeat_interleave(self.copies_in, dim=1)
        shape = (batch, self.constants_in, *grid.shape[2:])
        const = constants.to(h.dtype).reshape(1, -1, *([1] * (grid.dim() - 2))).expand(shape)
        out = torch.cat([copies, const], dim=1)
        return out.reshape(batch, -1) if self.kind == "linear" else out

    def collapse(self, y: torch.Tensor) -> torch.Tensor:
        """The stage's output without its constants, as ``(B, d_out, copies_out, *spatial)``."""
        kept = y[:, : self.d_out * self.copies_out]
        return kept.reshape(y.shape[0], self.d_out, self.copies_out, *y.shape[2:])


_FIELDS = tuple(CopyPlan.__dataclass_fields__)


class CopyStage(nn.Module):
    """One stage of a depth-L+1 network g: its random layer(s) (``layer``) and their :class:`CopyPlan`.

    The first stage is a pruned L pair (:class:`PrunedPair`); every later one a single pruned ``nn.Linear`` or
    ``nn.Conv2d`` reading copies. ``forward`` is the layer's, nothing else: the plan and ``constants_in`` (the
    values of the input's constant channels, set when the network is materialised) serve verification.
    """

    def __init__(self, layer: nn.Module, plan: CopyPlan, constants_in: torch.Tensor | None = None) -> None:
        super().__init__()
        self.layer = layer
        self.plan = plan
        values = torch.zeros(plan.constants_in, dtype=torch.float64) if constants_in is None else constants_in
        self.constants_in = values.double().reshape(-1)  # not a buffer: g's state_dict holds its layers only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def extra_repr(self) -> str:
        p = self.plan
        return (
            f"unit={p.unit}, copies {p.copies_in}->{p.copies_out}, constants {p.constants_in}->{p.constants_out}, "
            f"target {p.d_out}x{p.d_in}"
        )

    def constants_out(self) -> torch.Tensor:
        """The values (float64) of the stage's constant output channels: its constant rows read nothing but the
        input's constants (the first stage: nothing but its bias block), so each is one number everywhere."""
        p = self.plan
        rows = slice(p.d_out * p.copies_out, p.rows)
        if p.constants_out == 0:
            return torch.zeros(0, dtype=torch.float64)
        if isinstance(self.layer, PrunedPair):
            effective = self.layer.effective(torch.float64)
            assert effective.bias is not None
            return effective.bias[rows].detach().clone()
        assert isinstance(self.layer.weight, torch.Tensor)
        weight = self.layer.weight.detach().double()[rows].reshape(p.constants_out, p.channels, -1)
        const_part = weight[:, p.channels_in * p.copies_in :, :].sum(2)  # (constants_out, constants_in)
        return const_part @ self.constants_in

    def effective(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Target-shaped effective weights and bias of every output copy, float64.

        Returns ``weight`` (d_out·copies_out, d_in) (a conv: reshaped to the target's kernel by the caller) and
        ``bias`` (d_out·copies_out,): output copy r computes ``weight[r] · h + bias[r]`` of the target's activation
        h. The first stage: its pair's effective layer (exact on the pair's box); a later stage: each target weight
        is the sum of the kept entries over the input's copies of its input, and the bias the kept entries on the
        constant channels times their values.
        """
        p = self.plan
        rows = p.d_out * p.copies_out
        if isinstance(self.layer, PrunedPair):
            effective = self.layer.effective(torch.float64)
            if effective.weight_neg is not None:  # an L pair has none; kept for clarity
                raise TicketFormatError(f"unit {p.unit}: the first stage of an L+1 ticket must be an L pair")
            assert effective.bias is not None
            return effective.weight_pos[:rows].reshape(rows, -1), effective.bias[:rows]
        assert isinstance(self.layer.weight, torch.Tensor)
        weight = self.layer.weight.detach().double()[:rows].reshape(rows, p.channels, p.positions)
        copies = weight[:, : p.channels_in * p.copies_in].reshape(rows, p.channels_in, p.copies_in, p.positions)
        constants = weight[:, p.channels_in * p.copies_in :].sum(2)  # (rows, constants_in)
        return copies.sum(2).reshape(rows, p.d_in), constants @ self.constants_in.to(weight.device)

    def effective_forward(
        self, h: torch.Tensor, effective: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Every output copy computed from the target's activation ``h`` by :meth:`effective` (or by ``effective``,
        its result computed once by a caller that runs many batches), shaped like :meth:`CopyPlan.collapse` of the
        stage's output."""
        weight, bias = self.effective() if effective is None else effective
        weight, bias = weight.to(h.device, h.dtype), bias.to(h.device, h.dtype)
        layer = self.layer.first if isinstance(self.layer, PrunedPair) else self.layer
        if self.plan.kind == "linear":
            y = F.linear(h, weight, bias)
        else:
            assert isinstance(layer, nn.Conv2d)
            kernel = weight.reshape(weight.shape[0], -1, *layer.kernel_size)
            y = F.conv2d(h, kernel, bias, layer.stride, layer.padding, layer.dilation)
        return y.reshape(h.shape[0], self.plan.d_out, self.plan.copies_out, *y.shape[2:])
