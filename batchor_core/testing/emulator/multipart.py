"""Streaming request bodies: a length/chunked body reader and a multipart/form-data parser.

Uploads can be hundreds of megabytes, so nothing here holds a whole body in memory: the
file part of a ``multipart/form-data`` body is written to disk as it arrives, keeping only
a one-chunk buffer plus a boundary-sized tail.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

from .wire import ApiError, bad_request

CHUNK = 1 << 20
MAX_FIELD_BYTES = 1 << 16
MAX_HEADER_BYTES = 1 << 14


class BodyReader:
    """Reads one request body, framed by ``Content-Length`` or chunked encoding.

    Args:
        stream: The connection's buffered input.
        length: The ``Content-Length``, or ``None``.
        chunked: Whether ``Transfer-Encoding: chunked`` is used.
    """

    def __init__(
        self, stream: IO[bytes] | io.BufferedIOBase, *, length: int | None, chunked: bool
    ) -> None:
        self._stream = stream
        self._chunked = chunked
        self._remaining = 0 if chunked else (length or 0)
        self._done = not chunked and not length

    def read(self, size: int = CHUNK) -> bytes:
        """Return up to ``size`` bytes of the body; ``b""`` once it is exhausted."""
        if self._done:
            return b""
        if self._chunked and self._remaining == 0:
            self._next_chunk()
            if self._done:
                return b""
        data = self._stream.read(min(size, self._remaining))
        if not data:
            raise bad_request("The request body ended early.")
        self._remaining -= len(data)
        if self._remaining == 0:
            if self._chunked:
                self._stream.readline()  # CRLF after the chunk data
            else:
                self._done = True
        return data

    def read_all(self, limit: int) -> bytes:
        """Return the whole body.

        Raises:
            ApiError: 413 if it is longer than ``limit``.
        """
        parts: list[bytes] = []
        size = 0
        while chunk := self.read():
            size += len(chunk)
            if size > limit:
                self.drain()
                raise ApiError(413, f"The request body is larger than {limit} bytes.")
            parts.append(chunk)
        return b"".join(parts)

    def drain(self) -> None:
        """Read and discard the rest of the body (keeps the connection usable)."""
        while self.read():
            pass

    def _next_chunk(self) -> None:
        line = self._stream.readline(1024)
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise bad_request("Malformed chunked request body.") from None
        if size == 0:
            while self._stream.readline(1024).strip():  # trailers end with a blank line
                pass
            self._done = True
        self._remaining = size


@dataclass
class FormData:
    """The parsed fields of a multipart body.

    Attributes:
        fields: Text fields by name.
        filename: The ``filename`` of the ``file`` part, if one was sent.
        file_bytes: Size of the ``file`` part as written to disk.
    """

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    file_bytes: int = 0


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)="((?:[^"\\]|\\.)*)"|;\s*([A-Za-z0-9_*-]+)=([^;\s]*)')


def boundary_of(content_type: str) -> bytes:
    """Extract the multipart boundary from a ``Content-Type`` header.

    Raises:
        ApiError: 400 if the body is not ``multipart/form-data`` with a boundary.
    """
    match = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith("multipart/form-data") or match is None:
        raise bad_request("Expected a multipart/form-data body with a boundary.")
    return match.group(1).encode("latin-1")


def parse_form(reader: BodyReader, boundary: bytes, file_path: Path) -> FormData:
    """Parse a multipart body, streaming the part named ``file`` into ``file_path``.

    Args:
        reader: The request body.
        boundary: The multipart boundary.
        file_path: Where the ``file`` part's bytes go (created only if the part exists).

    Raises:
        ApiError: 400 for a malformed body.
    """
    parser = _Parser(reader, b"\r\n--" + boundary)
    form = FormData()
    # Prefixing CRLF lets the first boundary match the same delimiter as later ones.
    parser.buffer += b"\r\n"
    parser.skip_to_delimiter()
    while parser.start_part():
        name, filename = parser.read_part_headers()
        if name == "file" and filename is not None and form.filename is None:
            form.filename = filename
            with open(file_path, "wb") as sink:
                form.file_bytes = parser.copy_part(sink)
        else:
            form.fields[name] = parser.read_small_part().decode("utf-8", "replace")
    reader.drain()
    return form


class _Parser:
    def __init__(self, reader: BodyReader, delimiter: bytes) -> None:
        self.reader = reader
        self.delimiter = delimiter
        self.buffer = bytearray()

    def _fill(self) -> None:
        data = self.reader.read(CHUNK)
        if not data:
            raise bad_request("Malformed multipart body: unexpected end of data.")
        self.buffer += data

    def skip_to_delimiter(self) -> None:
        keep = len(self.delimiter) - 1
        while (index := self.buffer.find(self.delimiter)) < 0:
            del self.buffer[: max(len(self.buffer) - keep, 0)]
            self._fill()
        del self.buffer[: index + len(self.delimiter)]

    def start_part(self) -> bool:
        """After a delimiter: ``True`` if a part follows, ``False`` at the closing ``--``."""
        while len(self.buffer) < 2:
            self._fill()
        if self.buffer[:2] == b"--":
            return False
        # Transport padding (spaces/tabs) may precede the CRLF.
        while (end := self.buffer.find(b"\r\n")) < 0:
            self._fill()
        del self.buffer[: end + 2]
        return True

    def read_part_headers(self) -> tuple[str, str | None]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                raise bad_request("Malformed multipart body: part headers too large.")
            self._fill()
        raw = bytes(self.buffer[:end]).decode("utf-8", "replace")
        del self.buffer[: end + 4]
        params: dict[str, str] = {}
        for line in raw.split("\r\n"):
            header, _, value = line.partition(":")
            if header.strip().lower() == "content-disposition":
                for quoted_key, quoted, bare_key, bare in _PARAM.findall(value):
                    key = (quoted_key or bare_key).lower()
                    params[key] = quoted.replace('\\"', '"') if quoted_key else bare
        if "name" not in params:
            raise bad_request("Malformed multipart body: a part has no name.")
        return params["name"], params.get("filename")

    def copy_part(self, sink: BinaryIO) -> int:
        """Stream the current part's data into ``sink``; return its size."""
        keep = len(self.delimiter) - 1
        written = 0
        while (index := self.buffer.find(self.delimiter)) < 0:
            cut = len(self.buffer) - keep
            if cut > 0:
                sink.write(self.buffer[:cut])
                written += cut
                del self.buffer[:cut]
            self._fill()
        sink.write(self.buffer[:index])
        del self.buffer[: index + len(self.delimiter)]
        return written + index

    def read_small_part(self) -> bytes:
        while (index := self.buffer.find(self.delimiter)) < 0:
            if len(self.buffer) > MAX_FIELD_BYTES:
                raise bad_request("Malformed multipart body: a text field is too large.")
            self._fill()
        data = bytes(self.buffer[:index])
        del self.buffer[: index + len(self.delimiter)]
        return data
