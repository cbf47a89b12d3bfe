"""Multipart request bodies, parsed with python-multipart straight into upload files.

Each file part goes directly to its own private file in the request's upload directory, in one
pass: no spooled copy first. Small files (the usual case for a prediction) are written on the
event loop, which costs a few microseconds of page-cache work; once a request's files pass
:data:`INLINE_BYTES`, the writes move to a worker thread. Every file created is recorded in
``paths`` as soon as it exists, so a request that fails half way (a malformed body, the size
limit, a client gone) leaves nothing behind once its owner removes them.
"""

from __future__ import annotations

import codecs
import itertools
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio.to_thread
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from forgehub.module.contract import UploadedFile

INLINE_BYTES = 64 * 1024  # files up to this size in all are written on the event loop
MAX_FILES = 64
MAX_FIELDS = 1000
MAX_FIELD_BYTES = 1024 * 1024

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
_names = itertools.count()
_tag = secrets.token_hex(6)


class BadForm(ValueError):
    """The body is not a well-formed multipart form (or breaks its limits)."""


def new_upload_file(directory: Path) -> tuple[int, str]:
    """Create a new private (0600) file for an upload, like ``mkstemp`` but cheaper per call.

    Names are a per-process random tag and a counter; ``O_EXCL | O_NOFOLLOW`` refuse an existing
    name or a planted symlink, and a taken name moves on to the next one.
    """
    while True:
        path = os.path.join(directory, f"forgehub-upload-{_tag}-{next(_names)}")
        try:
            return os.open(path, _FLAGS, 0o600), path
        except FileExistsError:
            continue


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Uploads:
    """Files uploaded with one request, in ``directory``; :meth:`cleanup` removes them.

    :class:`MultipartForm` writes each file part straight to its file here and records its path
    at once.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.paths: list[str] = []

    def cleanup(self) -> None:
        for path in self.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.paths.clear()


class _Part:
    __slots__ = ("name", "filename", "content_type", "fd", "path", "buf", "size")

    def __init__(self) -> None:
        self.name = ""
        self.filename: str | None = None
        self.content_type = ""
        self.fd = -1
        self.path = ""
        self.buf = bytearray()
        self.size = 0


class MultipartForm:
    """Fields (``str``) and files (:class:`UploadedFile`) of one request, by name, in order."""

    def __init__(self, uploads: Uploads) -> None:
        self.uploads = uploads  # every file created is recorded there at once
        self.values: dict[str, list[str | UploadedFile]] = {}
        self.file_bytes = 0
        self._files = 0
        self._fields = 0

    def getlist(self, name: str) -> list[str | UploadedFile]:
        return self.values.get(name, [])

    async def read(self, content_type: str, chunks: AsyncIterator[bytes]) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if not boundary:
            raise BadForm("the multipart body has no boundary")
        charset = params.get(b"charset", b"utf-8").decode("latin-1")
        try:
            codecs.lookup(charset)
        except LookupError:
            raise BadForm(f"unknown charset {charset[:40]!r} in Content-Type") from None
        # callbacks only record what happened; the async loop below acts on it per chunk
        events: list[tuple[str, Any]] = []
        header_field = bytearray()
        header_value = bytearray()
        headers: dict[bytes, bytes] = {}

        def on_header_field(data: bytes, start: int, end: int) -> None:
            header_field.extend(data[start:end])

        def on_header_value(data: bytes, start: int, end: int) -> None:
            header_value.extend(data[start:end])

        def on_header_end() -> None:
            headers[bytes(header_field).lower()] = bytes(header_value)
            header_field.clear()
            header_value.clear()

        def on_headers_finished() -> None:
            events.append(("headers", dict(headers)))
            headers.clear()

        def on_part_data(data: bytes, start: int, end: int) -> None:
            events.append(("data", data[start:end]))

        def on_part_end() -> None:
            events.append(("end", b""))

        parser = MultipartParser(
            boundary,
            {
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
                "on_headers_finished": on_headers_finished,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
            },
        )
        part: _Part | None = None
        try:
            async for chunk in chunks:
                parser.write(chunk)
                for kind, data in events:
                    if kind == "headers":
                        part = self._begin(data, charset)
                    elif kind == "data":
                        assert part is not None
                        await self._data(part, data)
                    else:
                        assert part is not None
                        await self._end(part, charset)
                        part = None
                events.clear()
            parser.finalize()
        except MultipartParseError as exc:
            raise BadForm(f"malformed multipart body: {exc}") from None
        finally:
            if part is not None and part.fd >= 0:
                os.close(part.fd)
        if part is not None:
            raise BadForm("the multipart body ends in the middle of a part")

    def _begin(self, headers: dict[bytes, bytes], charset: str) -> _Part:
        disposition, options = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise BadForm("a multipart part has no Content-Disposition: form-data; name=...")
        part = _Part()
        part.name = options[b"name"].decode(charset, errors="replace")
        if b"filename" in options:
            self._files += 1
            if self._files > MAX_FILES:
                raise BadForm(f"too many files in one request (at most {MAX_FILES})")
            part.filename = options[b"filename"].decode(charset, errors="replace")
            part.content_type = headers.get(b"content-type", b"").decode("latin-1")
            part.fd, part.path = new_upload_file(self.uploads.directory)
            self.uploads.paths.append(part.path)
        else:
            self._fields += 1
            if self._fields > MAX_FIELDS:
                raise BadForm(f"too many fields in one request (at most {MAX_FIELDS})")
        return part

    async def _data(self, part: _Part, data: bytes) -> None:
        part.size += len(data)
        if part.filename is None:
            if part.size > MAX_FIELD_BYTES:
                raise BadForm(f"the field {part.name!r} is larger than {MAX_FIELD_BYTES} bytes")
            part.buf.extend(data)
            return
        self.file_bytes += len(data)
        part.buf.extend(data)
        if self.file_bytes > INLINE_BYTES and len(part.buf) >= INLINE_BYTES:
            buf, part.buf = part.buf, bytearray()
            await anyio.to_thread.run_sync(_write_all, part.fd, buf)

    async def _end(self, part: _Part, charset: str) -> None:
        if part.filename is None:
            value: str | UploadedFile = part.buf.decode(charset, errors="replace")
        else:
            fd, part.fd = part.fd, -1
            if self.file_bytes > INLINE_BYTES:
                await anyio.to_thread.run_sync(_flush_and_close, fd, part.buf)
            else:
                _flush_and_close(fd, part.buf)
            value = UploadedFile(part.name, part.path, part.content_type, part.filename)
        self.values.setdefault(part.name, []).append(value)


def _flush_and_close(fd: int, buf: bytes | bytearray) -> None:
    try:
        if buf:
            _write_all(fd, buf)
    finally:
        os.close(fd)
