"""Checks of exported tickets that tests in several folders share (import: ``from ticket.checks import ...``).

A check reads the exported file with safetensors and NumPy alone, as a user without ticketsolver would.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["check_pruned_equals_source_times_mask"]


def check_pruned_equals_source_times_mask(path: str | os.PathLike[str]) -> bool:
    """True when an exported safetensors file holds at least one pruned tensor and every pruned tensor
    ``{key}`` has its ``{key}.source`` and boolean ``{key}.mask`` and equals their product exactly.

    An export without pruned tensors, or with a pruned tensor whose source or mask is missing, is False.
    """
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    pruned = [key for key in tensors if not key.endswith((".source", ".mask"))]
    if not pruned or any(f"{key}.source" not in tensors or f"{key}.mask" not in tensors for key in pruned):
        return False
    return all(
        tensors[f"{key}.mask"].dtype == np.bool_
        and np.array_equal(tensors[key], tensors[f"{key}.source"] * tensors[f"{key}.mask"])
        for key in pruned
    )
