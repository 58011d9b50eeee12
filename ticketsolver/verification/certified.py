"""A certified upper bound on sup over the input box of |f(x) - g(x)|, per output.

Verification stage, the guarantee rather than a sample. Two quantities are propagated through the
network in float64, one input box at a time (batch of one):

* interval bounds ``[lo_l, hi_l]`` on the target's activation ``h_l`` entering each layer (interval bound
  propagation through f, rounded outward);
* an elementwise bound ``e_l >= |k_l - h_l|`` on the gap between g's activation ``k_l`` and f's;
* g's own interval, propagated through the pairs' effective layers and intersected with
  ``[lo_l - e_l, hi_l + e_l]`` (after a ReLU it is >= 0 whatever e_l is): the box on which L pairs must be
  linear, as the builder propagated it.

For a pruned pair with effective weights (W+, W-, b') standing for the target layer (W, b)::

    e_{l+1} <= L(e_l) + delta_l,    delta_l >= |g_l(h) - f_l(h)| for every h in [lo_l, hi_l]

O (``W-`` absent, x >= 0) and L (``W-`` absent, linear on g's box): ``L = |W+|``,
``delta = |W+ - W| |h| + |b' - b|``.
I: ``L = max(|W+|, |W-|)`` (x+ - y+ and x- - y- have opposite signs and their absolute values sum to
|x - y|), ``delta = |W+ - W| |h+| + |W- + W| |h-| + |b' - b|``.
ReLU and max pooling are 1-Lipschitz elementwise (max pooling is applied to the error map, as
``|max a - max b| <= max |a - b|``); average pooling averages the error map; Flatten reshapes.

O pairs equal their effective layer only on x >= 0; that holds for g's own activation when the layer's
input comes out of a ReLU (possibly pooled/flattened) or out of an input box with lower bound >= 0. L pairs
equal it only where every kept unit's pre-activation is >= 0, checked on g's interval
(:meth:`PrunedPair.linear_on_box`). Where either fails the bound is *not certified*: the result says which
layer and why, and carries no number (a wrong box is a finding of verification, not an error).

**Exact arithmetic and float forward passes.** The first bound is for exact arithmetic on the networks'
stored weights. A forward pass in float32 (the exported ONNX model) or float64 rounds, and can exceed it;
for each such dtype a second bound adds Higham's forward-error terms: a dot product of k terms computed in
any order, with or without FMA, is off by at most ``gamma_k |w|·|x|`` (``gamma_k = k u / (1 - k u)``,
``u = 2^-24`` in float32), plus the error carried in from earlier layers and the rounding of the weights
to that dtype. Both layers of every pair are covered, the hidden activations' magnitudes taken from interval
bounds of the pair's first layer over g's interval; k is each row's count of kept terms. An incoming error
goes through a pair by its effective layer's ``L`` where the pair is linear on a box holding both the
exact and the computed activation (the products in V·U cancel; ``|V| |U|`` would not), else by ``|V| |U|``.
The inputs are those of that dtype in the box (the box is widened to its ends' rounded values, as rounding
is monotone). This covers f's and g's forward passes, so it bounds what the float columns measure.
Convolutions computed by Winograd or FFT algorithms are outside the dot-product model.

Rounding *inside this computation* is covered by outward slack (``gamma_k``, ``u = 2^-53``) wherever signs
can cancel and by a small relative margin on the result (all other quantities are sums of non-negative terms).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.construction.box import IntervalWalk
from ticketsolver.construction.copies import CopyStage
from ticketsolver.construction.pair import PrunedPair
from ticketsolver.errors import ConstructionError, VerificationError
from ticketsolver.verification.layers import describe_module, validate_networks

__all__ = ["CertifiedBound", "CertifiedLayerBound", "ForwardBound", "certify_bound"]

#: unit roundoff of float64
_UNIT_ROUNDOFF = 2.0**-53
#: smallest relative margin put on the final bound
_MIN_MARGIN = 1e-9
#: dtypes of the forward passes a bound can include the rounding of
_FORWARD_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

EXACT_ARITHMETIC_NOTE = (
    "exact arithmetic: holds on the networks' stored weights over the whole input box; the rounding of a "
    "forward pass is not included (see forward)"
)
FORWARD_NOTE = (
    "forward pass in {dtype}: holds for f and g both computed in {dtype} on any {dtype} input of the box, "
    "each dot product's rounding bounded by gamma_k (any summation order, FMA or not; Winograd/FFT "
    "convolutions excluded)"
)


def _gamma(k: int, unit: float = _UNIT_ROUNDOFF) -> float:
    """Higham's gamma_k: a sum of k products computed with unit roundoff ``unit`` is off by at most
    gamma_k * sum |terms|, whatever the order of the sum."""
    ku = k * unit
    return ku / (1.0 - ku) if ku < 1.0 else float("inf")


@dataclass(frozen=True)
class CertifiedLayerBound:
    """The bound's propagation at one pruned pair.

    Attributes:
        index: position of the layer in the Sequential.
        module: short name of the target layer.
        construction: ``"output_blocks"``, ``"input_blocks"`` or ``"offset_blocks"``.
        local_error_max: max over entries of ``delta_l``: this layer's own error on the target's
            activations, bounded over the box.
        propagated_error_max: max over entries of ``e_{l+1}``: the bound on ``|g - f|`` after this layer.
        lipschitz_row_sum_max: max over outputs of the row sum of ``L`` (how much this layer can amplify
            an incoming error in the max norm).
    """

    index: int
    module: str
    construction: str
    local_error_max: float
    propagated_error_max: float
    lipschitz_row_sum_max: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ForwardBound:
    """An upper bound on ``sup |f(x) - g(x)|`` when both are computed in a float dtype.

    Attributes:
        dtype: ``"float32"`` or ``"float64"``.
        per_output: the bound for each output (flattened), margin included; empty when not certified.
        max_bound: the largest entry of ``per_output``; None when not certified.
        rounding_max: the largest per-output part of it due to rounding (f's and g's forward passes).
        relative_margin: the relative inflation applied to absorb rounding in this computation.
        not_certified: why no bound could be certified, or None.
        note: the sentence a report shows next to the bound.
    """

    dtype: str
    per_output: list[float]
    max_bound: float | None
    rounding_max: float | None
    relative_margin: float
    not_certified: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CertifiedBound:
    """An upper bound on ``sup_{x in box} |f(x) - g(x)|``, valid in exact arithmetic, and per float dtype.

    Attributes:
        per_output: the bound for each output of the network (flattened), margin included; empty when the
            bound could not be certified.
        max_bound: the largest entry of ``per_output``; None when not certified (``not_certified`` says why).
        relative_margin: the relative inflation applied to absorb rounding in this computation.
        exact_arithmetic: always True: ``max_bound`` holds for exact arithmetic; ``forward`` has the bounds
            that include a float forward pass.
        note: the sentence a report shows next to the bound.
        layers: propagation at each pruned pair (up to the first that could not be certified).
        seconds: wall-clock time of the computation.
        not_certified: why the bound could not be certified (the layer and the reason), or None.
        forward: dtype name -> :class:`ForwardBound` for forward passes in that dtype.
    """

    per_output: list[float]
    max_bound: float | None
    relative_margin: float
    exact_arithmetic: bool = True
    note: str = EXACT_ARITHMETIC_NOTE
    layers: list[CertifiedLayerBound] = field(default_factory=list)
    seconds: float = 0.0
    not_certified: str | None = None
    forward: dict[str, ForwardBound] = field(default_factory=dict)

    @property
    def certified(self) -> bool:
        """True when a number could be certified (see ``not_certified`` otherwise)."""
        return self.max_bound is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _box_tensors(
    input_box: tuple[Any, Any], input_shape: tuple[int, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = (
        torch.as_tensor(bound, dtype=torch.float64).to(device).expand(input_shape).reshape(1, *input_shape).clone()
        for bound in input_box
    )
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise VerificationError("the input box must be finite")
    if (lo > hi).any():
        raise VerificationError("the input box has lo > hi for some feature")
    return lo, hi


def _affine_op(layer: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(weight, x) -> weight applied to x`` with the layer's geometry and no bias."""
    if isinstance(layer, nn.Linear):
        return lambda w, x: F.linear(x, w)
    assert isinstance(layer, nn.Conv2d)
    stride, padding, dilation = layer.stride, layer.padding, layer.dilation
    return lambda w, x: F.conv2d(x, w, None, stride, padding, dilation)


def _bias_view(bias: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    return bias if isinstance(layer, nn.Linear) else bias.reshape(1, -1, 1, 1)


def _interval_affine(
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    weight: torch.Tensor,
    bias: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval bounds of ``W h + b`` for ``h`` in ``[lo, hi]``, rounded outward."""
    w_pos, w_neg = weight.clamp(min=0), (-weight).clamp(min=0)
    new_hi = op(w_pos, hi) - op(w_neg, lo) + bias
    new_lo = op(w_pos, lo) - op(w_neg, hi) + bias
    # the two sums and their difference can cancel: widen by their rounding bound (2x for the slack's own)
    fan_in = weight[0].numel()
    slack = 2.0 * _gamma(2 * fan_in + 2) * (op(weight.abs(), torch.maximum(lo.abs(), hi.abs())) + bias.abs())
    return new_lo - slack, new_hi + slack


def _outward(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[lo, hi]`` widened by a few float64 ulps: covers the rounding of the sums that produced them."""
    return lo - 4 * _UNIT_ROUNDOFF * lo.abs(), hi + 4 * _UNIT_ROUNDOFF * hi.abs()


@torch.no_grad()
def certify_bound(
    target: nn.Sequential,
    pruned: nn.Sequential,
    input_box: tuple[Any, Any],
    *,
    input_shape: tuple[int, ...],
    device: torch.device | str | None = None,
    forward_dtypes: tuple[str, ...] = ("float32",),
) -> CertifiedBound:
    """Certified upper bound on ``|f(x) - g(x)|`` per output over every x in the input box.

    Args:
        target: the target network f (any float dtype; its stored values are used exactly).
        pruned: the pruned network g, matching ``target`` module by module.
        input_box: ``(lo, hi)``: floats, or tensors broadcastable to ``input_shape`` (per-feature bounds).
        input_shape: per-sample input shape, e.g. ``(1, 28, 28)``.
        device: where to compute (float64); cuda when available if None.
        forward_dtypes: dtypes (``"float32"``, ``"float64"``) of forward passes to certify as well, their
            rounding included (``forward``); empty: exact arithmetic only.

    Returns:
        A :class:`CertifiedBound`: for exact arithmetic and per forward dtype (see the module docstring).
        When an O pair's input is not provably >= 0 (e.g. the first layer is O and the box's lower bound is
        negative) or an L pair is not linear on its box, no number is certified and ``not_certified`` says
        where and why.

    Raises:
        VerificationError: the networks do not correspond, the box is empty or infinite, a forward dtype is
            unknown, or a pair does not have the structure of its construction.

    Example: an O pair made by hand for a layer, exact on inputs >= 0 (``relu(W+ x + b+) - relu(W- x + b-)``),
    with V perturbed by 0.01: certified on the box [0, 1]^3, and not on [-1, 1]^3, where O does not apply.

    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> layer = nn.Linear(3, 2)
    >>> w, b = layer.weight.detach(), layer.bias.detach()
    >>> first, second = nn.Linear(3, 4), nn.Linear(4, 2, bias=False)
    >>> first.weight = nn.Parameter(torch.cat([w.clamp(min=0), (-w).clamp(min=0)]))
    >>> first.bias = nn.Parameter(torch.cat([b.clamp(min=0), (-b).clamp(min=0)]))
    >>> second.weight = nn.Parameter(torch.cat([torch.eye(2), -torch.eye(2)], dim=1) + 0.01)
    >>> f, g = nn.Sequential(layer), nn.Sequential(PrunedPair(first, second, "output_blocks"))
    >>> bound = certify_bound(f, g, (0.0, 1.0), input_shape=(3,), device="cpu")
    >>> x = torch.rand(1000, 3)
    >>> with torch.no_grad():
    ...     measured = float((f(x) - g(x)).abs().max())
    >>> 0 < measured <= bound.max_bound
    True
    >>> print(certify_bound(f, g, (-1.0, 1.0), input_shape=(3,), device="cpu").not_certified)  # doctest: +ELLIPSIS
    layer 0 (Linear(3->2)): an output-blocks (O) pair equals its effective layer only for inputs >= 0, ...
    """
    start = time.perf_counter()
    pair_indices = set(validate_networks(target, pruned))
    for name in forward_dtypes:
        if name not in _FORWARD_DTYPES:
            raise VerificationError(f"unknown forward dtype {name!r}; expected one of {sorted(_FORWARD_DTYPES)}")
    dev = torch.device(device) if device is not None else _default_device()
    lo, hi = _box_tensors(input_box, tuple(input_shape), dev)
    effectives: dict[int, _Effective] = {}  # each pair's effective layer, computed once for every pass
    exact = _Propagation(lo, hi, dev, None, effectives)
    exact.run(target, pruned, pair_indices, input_shape)
    forward: dict[str, ForwardBound] = {}
    for name in forward_dtypes:
        dtype = _FORWARD_DTYPES[name]
        note = FORWARD_NOTE.format(dtype=name)
        if exact.not_certified is not None:
            forward[name] = ForwardBound(name, [], None, None, 0.0, exact.not_certified, note)
            continue
        # an input of that dtype in the box lies between the box's rounded ends (rounding is monotone)
        lo_r, hi_r = torch.minimum(lo, lo.to(dtype).double()), torch.maximum(hi, hi.to(dtype).double())
        rounded = _Propagation(lo_r, hi_r, dev, dtype, effectives)
        rounded.run(target, pruned, pair_indices, input_shape)
        if rounded.not_certified is not None:
            forward[name] = ForwardBound(name, [], None, None, 0.0, rounded.not_certified, note)
            continue
        margin = max(_MIN_MARGIN, 4.0 * rounded.gamma_total)
        rounding = (rounded.round_f + rounded.round_g).flatten()
        per_output = ((rounded.err.flatten() + rounding) * (1.0 + margin)).cpu()
        forward[name] = ForwardBound(
            dtype=name,
            per_output=[float(v) for v in per_output],
            max_bound=float(per_output.max()) if per_output.numel() else 0.0,
            rounding_max=float(rounding.max() * (1.0 + margin)) if rounding.numel() else 0.0,
            relative_margin=margin,
            note=note,
        )
    if exact.not_certified is not None:
        return CertifiedBound(
            per_output=[],
            max_bound=None,
            relative_margin=0.0,
            layers=exact.layers,
            seconds=time.perf_counter() - start,
            not_certified=exact.not_certified,
            forward=forward,
        )
    # every remaining computation summed non-negative terms, each off by at most gamma_k relatively
    margin = max(_MIN_MARGIN, 4.0 * exact.gamma_total)
    per_output = (exact.err.flatten() * (1.0 + margin)).cpu()
    return CertifiedBound(
        per_output=[float(v) for v in per_output],
        max_bound=float(per_output.max()) if per_output.numel() else 0.0,
        relative_margin=margin,
        layers=exact.layers,
        seconds=time.perf_counter() - start,
        forward=forward,
    )


class _Propagation:
    """One pass through f and g over a box, elementwise on the current activation: f's interval
    ``[lo, hi]``, the exact gap bound ``err``, g's own interval ``[g_lo, g_hi]`` (propagated through the
    pairs' effective layers and intersected with ``[lo - err, hi + err]``: the tighter, the more L pairs are
    provably linear), and, for a float dtype (``rounding``), bounds on how far f's and g's forward passes in
    that dtype are from exact arithmetic (``round_f``, ``round_g``).

    Stops at the first pair that cannot be certified, with the reason in ``not_certified``.
    """

    def __init__(
        self,
        lo: torch.Tensor,
        hi: torch.Tensor,
        dev: torch.device,
        rounding: torch.dtype | None,
        effectives: dict[int, _Effective],
    ):
        self.lo, self.hi, self.dev = lo, hi, dev
        self.effectives = effectives  # by layer index, shared between the passes of one certify_bound
        self.g_lo, self.g_hi = lo.clone(), hi.clone()
        # the builder's own bounds of g (construction/box.py), replayed: L pairs were built linear on exactly these
        self.g_walk = IntervalWalk.from_bounds(lo.detach().double().cpu(), hi.detach().double().cpu())
        # g's activation, exact and computed, is >= 0 out of a ReLU (then pooled/flattened) or a box with lo >= 0
        self.nonneg = bool((lo >= 0).all())
        self.err = torch.zeros_like(lo)
        self.rounding = rounding
        info = torch.finfo(rounding if rounding is not None else torch.float64)
        self.unit = info.eps / 2
        # gradual underflow: a product is off by at most half the smallest subnormal, besides its relative error
        self.underflow = info.tiny * self.unit
        self.round_f = torch.zeros_like(lo)
        self.round_g = torch.zeros_like(lo)
        self.gamma_total = 0.0
        self.layers: list[CertifiedLayerBound] = []
        self.not_certified: str | None = None

    def run(self, target: nn.Sequential, pruned: nn.Sequential, pair_indices: set[int], shape: Any) -> None:
        i = 0
        try:
            for i, (layer, other) in enumerate(zip(target, pruned, strict=True)):
                if i in pair_indices and isinstance(other, CopyStage):
                    assert isinstance(layer, nn.Linear | nn.Conv2d)
                    self._copy_stage(i, layer, other)
                    if self.not_certified is not None:
                        return
                elif i in pair_indices:
                    assert isinstance(other, PrunedPair) and isinstance(layer, nn.Linear | nn.Conv2d)
                    self._pair(i, layer, other)
                    if self.not_certified is not None:
                        return
                elif isinstance(layer, nn.ReLU):
                    self._relu()
                elif isinstance(layer, nn.MaxPool2d | nn.Flatten):
                    self._monotone(layer)
                elif isinstance(layer, nn.AvgPool2d):
                    self._average(layer)
                else:  # validate_networks admits nothing else
                    raise VerificationError(f"layer {i}: {type(layer).__name__} is not supported")
        except RuntimeError as exc:  # activations that do not chain: the input shape is wrong for this network
            raise VerificationError(
                f"the networks do not accept inputs of shape {tuple(shape)} (at layer {i}): {exc}"
            ) from exc

    def _relu(self) -> None:
        # |relu(k) - relu(h)| <= |k - h|, and both are 0 where even h + e cannot be positive
        if self.rounding is not None:
            self.round_f = torch.minimum(self.round_f, F.relu(self.hi + self.round_f))
            self.round_g = torch.minimum(self.round_g, F.relu(self.g_hi + self.round_g))
        self.err = torch.minimum(self.err, F.relu(self.hi + self.err))
        self.lo, self.hi = F.relu(self.lo), F.relu(self.hi)
        self.g_lo, self.g_hi = F.relu(self.g_lo), F.relu(self.g_hi)
        self.g_walk.through_module(nn.ReLU())
        self.nonneg = True

    def _monotone(self, layer: nn.Module) -> None:
        """Max pooling and Flatten: exact in any dtype, monotone, and |max a - max b| <= max |a - b|."""
        self.err, self.lo, self.hi = layer(self.err), layer(self.lo), layer(self.hi)
        self.g_lo, self.g_hi = layer(self.g_lo), layer(self.g_hi)
        self.g_walk.through_module(layer)
        self.round_f, self.round_g = layer(self.round_f), layer(self.round_g)

    def _average(self, layer: nn.AvgPool2d) -> None:
        size = layer.kernel_size
        window = size * size if isinstance(size, int) else int(size[0]) * int(size[1])
        if self.rounding is not None:
            # window - 1 additions and a division (or a product with a rounded reciprocal): gamma_{window+1}
            gamma = _gamma(window + 1, self.unit)
            f_abs = torch.maximum(self.lo.abs(), self.hi.abs())
            g_abs = torch.maximum(self.g_lo.abs(), self.g_hi.abs())
            self.round_f = layer(self.round_f) + gamma * layer(f_abs + self.round_f)
            self.round_g = layer(self.round_g) + gamma * layer(g_abs + self.round_g)
            self.gamma_total += 2 * _gamma(window + 2)
        self.err = layer(self.err)
        # averaging signed bounds can cancel: widen by the rounding bound of the window's sum
        gamma64 = _gamma(window + 1)
        slack = gamma64 * layer(torch.maximum(self.lo.abs(), self.hi.abs()))
        self.lo, self.hi = layer(self.lo) - slack, layer(self.hi) + slack
        g_slack = gamma64 * layer(torch.maximum(self.g_lo.abs(), self.g_hi.abs()))
        self.g_lo, self.g_hi = layer(self.g_lo) - g_slack, layer(self.g_hi) + g_slack
        self.g_walk.through_module(layer)
        self.gamma_total += gamma64

    def _pair(self, index: int, layer: nn.Linear | nn.Conv2d, pair: PrunedPair) -> None:
        """One pruned pair: the new error bounds, f's and g's new intervals, the layer's record."""
        where = f"layer {index} ({describe_module(layer)})"
        reason = self._not_linear(pair, where)
        if reason is not None:
            self.not_certified = reason
            return
        dev, f64 = self.dev, torch.float64
        op = _affine_op(layer)
        weight = layer.weight.detach().to(dev, f64)
        bias = layer.bias.detach().to(dev, f64) if layer.bias is not None else None
        bias_or_zero = bias if bias is not None else torch.zeros(weight.shape[0], dtype=f64, device=dev)
        if index not in self.effectives:
            self.effectives[index] = _Effective.of(pair, weight.shape, dev, where)
        effective = self.effectives[index]
        lip, delta = effective.error_terms(weight, bias_or_zero, self.lo, self.hi, op, layer)
        new_err = op(lip, self.err) + delta
        if self.rounding is not None:
            f_abs = torch.maximum(self.lo.abs(), self.hi.abs())
            self.round_f = self._rounding_affine(layer, weight, bias, f_abs, self.round_f)
            self.round_g = self._rounding_through_pair(pair, lip, op)
        new_lo, new_hi = _interval_affine(op, weight, _bias_view(bias_or_zero, layer), self.lo, self.hi)
        g_lo, g_hi = effective.interval(self.g_lo, self.g_hi, op, layer)
        self.g_walk.through_pair(None, pair, effective)
        g_lo = torch.maximum(g_lo, self.g_walk.lo.to(g_lo))
        g_hi = torch.minimum(g_hi, self.g_walk.hi.to(g_hi))
        self.layers.append(
            CertifiedLayerBound(
                index=index,
                module=describe_module(layer),
                construction=pair.construction,
                local_error_max=float(delta.max()),
                propagated_error_max=float(new_err.max()),
                lipschitz_row_sum_max=float(lip.flatten(1).sum(1).max()),
            )
        )
        # rounding of the pair's effective weights and of the two non-negative sums of the error step
        self.gamma_total += effective.gamma + _gamma(2 * weight[0].numel() + 2)
        self.err, self.lo, self.hi = new_err, new_lo, new_hi
        # g's activation lies both in its own interval and within err of f's (err with the margin that covers
        # its rounding so far, as the final bound has it); outward for the subtractions
        reach = new_err * (1.0 + max(_MIN_MARGIN, 4.0 * self.gamma_total))
        self.g_lo, self.g_hi = _outward(torch.maximum(g_lo, new_lo - reach), torch.minimum(g_hi, new_hi + reach))
        self.nonneg = False

    def _copy_stage(self, index: int, layer: nn.Linear | nn.Conv2d, stage: CopyStage) -> None:
        """One stage of a depth-L+1 network (exact arithmetic only).

        ``err`` bounds, per entry of the target's activation, how far *every* copy of it in g is. Output copy r of
        target output o computes ``W'_r h + b'_r`` plus its input copies' errors through the kept entries, so
        ``|g_r - f_o| <= |W'_r - W_o| |h| + A_r err + |b'_r - b_o|`` with ``A_r[i, p] = sum_s |V[r, (i, s), p]|``
        (the first stage, an L pair on g's exact input: where it is linear on the box, as for a pair); the new
        ``err`` is the largest over o's copies. The constant channels carry exact values (computed in float64).
        """
        where = f"layer {index} ({describe_module(layer)})"
        if self.rounding is not None:
            self.not_certified = (
                f"{where}: the float rounding of a depth-L+1 network's forward pass is not bounded (only the "
                "exact-arithmetic bound is certified for L+1)"
            )
            return
        inner, plan = stage.layer, stage.plan
        dev, f64 = self.dev, torch.float64
        if isinstance(inner, PrunedPair):
            reason = self._not_linear(inner, where)
            if reason is not None:
                self.not_certified = reason
                return
        op = _affine_op(layer)
        weight = layer.weight.detach().to(dev, f64)
        bias = (
            layer.bias.detach().to(dev, f64)
            if layer.bias is not None
            else torch.zeros(weight.shape[0], dtype=f64, device=dev)
        )
        eff_w, eff_b = (t.to(dev) for t in stage.effective())
        rows = eff_w.shape[0]
        shape = (rows, *weight.shape[1:])
        copies = plan.copies_out
        target_w = weight.repeat_interleave(copies, dim=0).reshape(shape)
        target_b = bias.repeat_interleave(copies)
        if isinstance(inner, PrunedPair):
            # the effective weights are float64 sums of float32 products: off by gamma |V| |U|
            u = inner.first.weight.detach().to(dev, f64)
            hidden = u.shape[0]
            v_abs = inner.second.weight.detach().to(dev, f64).reshape(-1, hidden).abs()[:rows]
            gamma = _gamma(hidden + 1)
            beta = (
                inner.first.bias.detach().to(dev, f64)
                if inner.first.bias is not None
                else torch.zeros(hidden, dtype=f64, device=dev)
            )
            slack_w = (gamma * v_abs @ u.reshape(hidden, -1).abs()).reshape(shape)
            slack_b = gamma * v_abs @ beta.abs()
            lip = eff_w.abs().reshape(shape) + slack_w
        else:
            assert isinstance(inner.weight, torch.Tensor)
            v = inner.weight.detach().to(dev, f64)[:rows].reshape(rows, plan.channels, plan.positions)
            gamma = _gamma(plan.copies_in + plan.constants_in * plan.positions + 1)
            a_copies = v[:, : plan.channels_in * plan.copies_in].reshape(rows, plan.channels_in, plan.copies_in, -1)
            lip_raw = a_copies.abs().sum(2).reshape(shape)
            const_abs = v[:, plan.channels_in * plan.copies_in :].abs().sum(2) @ stage.constants_in.to(dev).abs()
            slack_w, slack_b = gamma * lip_raw, gamma * const_abs
            lip = lip_raw + slack_w
        h_abs = torch.maximum(self.lo.abs(), self.hi.abs())
        delta = op((eff_w.reshape(shape) - target_w).abs() + slack_w, h_abs) + _bias_view(
            (eff_b - target_b).abs() + slack_b, layer
        )
        err_rows = op(lip, self.err) + delta
        new_err = err_rows.reshape(err_rows.shape[0], weight.shape[0], copies, *err_rows.shape[2:]).amax(2)
        new_lo, new_hi = _interval_affine(op, weight, _bias_view(bias, layer), self.lo, self.hi)
        self.layers.append(
            CertifiedLayerBound(
                index=index,
                module=describe_module(layer),
                construction=inner.construction if isinstance(inner, PrunedPair) else "copies",
                local_error_max=float(delta.max()),
                propagated_error_max=float(new_err.max()),
                lipschitz_row_sum_max=float(lip.flatten(1).sum(1).max()),
            )
        )
        self.gamma_total += gamma + _gamma(2 * lip[0].numel() + 2)
        self.err, self.lo, self.hi = new_err, new_lo, new_hi
        reach = new_err * (1.0 + max(_MIN_MARGIN, 4.0 * self.gamma_total))
        self.g_lo, self.g_hi = _outward(new_lo - reach, new_hi + reach)
        self.nonneg = False

    def _not_linear(self, pair: PrunedPair, where: str) -> str | None:
        """Why the pair may differ from its effective layer on g's activations here, or None."""
        if pair.construction == "output_blocks" and not (self.nonneg or bool((self.g_lo >= 0).all())):
            return (
                f"{where}: an output-blocks (O) pair equals its effective layer only for inputs >= 0, but this "
                "layer's input is not provably >= 0 (first layer with a box lower bound < 0, or not after a "
                "ReLU); use input blocks (I) here or a box with lo >= 0"
            )
        if pair.construction != "offset_blocks":
            return None
        linear_on_box = getattr(pair, "linear_on_box", None)
        if linear_on_box is None:
            return f"{where}: this PrunedPair cannot tell whether its offset-blocks (L) units are linear on a box"
        at = pair.first.weight.device
        if linear_on_box(self.g_lo[0].to(at), self.g_hi[0].to(at)):
            return None
        return (
            f"{where}: an offset-blocks (L) pair equals its effective layer only where every kept unit's "
            f"pre-activation is >= 0, which does not hold over this layer's input box (g's activation in "
            f"[{float(self.g_lo.min()):.4g}, {float(self.g_hi.max()):.4g}]): the verification box is larger than "
            "the box the ticket was built for, or g is too far from f to keep its activations in that box"
        )

    def _rounding_affine(
        self,
        layer: nn.Module,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        a_abs: torch.Tensor,
        eps: torch.Tensor,
    ) -> torch.Tensor:
        """Bound on ``|fl(W^ a^ + b^) - (W a + b)|``: ``W^``, ``b^`` the weights rounded to the forward dtype,
        ``|a| <= a_abs`` the exact input and ``|a^ - a| <= eps`` the computed one."""
        assert self.rounding is not None
        op = _affine_op(layer)
        w_hat = weight.to(self.rounding).double()
        terms = (w_hat.reshape(w_hat.shape[0], -1) != 0).sum(1).double()  # a zero product adds exactly
        magnitude = op(w_hat.abs(), a_abs + eps)
        carried = op(w_hat.abs(), eps) + op((w_hat - weight).abs(), a_abs)
        if bias is not None:
            b_hat = bias.to(self.rounding).double()
            terms = terms + 1
            magnitude = magnitude + _bias_view(b_hat.abs(), layer)
            carried = carried + _bias_view((b_hat - bias).abs(), layer)
        ku = terms * self.unit
        gamma = torch.where(ku < 1, ku / (1 - ku), torch.full_like(ku, float("inf")))
        underflow = 2 * terms * self.underflow
        # four sums of non-negative terms of this size, computed in float64
        self.gamma_total += 4 * _gamma(weight[0].numel() + 2)
        return carried + _bias_view(gamma, layer) * magnitude + _bias_view(underflow, layer)

    def _rounding_through_pair(
        self, pair: PrunedPair, lip: torch.Tensor, op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """Bound on how far g's computed output of ``pair`` is from the exact one.

        With ``k`` g's exact activation and ``k^`` the computed one (``|k^ - k| <= round_g``), the error is
        ``|pair^(k^) - pair(k^)| + |pair(k^) - pair(k)|``. Where the pair is linear on a box holding both
        (always for I; O on a computed activation >= 0; L where :meth:`PrunedPair.linear_on_box` says so),
        the second term is at most ``L round_g`` with the effective layer's ``L``, far below the
        ``|V| |U| round_g`` of going through the two random layers, whose products cancel in W'.
        """
        reach = self.round_g * (1.0 + max(_MIN_MARGIN, 4.0 * self.gamma_total))
        g_lo, g_hi = _outward(self.g_lo - reach, self.g_hi + reach)
        if pair.construction == "input_blocks":
            linear = True
        elif pair.construction == "output_blocks":
            linear = self.nonneg or bool((g_lo >= 0).all())
        else:
            linear_on_box = getattr(pair, "linear_on_box", None)
            at = pair.first.weight.device
            linear = linear_on_box is not None and bool(linear_on_box(g_lo[0].to(at), g_hi[0].to(at)))
        if not linear:
            return self._rounding_pair(pair, self.g_lo, self.g_hi, self.round_g)
        self.gamma_total += _gamma(lip[0].numel() + 1)
        return op(lip, self.round_g) + self._rounding_pair(pair, g_lo, g_hi, torch.zeros_like(self.round_g))

    def _rounding_pair(
        self, pair: PrunedPair, g_lo: torch.Tensor, g_hi: torch.Tensor, eps: torch.Tensor
    ) -> torch.Tensor:
        """Bound on ``|pair^(k^) - pair(k)|`` for g's activation ``k`` in [g_lo, g_hi] and ``|k^ - k| <= eps``,
        through the pair's two layers (their rounding, the carried error, the hidden units' magnitudes)."""
        dev, f64 = self.dev, torch.float64
        first, second = pair.first, pair.second
        u = first.weight.detach().to(dev, f64)
        beta = first.bias.detach().to(dev, f64) if first.bias is not None else None
        v = second.weight.detach().to(dev, f64)
        g_abs = torch.maximum(g_lo.abs(), g_hi.abs())
        round_z = self._rounding_affine(first, u, beta, g_abs, eps)
        beta_view = _bias_view(beta if beta is not None else torch.zeros(u.shape[0], dtype=f64, device=dev), first)
        _, z_hi = _interval_affine(_affine_op(first), u, beta_view, g_lo, g_hi)
        # relu is 1-Lipschitz, and both the exact and computed hidden units are 0 where even z_hi + error <= 0
        round_hidden = torch.minimum(round_z, F.relu(z_hi + round_z))
        return self._rounding_affine(second, v, None, F.relu(z_hi), round_hidden)


@dataclass(frozen=True)
class _Effective:
    """A pair's effective layer in float64, with bounds on how far each computed entry is from the exact one.

    ``weight_neg`` is None for O and L (``y = W+ x + b'``); I has ``y = W+ x+ + W- x- + b'``.
    """

    weight_pos: torch.Tensor
    weight_neg: torch.Tensor | None
    bias: torch.Tensor
    slack_pos: torch.Tensor
    slack_neg: torch.Tensor | None
    slack_bias: torch.Tensor
    gamma: float

    @classmethod
    def of(cls, pair: PrunedPair, shape: torch.Size, dev: torch.device, where: str) -> _Effective:
        f64 = torch.float64
        try:
            effective = pair.effective(f64)
        except ConstructionError as exc:
            raise VerificationError(f"{where}: {exc}") from exc
        # the effective weights are float64 sums of exact float32 products: off by gamma_hidden * |V| |U|
        u = pair.first.weight.detach().to(dev, f64)
        hidden = u.shape[0]
        u_flat = u.reshape(hidden, -1)
        beta = (
            pair.first.bias.detach().to(dev, f64)
            if pair.first.bias is not None
            else torch.zeros(hidden, dtype=f64, device=dev)
        )
        v_abs = pair.second.weight.detach().to(dev, f64).reshape(-1, hidden).abs()
        gamma = _gamma(hidden + 1)
        # O and I sum V times U's positive part into W+; L sums V times the signed U
        u_pos = u_flat.abs() if pair.construction == "offset_blocks" else u_flat.clamp(min=0)
        eff_pos, eff_neg, eff_bias = (_buffer(effective, name) for name in ("weight_pos", "weight_neg", "bias"))
        assert eff_pos is not None
        return cls(
            weight_pos=eff_pos.to(dev, f64).reshape(shape),
            weight_neg=None if eff_neg is None else eff_neg.to(dev, f64).reshape(shape),
            bias=eff_bias.to(dev, f64) if eff_bias is not None else torch.zeros(shape[0], dtype=f64, device=dev),
            slack_pos=(gamma * v_abs @ u_pos).reshape(shape),
            slack_neg=None if eff_neg is None else (gamma * v_abs @ (-u_flat).clamp(min=0)).reshape(shape),
            slack_bias=gamma * v_abs @ beta.clamp(min=0),
            gamma=gamma,
        )

    def error_terms(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        layer: nn.Module,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Lipschitz matrix ``L`` and the local error bound ``delta`` against the target layer (W, b)."""
        bias_term = _bias_view((self.bias - bias).abs() + self.slack_bias, layer)
        lip_pos = self.weight_pos.abs() + self.slack_pos
        if self.weight_neg is None or self.slack_neg is None:
            h_abs = torch.maximum(lo.abs(), hi.abs())
            delta = op((self.weight_pos - weight).abs() + self.slack_pos, h_abs) + bias_term
            return lip_pos, delta
        lip = torch.maximum(lip_pos, self.weight_neg.abs() + self.slack_neg)
        # y_g - y_f = (W+ - W) h+ + (W- + W) h- + (b' - b), with h+ <= relu(hi) and h- <= relu(-lo)
        delta = (
            op((self.weight_pos - weight).abs() + self.slack_pos, F.relu(hi))
            + op((self.weight_neg + weight).abs() + self.slack_neg, F.relu(-lo))
            + bias_term
        )
        return lip, delta

    def interval(
        self,
        lo: torch.Tensor,
        hi: torch.Tensor,
        op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        layer: nn.Module,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds of the pair's output for inputs in ``[lo, hi]`` (where it equals this layer)."""
        bias = _bias_view(self.bias, layer)
        if self.weight_neg is None or self.slack_neg is None:
            out_lo, out_hi = _interval_affine(op, self.weight_pos, bias, lo, hi)
            slack = op(self.slack_pos, torch.maximum(lo.abs(), hi.abs()))
        else:
            # x+ in [relu(lo), relu(hi)] and x- in [relu(-hi), relu(-lo)], each through its own weights
            pos_lo, pos_hi = _interval_affine(op, self.weight_pos, bias, F.relu(lo), F.relu(hi))
            neg_lo, neg_hi = _interval_affine(op, self.weight_neg, torch.zeros_like(bias), F.relu(-hi), F.relu(-lo))
            out_lo, out_hi = pos_lo + neg_lo, pos_hi + neg_hi
            slack = op(self.slack_pos, F.relu(hi)) + op(self.slack_neg, F.relu(-lo))
        slack = slack + _bias_view(self.slack_bias, layer)
        return out_lo - slack, out_hi + slack


def _buffer(module: nn.Module, name: str) -> torch.Tensor | None:
    value = getattr(module, name)
    return value if isinstance(value, torch.Tensor) else None


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
