"""Loading a target network from a checkpoint file, safely.

Place in the pipeline: *target side*, the entry point: file -> tensors -> module -> normal form -> Target.
Checkpoints are untrusted input (the service accepts uploads), so no file is ever unpickled beyond
tensors and plain containers, and nothing is read before the size limit is checked.

Formats:

* ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin``: ``torch.load(weights_only=True)``; a plain state_dict or a
  dict holding one under ``"state_dict"`` / ``"model_state_dict"``. Architecture from the tensor
  shapes (:mod:`ticketsolver.models.zoo`).
* ``.safetensors``: ``safetensors.torch.load`` (no code can be stored in the format).
* ``.pt2``: a ``torch.export`` program, any architecture of supported ops.

Why ``.pt2`` files are vetted before ``torch.export.load`` (torch 2.13): that function is not safe on
untrusted files. Reading its source (``torch/export/pt2_archive/_package.py``,
``torch/_export/serde/serialize.py``, ``torch/export/_unlift.py``) shows it

1. unpickles weights/constants flagged ``use_pickle`` with ``torch.load(weights_only=False)``, opaque
   constants with ``pickle.loads`` and torchbind objects with ``torch._C._pickle_load_obj``;
2. loads the example inputs with ``torch.load(weights_only=True)`` and, when that fails, *retries with
   weights_only=False* — a crafted sample-input file runs its code (verified: it creates a file);
3. loads AOTInductor shared libraries found under ``data/aotinductor/``;
4. falls back to a legacy zip layout whose state_dict goes through the same unsafe retry;
5. passes symbolic-shape strings from the graph JSON to ``sympy.sympify`` (which evaluates them);
6. compiles the stored ``guards_code`` strings into the module ``ExportedProgram.module()`` returns,
   and runs them on every call of it.

Items 2, 5 and 6 were verified with harmless payloads that create a file.

So, before torch sees the file, :func:`_vet_pt2_archive` reads it with the same archive reader torch
uses and refuses it unless: every member is one of the known names of the current archive layout
(``models/model.json``, ``data/weights/weight_N`` and ``data/constants/tensor_N`` raw tensors, their
JSON configs, ``data/sample_inputs/model.pt``, ``extra/*`` text, version files), so no AOTInductor
binaries, legacy files, custom or opaque objects; no config entry uses pickle; the sample inputs load
with ``weights_only=True`` (so torch's retry never happens); every symbolic expression consists only of
numbers, symbol names, arithmetic and a fixed list of sympy function names; guard strings are plain
size comparisons; and every node of the graph is one of the supported ATen ops (checked on the JSON,
before deserialisation). Only then is ``torch.export.load`` called, on the same bytes in memory (no
time-of-check/time-of-use gap), and the program is translated without ever calling ``.module()``.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from ticketsolver.errors import CheckpointError, TicketSolverError, UnsupportedModuleError
from ticketsolver.graph.capture import GRAPH_OPS, GraphTarget
from ticketsolver.models.normalize import SUPPORTED_EXPORT_OPS, Target, normalize, normalize_exported_program
from ticketsolver.models.zoo import build_from_state_dict, infer_architecture

__all__ = ["DEFAULT_MAX_BYTES", "STATE_DICT_SUFFIXES", "load_target"]

#: Largest checkpoint read by default (2 GiB); larger files are refused before reading.
DEFAULT_MAX_BYTES = 2 * 1024**3
#: File suffixes read with ``torch.load(weights_only=True)``.
STATE_DICT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
_NESTED_KEYS = ("state_dict", "model_state_dict")


def load_target(
    path: str | os.PathLike[str], arch: str | None = None, *, max_bytes: int = DEFAULT_MAX_BYTES
) -> Target | GraphTarget:
    """Load a checkpoint file and return its network in normal form.

    Args:
        path: a ``.pt``/``.pth``/``.ckpt``/``.bin`` state_dict, a ``.safetensors`` file, or a ``.pt2``
            ``torch.export`` program.
        arch: for state_dicts, the architecture to insist on (``"lenet5"``, ``"mlp"``); None infers it
            from the tensor shapes. For ``.pt2`` only None or ``"export"``.
        max_bytes: files larger than this are refused before reading.

    Returns:
        The :class:`Target` (normal form, architecture name, per-sample input shape, file name).

    Raises:
        CheckpointError: missing, empty, too large, corrupt or hostile file (pickled code), tensors
            that are not a built-in architecture, or a mismatched ``arch``.
        UnsupportedModuleError: a ``.pt2`` program uses an unsupported op or is not a single chain.
        ConstructionError: NaN/inf weights, or normalisation could not be verified.
    """
    file = Path(path)
    data = _read_bounded(file, max_bytes)
    kind = _format_of(file, data)
    if kind == "pt2":
        if arch not in (None, "export"):
            raise CheckpointError(
                f"mismatched --arch {arch}: {file.name} is a torch.export program, which carries its own "
                f"architecture; leave --arch out"
            )
        return _load_exported(data, file.name, max_bytes)
    if kind == "safetensors":
        state_dict = _load_safetensors(data, file.name)
    else:
        state_dict = _load_torch(data, file.name, max_bytes)
    name = arch if arch is not None else infer_architecture(state_dict)
    module, input_shape = build_from_state_dict(state_dict, name)
    return Target(normalize(module, input_shape), name, input_shape, file.name)


# ---------------------------------------------------------------------------------------------------
# Reading bytes and telling formats apart
# ---------------------------------------------------------------------------------------------------


def _read_bounded(file: Path, max_bytes: int) -> bytes:
    """Read the whole file once, refusing missing, empty and oversized files."""
    try:
        size = file.stat().st_size
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {str(file)!r}: {error.strerror or error}") from error
    if not file.is_file():
        raise CheckpointError(f"checkpoint {str(file)!r} is not a regular file")
    if size > max_bytes:
        raise CheckpointError(f"{file.name} is {size} bytes, more than the limit of {max_bytes} bytes")
    with file.open("rb") as handle:
        data = handle.read(max_bytes + 1)  # the file may have grown since stat()
    if len(data) > max_bytes:
        raise CheckpointError(f"{file.name} is larger than the limit of {max_bytes} bytes")
    if not data:
        raise CheckpointError(f"{file.name} is empty")
    return data


def _format_of(file: Path, data: bytes) -> str:
    """``"pt2"``, ``"safetensors"`` or ``"torch"`` from the suffix, else from the content."""
    suffix = file.suffix.lower()
    if suffix == ".pt2":
        return "pt2"
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in STATE_DICT_SUFFIXES:
        return "torch"
    if zipfile.is_zipfile(io.BytesIO(data)):
        try:
            names = zipfile.ZipFile(io.BytesIO(data)).namelist()
        except (zipfile.BadZipFile, ValueError, OSError) as error:
            raise CheckpointError(f"{file.name} is a corrupt zip archive: {error}") from error
        return "pt2" if any(n.endswith("/archive_format") for n in names) else "torch"
    if len(data) > 8 and data[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
        return "safetensors"
    raise CheckpointError(
        f"{file.name}: unknown checkpoint format; use .pt/.pth (state_dict), .safetensors or .pt2 (torch.export)"
    )


def _check_zip(data: bytes, name: str, max_bytes: int) -> zipfile.ZipFile | None:
    """Refuse corrupt zips, duplicate members and archives that inflate beyond the size limit."""
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return None
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise CheckpointError(f"{name} is a corrupt zip archive: {error}") from error
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise CheckpointError(f"{name} has duplicate archive members; refused")
    if sum(info.file_size for info in infos) > max_bytes:
        raise CheckpointError(f"{name} inflates beyond {max_bytes} bytes; refused")
    return archive


# ---------------------------------------------------------------------------------------------------
# State dicts
# ---------------------------------------------------------------------------------------------------


def _load_torch(data: bytes, name: str, max_bytes: int) -> Mapping[str, torch.Tensor]:
    """``torch.load`` with the weights-only unpickler: tensors and plain containers, never code."""
    _check_zip(data, name, max_bytes)
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The weights-only unpickler raises this for any global it does not allow: classes,
        # functions, reduce payloads. Such files are refused whatever they intended.
        raise CheckpointError(
            f"{name} contains pickled objects other than tensors (for example code); refused. Save a "
            f"plain state_dict: torch.save(model.state_dict(), path)"
        ) from error
    except Exception as error:  # noqa: BLE001 - any failure to parse untrusted bytes is a corrupt file
        raise CheckpointError(f"{name} is not a readable torch checkpoint: {_short(error)}") from error
    return _unwrap_state_dict(loaded, name)


def _unwrap_state_dict(loaded: Any, name: str) -> Mapping[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise CheckpointError(
            f"{name} holds a {type(loaded).__name__}, not a state_dict (a mapping of names to tensors, "
            f"possibly under {' or '.join(repr(k) for k in _NESTED_KEYS)})"
        )
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return loaded


def _load_safetensors(data: bytes, name: str) -> Mapping[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return _unwrap_state_dict(load(data), name)
    except CheckpointError:
        raise
    except Exception as error:  # noqa: BLE001 - SafetensorError and friends: corrupt header or data
        raise CheckpointError(f"{name} is not a readable safetensors file: {_short(error)}") from error


def _short(error: BaseException) -> str:
    """First line of an error, without terminal colour codes (torch puts some in its messages)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:300] if text else ''}"


# ---------------------------------------------------------------------------------------------------
# torch.export programs
# ---------------------------------------------------------------------------------------------------

_MODEL = "model"
_FIXED_MEMBERS = {
    "archive_format",
    "archive_version",
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    f"models/{_MODEL}.json",
    f"data/weights/{_MODEL}_weights_config.json",
    f"data/constants/{_MODEL}_constants_config.json",
    f"data/sample_inputs/{_MODEL}.pt",
}
_TENSOR_MEMBER = re.compile(r"data/(weights/weight|constants/tensor)_\d+")
_EXTRA_MEMBER = re.compile(r"extra/[\w.\-]+")

# Symbolic expressions: numbers, operators, quoted symbol names and a fixed vocabulary, nothing else
# (no attribute access, no subscripts, no other names), so sympify can only build arithmetic.
_EXPR_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<string>'[a-z]{1,4}\d+')|"
    r"(?P<name>[A-Za-z_]\w*)|(?P<op>\*\*|//|<=|>=|==|!=|[-+*/%(),<>=]))"
)
_EXPR_NAMES = frozenset(
    "Symbol Integer Rational Float Add Mul Pow Max Min Abs Mod Eq Ne Lt Le Gt Ge And Or Not floor "
    "ceiling oo zoo nan true false True False S FloorDiv ModularIndexing Where PythonMod CleanDiv "
    "CeilToInt FloorToInt CeilDiv LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv "
    "IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal ToFloat "
    "Identity integer positive negative nonnegative nonpositive real finite zero".split()
)
_SYMBOL_NAME = re.compile(r"[a-z]{1,4}\d+")
_GUARD = re.compile(r"(?:L\['\w+'\](?:\.size\(\)|\.stride\(\))\[\d+\]|\d+|\s+|[-+*/%<>=!(),]|\b(?:and|or|not)\b)+")


def _load_exported(data: bytes, name: str, max_bytes: int) -> Target | GraphTarget:
    """Vet the archive, load the program from the vetted bytes and translate it: to the normal form when it is a
    chain of supported layers, else to a graph target (:mod:`ticketsolver.graph.capture`), whose refusal names the
    module of the first op it cannot take."""
    _vet_pt2_archive(data, name, max_bytes)
    try:
        program = torch.export.load(io.BytesIO(data))
    except TicketSolverError:
        raise
    except Exception as error:  # noqa: BLE001 - deserialising untrusted bytes; any failure = corrupt
        raise CheckpointError(f"{name} is not a loadable torch.export program: {_short(error)}") from error
    try:
        normal, input_shape = normalize_exported_program(program)
    except UnsupportedModuleError:
        from ticketsolver.graph.capture import capture_program

        return capture_program(program, name)
    return Target(normal, "export", input_shape, name)


def _vet_pt2_archive(data: bytes, name: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Refuse a .pt2 archive unless torch.export.load can only read JSON, raw tensors and tensors."""
    if _check_zip(data, name, max_bytes) is None:
        raise CheckpointError(f"{name} is not a zip archive, so not a .pt2 program")
    reader = _open_pt2(data, name)
    members = reader.get_file_names()
    for member in members:
        known = member in _FIXED_MEMBERS or _TENSOR_MEMBER.fullmatch(member) or _EXTRA_MEMBER.fullmatch(member)
        if not known:
            raise CheckpointError(
                f"{name}: unexpected archive member {member!r}; refused (only the exported program's "
                f"JSON, raw tensors and sample inputs are read: no AOTInductor binaries, pickled or "
                f"custom objects, or legacy layouts)"
            )
    for member in (f"models/{_MODEL}.json", f"data/weights/{_MODEL}_weights_config.json", "archive_version"):
        if member not in members:
            raise CheckpointError(f"{name}: archive member {member!r} is missing")
    _vet_payload_config(reader, f"data/weights/{_MODEL}_weights_config.json", "weight_", name)
    if f"data/constants/{_MODEL}_constants_config.json" in members:
        _vet_payload_config(reader, f"data/constants/{_MODEL}_constants_config.json", "tensor_", name)
    if f"data/sample_inputs/{_MODEL}.pt" in members:
        _vet_sample_inputs(reader.read_bytes(f"data/sample_inputs/{_MODEL}.pt"), name)
    _vet_program_json(_read_json(reader, f"models/{_MODEL}.json", name), name)


def _open_pt2(data: bytes, name: str) -> Any:
    """Open with the reader torch.export.load itself uses, so both see the same members."""
    from torch.export.pt2_archive import PT2ArchiveReader
    from torch.export.pt2_archive.constants import ARCHIVE_VERSION_PATH, ARCHIVE_VERSION_VALUE

    try:
        reader = PT2ArchiveReader(io.BytesIO(data))
        version = reader.read_string(ARCHIVE_VERSION_PATH)
    except Exception as error:  # noqa: BLE001 - the C++ reader raises RuntimeError/AssertionError
        raise CheckpointError(f"{name} is not a readable .pt2 archive: {_short(error)}") from error
    if version != ARCHIVE_VERSION_VALUE:
        raise CheckpointError(f"{name}: .pt2 archive version {version!r}, expected {ARCHIVE_VERSION_VALUE!r}")
    return reader


def _read_json(reader: Any, member: str, name: str) -> Any:
    try:
        return json.loads(reader.read_bytes(member))
    except (ValueError, RuntimeError) as error:
        raise CheckpointError(f"{name}: archive member {member!r} is not valid JSON: {_short(error)}") from error


def _vet_payload_config(reader: Any, member: str, prefix: str, name: str) -> None:
    """Every weight/constant must be a raw tensor record, never a pickle or a custom object."""
    config = _read_json(reader, member, name)
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise CheckpointError(f"{name}: {member} has no 'config' mapping")
    for fqn, entry in entries.items():
        path = entry.get("path_name", "") if isinstance(entry, dict) else ""
        if not isinstance(entry, dict) or entry.get("use_pickle") is not False or not path.startswith(prefix):
            raise CheckpointError(
                f"{name}: {fqn!r} in {member} is stored as a pickled or custom object; refused (only raw "
                f"tensors are loaded)"
            )


def _vet_sample_inputs(raw: bytes, name: str) -> None:
    """Load the sample inputs weights-only first, so torch's unsafe retry can never be reached."""
    try:
        torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure here would send torch to weights_only=False
        raise CheckpointError(
            f"{name}: the program's sample inputs are not plain tensors ({_short(error)}); refused"
        ) from error


def _json_dicts(value: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object in a document, depth first (nested graphs included)."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _json_dicts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_dicts(item)


def _vet_program_json(program: Any, name: str) -> None:
    """Check ops, symbolic expressions and guards in the program's JSON before torch parses it."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise CheckpointError(f"{name}: models/{_MODEL}.json is not an exported program")
    guards = program.get("guards_code") or []
    if not isinstance(guards, list) or not all(isinstance(g, str) and _GUARD.fullmatch(g) for g in guards):
        raise CheckpointError(f"{name}: guard code other than size comparisons; refused")
    for item in _json_dicts(program):
        if "expr_str" in item and not _safe_expression(item["expr_str"]):
            raise CheckpointError(
                f"{name}: symbolic expression {str(item['expr_str'])[:80]!r} is not plain arithmetic; refused"
            )
        if "as_graph" in item:
            raise UnsupportedModuleError(f"{name}: the program has nested graphs (control flow); not supported")
        if {"target", "inputs", "outputs"} <= item.keys():  # a graph node, at any depth
            _vet_node(item, name)


def _vet_node(node: Any, name: str) -> None:
    target = node.get("target") if isinstance(node, dict) else None
    if not isinstance(target, str):
        raise CheckpointError(f"{name}: malformed graph node in models/{_MODEL}.json")
    op = target.removeprefix("torch.ops.") if target.startswith("torch.ops.aten.") else target
    op = "operator." + op.removeprefix("_operator.") if op.startswith("_operator.") else op
    if op not in SUPPORTED_EXPORT_OPS and op not in GRAPH_OPS:
        raise UnsupportedModuleError(
            f"{name}: node {node.get('name')!r} [{op}{_module_of(node)}] is not supported; supported ops: "
            f"{', '.join(sorted(SUPPORTED_EXPORT_OPS | GRAPH_OPS))}"
        )


def _module_of(node: dict[str, Any]) -> str:
    """`` from module 'block.1' (ReLU6)`` for a node whose ``nn_module_stack`` metadata (``key,path,type;...``, the
    innermost module last) names a submodule; `` in the model's own forward`` for the root; else nothing. The text
    comes from an untrusted file: only printable characters, and at most 200 of them, are quoted."""
    metadata = node.get("metadata")
    stack = metadata.get("nn_module_stack") if isinstance(metadata, dict) else None
    if not isinstance(stack, str) or not stack:
        return ""
    fields = stack.split(";")[-1].split(",")
    if len(fields) < 3:
        return ""
    path, kind = fields[1], fields[-1].rsplit(".", 1)[-1]
    printable = "".join(c for c in f"{path}{kind}" if c.isprintable())
    if len(printable) != len(path) + len(kind) or len(printable) > 200:
        return ""
    return f" from module {path!r} ({kind})" if path else f" in the model's own forward ({kind})"


def _safe_expression(text: Any) -> bool:
    if not isinstance(text, str) or len(text) > 10_000:
        return False
    position = 0
    while position < len(text):
        match = _EXPR_TOKEN.match(text, position)
        if match is None or match.end() == position:
            return text[position:].strip() == ""
        word = match.group("name")
        if word is not None and word not in _EXPR_NAMES and not _SYMBOL_NAME.fullmatch(word):
            return False
        position = match.end()
    return True
