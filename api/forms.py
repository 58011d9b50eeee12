"""The body of ``POST /approximate``: ``multipart/form-data`` with one or more ``checkpoint`` files and an
optional ``params`` field (the job's :class:`ticketsolver.jobs.JobSpec` as JSON).

Read here rather than by FastAPI's ``File``/``Form`` parameters for three reasons: a part's header line may
be long (a file name of thousands of characters is a name, not an attack, and Starlette's parser refuses any
header line over 4 KiB), a ``checkpoint`` part sent without a file name is refused with a message instead of
a validation error that quotes its content back, and a field nobody asked for is named, not ignored.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from tempfile import SpooledTemporaryFile
from typing import IO, Any

from fastapi import HTTPException, Request, status
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

__all__ = ["JobForm", "multipart_body", "params_json", "read_job_form"]

#: a part's header line; a file name of some 16,000 characters still fits
MAX_HEADER_BYTES = 64 * 1024
#: the params field (a JobSpec as JSON is a few hundred bytes)
MAX_PARAMS_BYTES = 64 * 1024
#: an upload stays in memory up to this size, then spills to a temporary file (outside the data dir)
SPOOL_BYTES = 1024 * 1024


def _refuse(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def _shown(name: bytes) -> str:
    """A client's field name, safe and short enough to quote in a message."""
    text = "".join(c for c in name.decode("utf-8", "replace") if unicodedata.category(c)[0] != "C")
    return text if len(text) <= 40 else text[:40] + "..."


@dataclass
class JobForm:
    """What the client sent: ``(file name, content)`` per checkpoint, in order, and the params text."""

    checkpoints: list[tuple[str, IO[bytes]]] = field(default_factory=list)
    params: str | None = None

    def close(self) -> None:
        for _, file in self.checkpoints:
            file.close()


class _Reader:
    """python-multipart callbacks that sort the parts into a :class:`JobForm`."""

    def __init__(self, max_files: int) -> None:
        self.form = JobForm()
        self.max_files = max_files
        self.pending: list[tuple[IO[bytes], bytes]] = []  # file writes, done off the event loop
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._file: IO[bytes] | None = None
        self._params: bytearray | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
        }

    def on_part_begin(self) -> None:
        self._disposition, self._file, self._params = b"", None, None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name")
        if name == b"checkpoint":
            if b"filename" not in options:  # its content is never quoted back
                raise _refuse("the part 'checkpoint' has no file name: send each checkpoint as a file")
            if len(self.form.checkpoints) >= self.max_files:
                raise _refuse(f"more than {self.max_files} checkpoints; the limit is {self.max_files} per job")
            self._file = SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (closed by JobForm.close)
            filename = options[b"filename"].decode("utf-8", "replace")
            self.form.checkpoints.append((filename, self._file))
        elif name == b"params":
            if self.form.params is not None:
                raise _refuse("the field 'params' was sent twice")
            self._params = bytearray()
        else:
            shown = "(unnamed)" if name is None else repr(_shown(name))
            raise _refuse(f"unknown form field {shown}: send 'checkpoint' files and an optional 'params' field")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self.pending.append((self._file, data[start:end]))
        elif self._params is not None:
            self._params += data[start:end]
            if len(self._params) > MAX_PARAMS_BYTES:
                raise _refuse(f"the field 'params' is longer than {MAX_PARAMS_BYTES} bytes")

    def on_part_end(self) -> None:
        if self._params is not None:
            self.form.params = self._params.decode("utf-8", "replace")

    def write_pending(self) -> None:
        for file, data in self.pending:
            file.write(data)
        self.pending.clear()


async def read_job_form(request: Request, max_files: int) -> JobForm:
    """Read the request's multipart body into a :class:`JobForm` (the caller closes it).

    Raises:
        HTTPException: 422 for a body that is not multipart/form-data, a malformed one, a checkpoint part
            without a file name, more than ``max_files`` checkpoints, an unknown field, or no checkpoint.
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or b"boundary" not in options:
        raise _refuse("send multipart/form-data: one or more 'checkpoint' files and an optional 'params' field")
    reader = _Reader(max_files)
    parser = MultipartParser(options[b"boundary"], reader.callbacks(), max_header_size=MAX_HEADER_BYTES)  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if reader.pending:
                await run_in_threadpool(reader.write_pending)
        parser.finalize()
    except FormParserError as exc:
        reader.form.close()
        raise _refuse(f"malformed multipart body: {exc}") from None
    except BaseException:
        reader.form.close()
        raise
    if not reader.form.checkpoints:
        raise _refuse("no checkpoint: send one or more files in the field 'checkpoint'")
    for _, file in reader.form.checkpoints:
        file.seek(0)
    return reader.form


def params_json(params: str | None) -> Any:
    """The ``params`` field as JSON (absent: ``{}``); not JSON, or nested too deeply to parse, is 422 here."""
    try:
        return json.loads(params) if params is not None else {}
    except json.JSONDecodeError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"params is not valid JSON: {exc}") from None
    except RecursionError:  # thousands of nested brackets: JSON, but no spec
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "params is nested too deeply") from None


def multipart_body(checkpoint: dict[str, Any], schema: str, description: str, default: str) -> dict[str, Any]:
    """The OpenAPI request body of a job route as :func:`read_job_form` reads it: the ``checkpoint`` file part(s)
    (its schema) and ``params``, JSON of the component ``schema``."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["checkpoint"],
                        "properties": {
                            "checkpoint": checkpoint,
                            "params": {
                                "type": "string",
                                "contentMediaType": "application/json",
                                "contentSchema": {"$ref": f"#/components/schemas/{schema}"},
                                "description": description,
                                "default": default,
                            },
                        },
                    }
                }
            },
        }
    }
