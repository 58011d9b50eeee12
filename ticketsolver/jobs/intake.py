"""Accepting a job: store the uploads under server-generated names, load each safely, check the limits.

Place in the pipeline: jobs/service, the door of the job store. :func:`accept_job` is the one call the
service makes. Nothing a client sends becomes a path: an upload is written to ``uploads/<id>`` and given
a suffix the *server* chooses from its content (``.pt``, ``.safetensors``, ``.pt2``), so that
:func:`ticketsolver.load_target` reads it exactly as the CLI reads the client's own file — a legacy
(non-zip) ``torch.save`` file included, which has no signature a suffix-less name could be told by.
The client's file name is kept only for display, shortened, and errors name it (never the server's id
or path).

Errors::

    JobError
    ├── UploadRejectedError (also CheckpointError)  a checkpoint is unreadable, hostile or unusable
    └── LimitError                                  a limit of the service exceeded (413/422)
        └── MemoryBudgetError                       an item's estimated memory exceeds the budget
"""

from __future__ import annotations

import hashlib
import importlib.util
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from ticketsolver.errors import CheckpointError, JobError, SolverUnavailableError, TicketSolverError
from ticketsolver.jobs.memory import (
    activations_per_example,
    estimate_learn_peak_bytes,
    estimate_peak_bytes,
    layer_weights,
)
from ticketsolver.jobs.spec import LEARN_DATA, JobSpec, LearnSpec, Limits, SweepSection
from ticketsolver.jobs.store import JobStore, new_id

__all__ = [
    "LimitError",
    "MemoryBudgetError",
    "UploadRejectedError",
    "accept_job",
    "check_learn",
    "check_limits",
    "check_memory",
    "check_sweep",
    "display_name",
    "sniff_suffix",
    "target_params",
]

#: longest client file name shown; longer ones keep their start and their end around an ellipsis
MAX_SHOWN = 120
#: the first pickle of a legacy torch.save file is this magic number (any pickle protocol)
_LEGACY_TORCH_MAGIC = b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"
_CLIENT_SUFFIXES = {".pt": ".pt", ".pth": ".pt", ".ckpt": ".pt", ".bin": ".pt", ".safetensors": ".safetensors"}
_CLIENT_SUFFIXES[".pt2"] = ".pt2"


class UploadRejectedError(JobError, CheckpointError):
    """A checkpoint could not be used; the message names the client's file (``filename``), never the server's."""

    def __init__(self, filename: str, reason: str) -> None:
        super().__init__(f"checkpoint {filename!r}: {reason}")
        self.filename = filename
        self.reason = reason


class LimitError(JobError):
    """The job asks for more than this service allows (the message says which limit)."""


class MemoryBudgetError(LimitError):
    """One item alone would need more memory than the service's budget."""

    def __init__(self, message: str, estimate_bytes: int, budget_bytes: int) -> None:
        super().__init__(message)
        self.estimate_bytes = estimate_bytes
        self.budget_bytes = budget_bytes


def target_params(target: Any) -> int:
    """Trained weights and biases of the target's Linear and Conv2d layers."""
    return sum(layer_weights(target))


def check_limits(spec: JobSpec, params: Sequence[int], limits: Limits) -> None:
    """Refuse (LimitError) a job beyond ``limits``; ``params`` are the target sizes of its checkpoints (of a
    learned-mask job: the random networks' values, see :func:`check_learn`)."""
    if spec.sweep is not None:
        _check_sweep_limits(spec.sweep, params, limits)
        return
    too_big = [n for n in spec.n if n > limits.max_n] if spec.learn is None else []  # learning uses no n
    if too_big:
        raise LimitError(f"n = {too_big[0]} is above this service's limit of {limits.max_n}")
    items = len(params) * len(spec.n)
    if items > limits.max_batch_items:
        raise LimitError(
            f"{len(params)} checkpoint(s) x {len(spec.n)} value(s) of n = {items} items; the limit is "
            f"{limits.max_batch_items} per job"
        )
    weights = sum(params) * len(spec.n)
    if weights > limits.max_weights_per_job:
        what = "approximate" if spec.learn is None else "learn masks over"
        raise LimitError(
            f"the job would {what} {weights:,} weights ({items} items); the limit is "
            f"{limits.max_weights_per_job:,} per job"
        )


def _check_sweep_limits(sweep: SweepSection, params: Sequence[int], limits: Limits) -> None:
    """A sweep is one item that builds one ticket per runnable setting: its rows count as the items of a
    build job do, against their own limit, and its weights are the target's times its rows."""
    too_big = [n for n in sweep.n if n > limits.max_n]
    if too_big:
        raise LimitError(f"sweep n = {too_big[0]} is above this service's limit of {limits.max_n}")
    rows = len(sweep.settings()[0])
    if rows > limits.max_sweep_rows:
        raise LimitError(f"the sweep has {rows} settings to build; the limit is {limits.max_sweep_rows} per sweep")
    weights = sum(params) * rows
    if weights > limits.max_weights_per_job:
        raise LimitError(
            f"the sweep would approximate {weights:,} weights ({rows} settings x {sum(params):,}); the limit is "
            f"{limits.max_weights_per_job:,} per job"
        )


def check_memory(
    name: str,
    layers: Sequence[int],
    ns: Sequence[int],
    limits: Limits,
    verify: bool = True,
    depths: Sequence[str] = ("2L",),
) -> dict[int, int]:
    """The estimated peak memory of each item of one checkpoint ({n: bytes}, the deepest-costing of ``depths``);
    MemoryBudgetError when an item alone exceeds ``limits.memory_budget_bytes`` (the message states the estimate
    and the budget)."""
    estimates = {n: max(estimate_peak_bytes(layers, n, verify=verify, depth=depth) for depth in depths) for n in ns}
    n, largest = max(estimates.items(), key=lambda kv: kv[1])
    if largest > limits.memory_budget_bytes:
        raise MemoryBudgetError(
            f"checkpoint {name!r} at n = {n} needs an estimated {_gib(largest)} of memory to build; this "
            f"service's memory budget is {_gib(limits.memory_budget_bytes)} (use a smaller n or a smaller network)",
            largest,
            limits.memory_budget_bytes,
        )
    return estimates


def check_learn(name: str, target: Any, learn: LearnSpec, limits: Limits) -> tuple[int, int]:
    """Check that one checkpoint can learn a mask as ``learn`` asks; returns the random network's values (what
    the job's weight limit counts) and the item's estimated peak memory.

    Raises:
        UploadRejectedError: the checkpoint's input shape or its number of outputs does not fit the data.
        MemoryBudgetError: the estimate exceeds ``limits.memory_budget_bytes`` (the message states both).
    """
    from ticketsolver.learning import network_for

    data = LEARN_DATA[learn.data]
    _check_input_fits(name, target, learn.data)
    config = learn.config()
    network = network_for(target, config)
    _check_outputs_fit(name, network.layouts[-1].d_out, learn.data)
    values = network.source_params()
    activations = round(config.width * activations_per_example(target))
    examples = min(1024, max(config.batch_size, data.test_examples))
    estimate = estimate_learn_peak_bytes(values, activations, examples)
    if estimate > limits.memory_budget_bytes:
        raise MemoryBudgetError(
            f"checkpoint {name!r} learning a mask at width {config.width:g} ({values:,} random values) needs an "
            f"estimated {_gib(estimate)} of memory; this service's memory budget is "
            f"{_gib(limits.memory_budget_bytes)} (use a smaller width or a smaller network)",
            estimate,
            limits.memory_budget_bytes,
        )
    return values, estimate


def check_sweep(name: str, target: Any, sweep: SweepSection, limits: Limits) -> int:
    """Check that one checkpoint can be swept as ``sweep`` asks; returns the item's estimated peak memory (its
    settings are built one after another in one worker: the largest n decides).

    Raises:
        UploadRejectedError: the section names a dataset the checkpoint's input or output does not fit.
        MemoryBudgetError: the estimate at the largest n exceeds ``limits.memory_budget_bytes``.
    """
    if sweep.data is not None:
        _check_input_fits(name, target, sweep.data)
        _check_outputs_fit(name, _outputs(target), sweep.data)
    return max(check_memory(name, layer_weights(target), sweep.n, limits, depths=sweep.depth).values())


def _check_input_fits(name: str, target: Any, data_name: str) -> None:
    shape = LEARN_DATA[data_name].input_shape
    if tuple(target.input_shape) != shape:
        raise UploadRejectedError(
            name, f"it takes inputs of shape {tuple(target.input_shape)}, but {data_name!r} has {shape}"
        )


def _check_outputs_fit(name: str, outputs: int, data_name: str) -> None:
    classes = LEARN_DATA[data_name].classes
    if outputs != classes:
        raise UploadRejectedError(name, f"it has {outputs} outputs, but {data_name!r} has {classes} classes")


def _outputs(target: Any) -> int:
    """The target's outputs per example: a forward pass of one zero input."""
    import torch

    with torch.no_grad():
        return int(target.module(torch.zeros((1, *target.input_shape))).numel())


def _gib(size: int) -> str:
    return f"{size / 1024**3:.2f} GiB ({size:,} bytes)"


def display_name(name: str | None, position: int = 0) -> str:
    """The client's file name reduced to something safe to *show* (it is never used as a path).

    Folders and control characters are dropped; a name longer than :data:`MAX_SHOWN` keeps its start
    and its end (the suffix) around an ellipsis. A part without a name is ``checkpoint #<position + 1>``.

    >>> display_name("C:\\\\models\\\\net.pt"), display_name(None, 1), len(display_name("a" * 5000 + ".pt"))
    ('net.pt', 'checkpoint #2', 120)
    """
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(c for c in base if unicodedata.category(c)[0] not in "CZ" or c == " ").strip()
    if len(clean) > MAX_SHOWN:
        tail = MAX_SHOWN // 3
        clean = clean[: MAX_SHOWN - tail - 1] + "…" + clean[-tail:]
    return clean or f"checkpoint #{position + 1}"


def sniff_suffix(head: bytes, client_name: str | None) -> str:
    """The suffix :func:`ticketsolver.load_target` needs to read an upload, from its first bytes.

    A zip is a torch.export program (``.pt2``) when it has an ``archive_format`` member, else a torch
    state_dict (``.pt``); 8 bytes of header length then ``{`` is safetensors; the torch magic number
    pickled at the start is a legacy (non-zip) ``torch.save`` file. Otherwise the client's suffix if it is
    one the library reads, else none (load_target then says the format is unknown).
    """
    if head[:4] == b"PK\x03\x04":
        return ".pt2" if b"archive_format" in head else ".pt"
    if len(head) > 8 and head[8:9] == b"{":
        return ".safetensors"
    if head[:1] == b"\x80" and _LEGACY_TORCH_MAGIC in head[:32]:
        return ".pt"
    suffix = Path((client_name or "").replace("\\", "/")).suffix.lower()
    return _CLIENT_SUFFIXES.get(suffix, "")


def _store_upload(stream: IO[bytes], path: Path, max_bytes: int) -> tuple[int, str, bytes]:
    """Copy an upload to ``path`` in chunks, refusing it past ``max_bytes``; returns (size, sha256, head)."""
    digest, size, head = hashlib.sha256(), 0, b""
    with path.open("xb") as out:
        while chunk := stream.read(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise LimitError(f"a checkpoint is larger than the limit of {max_bytes:,} bytes")
            if len(head) < 1 << 16:
                head += chunk[: (1 << 16) - len(head)]
            digest.update(chunk)
            out.write(chunk)
    return size, digest.hexdigest(), head


def _pt2_member_names(path: Path) -> bytes:
    """The member names of a zip upload (where ``archive_format`` shows a torch.export program)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return "\n".join(archive.namelist()).encode()
    except (zipfile.BadZipFile, OSError, ValueError):
        return b""


def accept_job(
    store: JobStore, uploads: Sequence[tuple[str | None, IO[bytes]]], spec: JobSpec, limits: Limits, executor: str
) -> str:
    """Store the uploads, load each safely (never unpickled), check the limits and record the job.

    Args:
        store: the job store.
        uploads: (client file name or None, binary stream) per checkpoint; the name is kept for display only.
        spec: the job's parameters.
        limits: the service's limits.
        executor: name of the executor, recorded with the job.

    Returns:
        The new job's id. Each item's estimated peak memory is stored with it (``ItemView.memory_bytes``,
        ``ItemTask.memory_bytes``) for the dispatcher's admission.

    Raises:
        JobError: no checkpoint.
        LimitError: a limit exceeded (the message says which); MemoryBudgetError for memory.
        UploadRejectedError: a checkpoint is unreadable, hostile, of an unknown architecture or has NaN/inf
            weights (the message names the client's file).
        StoreError: the store could not be written.
    """
    from ticketsolver.models import load_target

    if not uploads:
        raise JobError("no checkpoint: send one or more files in the field 'checkpoint'")
    if spec.sweep is not None and len(uploads) != 1:
        raise JobError(f"a sweep takes one checkpoint, got {len(uploads)}: submit one sweep per checkpoint")
    bundled = spec.learn.data if spec.learn is not None else None if spec.sweep is None else spec.sweep.data
    if bundled is not None and importlib.util.find_spec("sklearn") is None:
        raise SolverUnavailableError(
            f"the job uses the bundled data {bundled!r}, which needs scikit-learn; this service lacks it "
            "(install ticketsolver[data])"
        )
    if len(uploads) > limits.max_batch_items:
        raise LimitError(f"{len(uploads)} checkpoints; the limit is {limits.max_batch_items} items per job")
    written: list[Path] = []
    try:
        checkpoints: list[dict[str, Any]] = []
        params: list[int] = []
        for position, (name, stream) in enumerate(uploads):
            checkpoint_id = new_id()
            shown = display_name(name, position)
            raw = store.upload_path(checkpoint_id, "")
            written.append(raw)
            size, sha256, head = _store_upload(stream, raw, limits.max_checkpoint_bytes)
            if head[:4] == b"PK\x03\x04":
                head += _pt2_member_names(raw)
            path = raw.rename(store.upload_path(checkpoint_id, sniff_suffix(head, name)))
            written.append(path)
            try:
                target = load_target(path, arch=spec.arch, max_bytes=limits.max_checkpoint_bytes)
            except TicketSolverError as exc:
                raise UploadRejectedError(shown, without_server_names(str(exc), path)) from exc
            if getattr(target, "spec", None) is not None and (spec.sweep is not None or spec.learn is not None):
                raise UploadRejectedError(
                    shown, "it is a graph (not a chain of Linear/Conv2d layers): sweeps and learned masks take chains"
                )
            layers = layer_weights(target)
            if spec.sweep is not None:  # one item, building the settings one after another
                params.append(sum(layers))
                memory = dict.fromkeys(spec.n, check_sweep(shown, target, spec.sweep, limits))
            elif spec.learn is None:
                params.append(sum(layers))
                memory = check_memory(
                    shown, layers, spec.n, limits, verify=spec.verify is not None, depths=(spec.build.depth,)
                )
            else:  # one item per checkpoint, learning over a random network of its architecture
                values, estimate = check_learn(shown, target, spec.learn, limits)
                params.append(values)
                memory = dict.fromkeys(spec.n, estimate)
            checkpoints.append(
                {
                    "id": checkpoint_id,
                    "name": shown,
                    "size": size,
                    "sha256": sha256,
                    "arch": target.arch,
                    "target_params": sum(layers),
                    "memory_bytes": memory,
                }
            )
        check_limits(spec, params, limits)
        return store.create_job(spec.to_dict(), checkpoints, spec.n, executor)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


def without_server_names(message: str, path: Path) -> str:
    """The library's message about the stored upload, with the server's path and file name replaced."""
    for server_name in (str(path), str(path.parent), path.name, path.stem):
        message = message.replace(f"'{server_name}'", "the file").replace(server_name, "the file")
    return message
