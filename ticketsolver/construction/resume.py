"""Per-layer checkpoints of a build, so an interrupted build resumes from its finished layers.

Each finished pair is written as ``pair{k}.npz`` (arrays, loaded with ``allow_pickle=False``) plus
``pair{k}.json`` (statistics and a fingerprint). The fingerprint hashes everything the solution depends
on — the build configuration, the pair's layout and the target layer's weights — so a stale or foreign
file is ignored, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ticketsolver.construction.solution import PairSolution

__all__ = ["fingerprint", "load_pair", "save_pair"]


def fingerprint(config: dict[str, Any], layout: Any, weight: np.ndarray, bias: np.ndarray | None) -> str:
    """SHA-256 of what a unit's solution depends on: the config, the unit's layout (a PairLayout or a LayerLayout:
    anything with ``to_dict``), the target weights and bias."""
    digest = hashlib.sha256(json.dumps([config, layout.to_dict()], sort_keys=True, default=list).encode())
    digest.update(np.ascontiguousarray(weight, dtype=np.float64).tobytes())
    if bias is not None:
        digest.update(np.ascontiguousarray(bias, dtype=np.float64).tobytes())
    return digest.hexdigest()


def save_pair(directory: Path, pair: int, solution: PairSolution, print_: str) -> None:
    """Write one finished pair atomically (arrays first, the JSON that validates them last)."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {f"mask_{name}": mask for name, mask in solution.masks.items()}
    arrays.update(draws=solution.draws, weight_errors=solution.weight_errors, usable=solution.usable)
    if solution.bias_errors is not None:
        arrays["bias_errors"] = solution.bias_errors
    # unique temporary names: two processes finishing the same layer must not write into one file
    with tempfile.NamedTemporaryFile(dir=directory, prefix=f".pair{pair}.", suffix=".npz", delete=False) as npz:
        np.savez_compressed(npz, allow_pickle=False, **arrays)
    os.replace(npz.name, directory / f"pair{pair}.npz")
    with tempfile.NamedTemporaryFile("w", dir=directory, prefix=f".pair{pair}.", suffix=".json", delete=False) as js:
        js.write(json.dumps({"fingerprint": print_, "stats": solution.stats}, default=float))
    os.replace(js.name, directory / f"pair{pair}.json")


def load_pair(
    directory: Path, pair: int, print_: str, shapes: dict[str, tuple[int, ...]] | None = None
) -> PairSolution | None:
    """The stored solution of ``pair`` if present, intact and made for this very layer and config; with ``shapes``
    (the layout's :meth:`~ticketsolver.construction.layout.PairLayout.mask_shapes`), only if its masks have them (a
    file from a version that held L's U mask in its dense view is solved again)."""
    try:
        meta = json.loads((directory / f"pair{pair}.json").read_text())
        if meta.get("fingerprint") != print_:
            return None
        with np.load(directory / f"pair{pair}.npz", allow_pickle=False) as z:
            masks = {key[5:]: z[key].astype(bool) for key in z.files if key.startswith("mask_")}
            if shapes is not None and {name: mask.shape for name, mask in masks.items()} != shapes:
                return None
            return PairSolution(
                masks=masks,
                draws=z["draws"].astype(np.uint8),
                weight_errors=z["weight_errors"],
                bias_errors=z["bias_errors"] if "bias_errors" in z.files else None,
                usable=z["usable"],
                stats={**meta.get("stats", {}), "resumed": True},
            )
    except Exception:  # a missing, partial or corrupt file (zip, npy or JSON errors): solve the layer again
        return None
