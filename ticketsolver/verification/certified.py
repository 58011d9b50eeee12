"""A certified upper bound on sup over the input box of |f(x) - g(x)|, per output.

Verification stage, the guarantee rather than a sample. Two quantities are propagated through the
network in float64, one input box at a time (batch of one):

* interval bounds ``[lo_l, hi_l]`` on the target's activation ``h_l`` entering each layer (interval bound
  propagation through f, rounded outward);
* an elementwise bound ``e_l >= |k_l - h_l|`` on the gap between g's activation ``k_l`` and f's.

For a pruned pair with effective weights (W+, W-, b') standing for the target layer (W, b)::

    e_{l+1} <= L(e_l) + delta_l,    delta_l >= |g_l(h) - f_l(h)| for every h in [lo_l, hi_l]

O (``W-`` absent, x >= 0): ``L = |W+|``, ``delta = |W+ - W| |h| + |b' - b|``.
I: ``L = max(|W+|, |W-|)`` (x+ - y+ and x- - y- have opposite signs and their absolute values sum to
|x - y|), ``delta = |W+ - W| |h+| + |W- + W| |h-| + |b' - b|``.
ReLU and max pooling are 1-Lipschitz elementwise (max pooling is applied to the error map, as
``|max a - max b| <= max |a - b|``); average pooling averages the error map; Flatten reshapes.

O pairs equal their effective layer only on x >= 0; that holds for g's own activation when the layer's
input comes out of a ReLU (possibly pooled/flattened) or out of an input box with lower bound >= 0, which
is checked here. The bound is for exact arithmetic on the networks' stored weights: float rounding of a
forward pass is measured by the other checks. Rounding *inside this computation* is covered by outward
slack (``gamma_k = k u / (1 - k u)``, ``u = 2^-53``) wherever signs can cancel and by a small relative
margin on the result (all other quantities are sums of non-negative terms).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ticketsolver.construction.pair import PrunedPair
from ticketsolver.errors import ConstructionError, VerificationError
from ticketsolver.verification.layers import describe_module, validate_networks

__all__ = ["CertifiedBound", "CertifiedLayerBound", "certify_bound"]

#: unit roundoff of float64
_UNIT_ROUNDOFF = 2.0**-53
#: smallest relative margin put on the final bound
_MIN_MARGIN = 1e-9

EXACT_ARITHMETIC_NOTE = (
    "certified for exact arithmetic on the networks' stored weights over the whole input box; "
    "float32/float64 rounding of a forward pass is not included and is measured separately"
)


def _gamma(k: int) -> float:
    """Higham's gamma_k: a sum of k products computed in float64 is off by at most gamma_k * sum |terms|."""
    ku = k * _UNIT_ROUNDOFF
    return ku / (1.0 - ku)


@dataclass(frozen=True)
class CertifiedLayerBound:
    """The bound's propagation at one pruned pair.

    Attributes:
        index: position of the layer in the Sequential.
        module: short name of the target layer.
        construction: ``"output_blocks"`` or ``"input_blocks"``.
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
class CertifiedBound:
    """An upper bound on ``sup_{x in box} |f(x) - g(x)|``, valid in exact arithmetic.

    Attributes:
        per_output: the bound for each output of the network (flattened), margin included.
        max_bound: the largest entry of ``per_output``.
        relative_margin: the relative inflation applied to absorb rounding in this computation.
        exact_arithmetic: always True: the bound holds for exact arithmetic, not for a float forward pass.
        note: the sentence a report shows next to the bound.
        layers: propagation at each pruned pair.
        seconds: wall-clock time of the computation.
    """

    per_output: list[float]
    max_bound: float
    relative_margin: float
    exact_arithmetic: bool = True
    note: str = EXACT_ARITHMETIC_NOTE
    layers: list[CertifiedLayerBound] = field(default_factory=list)
    seconds: float = 0.0

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


@torch.no_grad()
def certify_bound(
    target: nn.Sequential,
    pruned: nn.Sequential,
    input_box: tuple[Any, Any],
    *,
    input_shape: tuple[int, ...],
    device: torch.device | str | None = None,
) -> CertifiedBound:
    """Certified upper bound on ``|f(x) - g(x)|`` per output over every x in the input box.

    Args:
        target: the target network f (any float dtype; its stored values are used exactly).
        pruned: the pruned network g, matching ``target`` module by module.
        input_box: ``(lo, hi)``: floats, or tensors broadcastable to ``input_shape`` (per-feature bounds).
        input_shape: per-sample input shape, e.g. ``(1, 28, 28)``.
        device: where to compute (float64); cuda when available if None.

    Returns:
        A :class:`CertifiedBound` (exact arithmetic; see the module docstring).

    Raises:
        VerificationError: the networks do not correspond, the box is empty or infinite, an O pair's input
            is not provably >= 0 (e.g. the first layer is O and the box's lower bound is negative), or a
            pair does not have the structure of its construction.

    >>> # bound = certify_bound(f, g, (0.0, 1.0), input_shape=(1, 28, 28)); bound.max_bound
    """
    start = time.perf_counter()
    pair_indices = set(validate_networks(target, pruned))
    dev = torch.device(device) if device is not None else _default_device()
    lo, hi = _box_tensors(input_box, tuple(input_shape), dev)
    # g's activation is provably >= 0 when it comes out of a ReLU (then pooled/flattened) or out of the box
    nonneg = bool((lo >= 0).all())
    err = torch.zeros_like(lo)
    gamma_total = 0.0
    layer_bounds: list[CertifiedLayerBound] = []
    try:
        for i, (layer, other) in enumerate(zip(target, pruned, strict=True)):
            if i in pair_indices:
                assert isinstance(other, PrunedPair) and isinstance(layer, nn.Linear | nn.Conv2d)
                err, lo, hi, gamma_pair, layer_bound = _through_pair(i, layer, other, err, lo, hi, nonneg, dev)
                gamma_total += gamma_pair
                layer_bounds.append(layer_bound)
                nonneg = False
            elif isinstance(layer, nn.ReLU):
                # |relu(k) - relu(h)| <= |k - h|, and both are 0 where even h + e cannot be positive
                err = torch.minimum(err, F.relu(hi + err))
                lo, hi = F.relu(lo), F.relu(hi)
                nonneg = True
            elif isinstance(layer, nn.MaxPool2d):
                err, lo, hi = layer(err), layer(lo), layer(hi)
            elif isinstance(layer, nn.AvgPool2d):
                err = layer(err)
                size = layer.kernel_size
                window = size * size if isinstance(size, int) else int(size[0]) * int(size[1])
                # averaging signed bounds can cancel: widen by the rounding bound of the window's sum
                slack = _gamma(window + 1) * layer(torch.maximum(lo.abs(), hi.abs()))
                lo, hi = layer(lo) - slack, layer(hi) + slack
                gamma_total += _gamma(window + 1)
            elif isinstance(layer, nn.Flatten):
                err, lo, hi = layer(err), layer(lo), layer(hi)
            else:  # validate_networks admits nothing else
                raise VerificationError(f"layer {i}: {type(layer).__name__} is not supported")
    except RuntimeError as exc:  # activations that do not chain: the input shape is wrong for this network
        raise VerificationError(
            f"the networks do not accept inputs of shape {tuple(input_shape)} (at layer {i}): {exc}"
        ) from exc
    # every remaining computation summed non-negative terms, each off by at most gamma_k relatively
    margin = max(_MIN_MARGIN, 4.0 * gamma_total)
    per_output = (err.flatten() * (1.0 + margin)).cpu()
    return CertifiedBound(
        per_output=[float(v) for v in per_output],
        max_bound=float(per_output.max()) if per_output.numel() else 0.0,
        relative_margin=margin,
        layers=layer_bounds,
        seconds=time.perf_counter() - start,
    )


def _through_pair(
    index: int,
    layer: nn.Linear | nn.Conv2d,
    pair: PrunedPair,
    err: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    nonneg: bool,
    dev: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, CertifiedLayerBound]:
    """One pruned pair: the new error bound, the target's new interval, the gamma used, the layer's record."""
    where = f"layer {index} ({describe_module(layer)})"
    if pair.construction == "output_blocks" and not nonneg:
        raise VerificationError(
            f"{where}: an output-blocks (O) pair equals its effective layer only for inputs >= 0, but this "
            "layer's input is not provably >= 0 (first layer with a box lower bound < 0, or not after a "
            "ReLU); use input blocks (I) here or a box with lo >= 0"
        )
    f64 = torch.float64
    op = _affine_op(layer)
    weight = layer.weight.detach().to(dev, f64)
    bias = (
        layer.bias.detach().to(dev, f64)
        if layer.bias is not None
        else torch.zeros(weight.shape[0], dtype=f64, device=dev)
    )
    lip, delta, gamma_pair = _pair_terms(pair, weight, bias, lo, hi, op, layer, where, dev)
    new_err = op(lip, err) + delta
    new_lo, new_hi = _interval_affine(op, weight, _bias_view(bias, layer), lo, hi)
    record = CertifiedLayerBound(
        index=index,
        module=describe_module(layer),
        construction=pair.construction,
        local_error_max=float(delta.max()),
        propagated_error_max=float(new_err.max()),
        lipschitz_row_sum_max=float(lip.flatten(1).sum(1).max()),
    )
    # rounding of the pair's effective weights and of the two non-negative sums of the error step
    return new_err, new_lo, new_hi, gamma_pair + _gamma(2 * weight[0].numel() + 2), record


def _pair_terms(
    pair: PrunedPair,
    weight: torch.Tensor,
    bias: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    layer: nn.Module,
    where: str,
    dev: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The Lipschitz matrix ``L``, the local error bound ``delta`` and the gamma used, for one pair."""
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
    shape = weight.shape
    slack_pos = (gamma * v_abs @ u_flat.clamp(min=0)).reshape(shape)
    slack_bias = gamma * v_abs @ beta.clamp(min=0)
    eff_pos, eff_neg, eff_bias = (_buffer(effective, name) for name in ("weight_pos", "weight_neg", "bias"))
    assert eff_pos is not None
    w_pos = eff_pos.to(dev, f64).reshape(shape)
    b_eff = eff_bias.to(dev, f64) if eff_bias is not None else torch.zeros_like(bias)
    bias_term = _bias_view((b_eff - bias).abs() + slack_bias, layer)
    lip_pos = w_pos.abs() + slack_pos
    if eff_neg is None:
        h_abs = torch.maximum(lo.abs(), hi.abs())
        delta = op((w_pos - weight).abs() + slack_pos, h_abs) + bias_term
        return lip_pos, delta, gamma
    slack_neg = (gamma * v_abs @ (-u_flat).clamp(min=0)).reshape(shape)
    w_neg = eff_neg.to(dev, f64).reshape(shape)
    lip = torch.maximum(lip_pos, w_neg.abs() + slack_neg)
    # y_g - y_f = (W+ - W) h+ + (W- + W) h- + (b' - b), with h+ <= relu(hi) and h- <= relu(-lo)
    delta = (
        op((w_pos - weight).abs() + slack_pos, F.relu(hi))
        + op((w_neg + weight).abs() + slack_neg, F.relu(-lo))
        + bias_term
    )
    return lip, delta, gamma


def _buffer(module: nn.Module, name: str) -> torch.Tensor | None:
    value = getattr(module, name)
    return value if isinstance(value, torch.Tensor) else None


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
