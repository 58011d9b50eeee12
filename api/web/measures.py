"""The numbers behind the job page's figures, recomputed from a finished item's ticket and its checkpoint.

The stored report keeps summaries (max and mean error per layer, max and mean relative error per input
set); the figures need the distributions, which the library recomputes in a second or two:

* :func:`weight_errors`: per target layer, ``|w - w_eff|`` for every weight, where ``w_eff`` is the
  effective weight of the layer's pruned pair (:meth:`PrunedPair.effective`); for an input-blocks pair
  the larger of its two problems' errors, exactly what the builder records as ``weight_error_max``.
* :func:`relative_output_errors`: per dtype, da Cunha et al.'s relative error ``max_c |f - g| / max_c |f|``
  of each random input, drawn as the item's verification drew them (its box, law and seed), at most
  :data:`MAX_INPUTS` of them.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["MAX_INPUTS", "relative_output_errors", "weight_errors"]

#: inputs compared for the output-error figure: the verification's own draw when it drew no more
MAX_INPUTS = 1024

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def weight_errors(target: nn.Sequential, ticket: Any) -> list[np.ndarray]:
    """Per target layer (Linear/Conv2d, in order), the flat float64 array of ``|w - w_eff|`` per weight.

    Args:
        target: the target in normal form (``Target.module``).
        ticket: the item's :class:`~ticketsolver.ticket.Ticket`, built for ``target``.

    Raises:
        VerificationError: the ticket was not built for this target.
        ConstructionError: a pair's sparsity pattern does not have its construction's structure.
    """
    from ticketsolver.verification.against import check_ticket_matches

    check_ticket_matches(target, ticket)
    layers = [module for module in target if isinstance(module, nn.Linear | nn.Conv2d)]
    errors = []
    for layer, pair in zip(layers, ticket.pairs(), strict=True):
        effective = pair.effective(torch.float64)
        weight = layer.weight.detach().to(torch.float64).reshape(effective.weight_pos.shape)
        error = (weight - effective.weight_pos).abs()
        if effective.weight_neg is not None:  # I: y = W+ x+ + W- x- stands for W x+ - W x-
            error = torch.maximum(error, (weight + effective.weight_neg).abs())
        errors.append(error.flatten().numpy())
    return errors


def relative_output_errors(
    target: nn.Sequential, ticket: Any, verification: dict[str, Any], limit: int = MAX_INPUTS
) -> dict[str, np.ndarray]:
    """Per dtype of the verification, the relative output error of each of its first random inputs.

    Args:
        target: the target in normal form.
        ticket: the item's ticket.
        verification: the item's stored verification report (``Report.to_dict()``): its ``input_box``
            (bounds and law), ``seed`` and ``dtypes`` say how to draw and run.
        limit: at most this many inputs (the verification's own draw when it drew no more).

    Returns:
        dtype -> (inputs,) float64 array; NaN where the target's output is all zeros (undefined there).
    """
    from ticketsolver.verification.inputs import sample_inputs
    from ticketsolver.verification.layers import validate_networks
    from ticketsolver.verification.metrics import relative_errors

    box = verification["input_box"]
    # the service verifies over one scalar box (declared, the ticket's build box or the default): take it
    # whole; a per-feature box (from data) is narrowed to the part every feature shares
    lo, hi = float(box["lo_max"]), float(box["hi_min"])
    if not lo < hi:
        lo, hi = float(box["lo_min"]), float(box["hi_max"])
    random = verification.get("sections", {}).get("random", {})
    drawn = max((int(metrics["n_inputs"]) for metrics in random.values()), default=0)
    count = min(limit, drawn) if drawn else limit
    seed, law = int(verification.get("seed", 0)), box.get("law_name", "uniform")
    inputs = sample_inputs(torch.tensor(lo), torch.tensor(hi), count, tuple(ticket.input_shape), seed, law)
    pruned = ticket.to_module()
    validate_networks(target, pruned)
    errors: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for name in verification["dtypes"]:
            dtype = _DTYPES[name]
            f = _copy(target, dtype)(inputs.to(dtype))
            g = _copy(pruned, dtype)(inputs.to(dtype))
            errors[name] = relative_errors(f, g).numpy()
    return errors


def _copy(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of ``module`` in ``dtype`` (the caller's module is left as it is)."""
    return copy.deepcopy(module).to(dtype).eval()
