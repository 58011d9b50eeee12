"""Export a ticket as a standalone network, loadable without ticketsolver (docs/design.md section 4).

- ONNX: the pruned 2ℓ-layer network, input ``input``, output ``output``, dynamic batch dimension.
- safetensors: for every random layer, the pruned weight, the whole random source tensor and its mask::

      {step}.first.weight            pruned U (= source * mask), the shape of the torch layer
      {step}.first.weight.source     the random U as drawn (after resampling draws)
      {step}.first.weight.mask       bool, True = kept
      {step}.first.bias[.source|.mask]   beta, where the target layer has a bias
      {step}.second.weight[.source|.mask] V
      {step}.weight[.source|.mask]   a learned-mask ticket's random layer (and {step}.bias where it has one)

  An L conv pair of a graph is held compactly (:class:`~ticketsolver.construction.OffsetPair`): its
  ``first.weight`` is a grouped conv whose ``.source`` holds U's block diagonal (each unit's own tap), plus
  ``bias_offsets`` and ``bias_weight`` (the bias block's beta and V entries); metadata ``compact_pairs`` lists them.

  ``{step}`` is the module's index in the network, so the pruned names are exactly the keys of
  ``ticket.to_module().state_dict()``; anyone can check ``weight == source * mask``. The metadata gives
  each source tensor's law (``source_laws``: uniform on [-s, s] or on [0, s], ±s, or Gaussian of std s) and states
  ``source_kind`` (``iid``: every source tensor its law at draw 0; ``rerandomized``: some units redrawn with
  knowledge of the target) and ``examined_values`` (random values the build drew and compared). From an
  Erdős–Rényi sparse source, each ``.source`` tensor is the sparse random network itself (0 outside its ER
  mask) and ``source_densities`` gives the ER density of each sparse one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ticketsolver.construction import OffsetPair, PairLayout, PrunedPair
from ticketsolver.errors import ConfigError, TicketFormatError
from ticketsolver.ticket.artifact import Ticket
from ticketsolver.ticket.layer import LayerLayout

__all__ = ["EXPORT_FORMATS", "export_onnx", "export_safetensors", "export_ticket"]

EXPORT_FORMATS = ("onnx", "safetensors")


def export_safetensors(ticket: Ticket, path: str | os.PathLike[str]) -> Path:
    """Write the pruned weights, source tensors and masks (names in the module docstring).

    Raises:
        OSError: the file cannot be written.
    """
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    laws: dict[str, list[Any]] = {}
    densities: dict[str, float] = {}
    unit_steps = [i for i, step in enumerate(ticket.steps) if step["op"] in ("pair", "layer")]
    compact: list[int] = []
    for k, (step, layout) in enumerate(zip(unit_steps, ticket.layouts, strict=True)):
        module = ticket.unit_module(k)
        scales = layout.scales if isinstance(layout, PairLayout) else {n: s.scale for n, s in layout.streams().items()}
        for suffix, name, source, mask in _slots(ticket, k, module):
            param = module.get_parameter(suffix)
            key = f"{step}.{suffix}"
            tensors[key] = param.detach().clone()
            tensors[f"{key}.source"] = torch.tensor(np.array(source)).reshape(param.shape)
            laws[f"{key}.source"] = [layout.law(name), scales[name]]
            if isinstance(layout, PairLayout) and layout.density(name) < 1.0:
                densities[f"{key}.source"] = layout.density(name)
            tensors[f"{key}.mask"] = torch.from_numpy(np.array(mask, dtype=bool)).reshape(param.shape).clone()
        if isinstance(module, OffsetPair):
            compact.append(step)
    sizes = ticket.sizes()
    metadata = {
        "format": "ticketsolver.pruned-network",
        "naming": "{step}.{first|second}.{weight|bias}[.source|.mask] (a pair), {step}.{weight|bias}[.source|.mask] "
        "(a learned layer); pruned = source * mask",
        "steps": json.dumps(ticket.steps),
        "input_shape": json.dumps(list(ticket.input_shape)),
        "kept_values_sha256": ticket.kept_hash(),
        # each .source tensor's law: [symmetric, s] = uniform on [-s, s]; [nonnegative, s] = uniform on [0, s];
        # [signed_constant, s] = ±s; [normal, s] = Gaussian with standard deviation s
        "source_laws": json.dumps(laws),
        # how the .source tensors came about: iid (each its law at draw 0) or rerandomized, and how many
        # random values the build examined to get them ("unrecorded" where the build did not count them)
        "source_kind": sizes["source_kind"],
        "examined_values": str(sizes["examined_values"] if sizes["examined_values"] is not None else "unrecorded"),
    }
    if compact:
        # L conv pairs of a graph, held as OffsetPair: first.weight is a grouped conv (one group per input
        # channel) whose .source holds U's block diagonal at each unit's own tap and 0 at the others; every other
        # entry of U is pruned by construction L and not exported (regenerate it from the ticket's seed and stream
        # layout); bias_offsets/bias_weight are beta's and V's bias-block entries
        metadata["compact_pairs"] = json.dumps(compact)
    if densities:
        # an ER sparse source: each listed .source tensor is the sparse random tensor itself, drawn with that
        # density (0 outside its ER mask); biases and unlisted tensors are dense
        metadata["source_densities"] = json.dumps(densities)
    from safetensors import SafetensorError

    path = Path(path)
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:  # its I/O failures are not OSErrors; say what could not be written
        raise OSError(f"cannot write the export to {path}: {exc}") from exc
    return path


def _slots(ticket: Ticket, k: int, module: nn.Module) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Unit ``k``'s exported parameters: (parameter name in ``module``, random tensor, source and mask values)."""
    layout = ticket.layouts[k]
    if isinstance(module, OffsetPair):
        assert isinstance(layout, PairLayout)
        return OffsetPair.slots(layout, ticket.held_tensors(k), ticket.masks[k])
    source, masks = ticket.source_tensors(k), ticket.dense_masks(k)
    if isinstance(layout, LayerLayout):
        names = [("weight", "weight"), ("bias", "bias")]
    else:
        assert isinstance(module, PrunedPair)
        names = [("first.weight", "U"), ("first.bias", "beta"), ("second.weight", "V")]
    return [(suffix, name, source[name], masks[name]) for suffix, name in names if name in source]


def export_onnx(ticket: Ticket, path: str | os.PathLike[str], opset: int = 18) -> Path:
    """Write the pruned network as ONNX (input ``input``, output ``output``, dynamic batch)."""
    module = ticket.to_module()
    graph = ticket.graph
    tokens = graph is not None and graph.tokens
    example = torch.zeros(2, *ticket.input_shape, dtype=torch.int64 if tokens else torch.float32)
    batch = torch.export.Dim("batch", min=1)
    path = Path(path)
    # the exporter narrates every stage on stdout; a CLI's output is ours to keep clean
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            module,
            (example,),
            input_names=["input"],
            output_names=["output"],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            verbose=False,
            # a graph's trained tensors are built by pairs fed by a constant 1: constant folding would compute
            # them at export and store the results, tensors close to the target's own; keep the computation
            optimize=not tokens and graph is None,
        )
    if program is None:
        raise TicketFormatError("the ONNX exporter produced no program")
    program.save(str(path))
    return path


def export_ticket(ticket: Ticket, path: str | os.PathLike[str], fmt: str) -> Path:
    """Export in ``fmt`` (one of :data:`EXPORT_FORMATS`).

    Raises:
        ConfigError: ``fmt`` is not one of :data:`EXPORT_FORMATS`.

    Example:
        >>> from ticketsolver.ticket import export_ticket
        >>> export_ticket(None, "g.bin", "pickle")  # the format is checked before the ticket is touched
        Traceback (most recent call last):
        ...
        ticketsolver.errors.ConfigError: unknown export format 'pickle'; choose one of onnx, safetensors
    """
    if fmt == "onnx":
        return export_onnx(ticket, path)
    if fmt == "safetensors":
        return export_safetensors(ticket, path)
    raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
