"""What solving one pair yields: its masks, draw indices, per-weight errors and solver statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PairSolution"]


@dataclass
class PairSolution:
    """Masks (True = kept) of the pair's random tensors, and how well each target entry is matched."""

    masks: dict[str, np.ndarray]  # U, beta (if any), V: bool, in the held shapes (PairLayout.mask_shapes)
    draws: np.ndarray  # PairLayout.draw_shape uint8: the kept draw of each unit (I: and of each input block)
    weight_errors: np.ndarray  # (d_out, d_in) |w - subset sum| (I: max of the x+ and x- problems)
    bias_errors: np.ndarray | None  # (d_out,)
    usable: np.ndarray  # (d_out, d_in) usable coefficients per weight at its kept draw (I: min of two)
    stats: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-ready statistics: errors, usable counts, kept counts, solver facts."""
        errors = self.weight_errors.ravel()
        out: dict[str, Any] = {
            "weights": int(errors.size),
            "weight_error_max": float(errors.max()),
            "weight_error_mean": float(errors.mean()),
            "weight_error_p99": float(np.quantile(errors, 0.99)),
            "usable_mean": float(self.usable.mean()),
            "usable_min": int(self.usable.min()),
            "redrawn_units": int(np.count_nonzero(self.draws)),
            "kept": {name: int(mask.sum()) for name, mask in self.masks.items()},
        }
        if self.bias_errors is not None:
            out["bias_error_max"] = float(self.bias_errors.max())
        out.update(self.stats)
        return out
