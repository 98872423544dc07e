"""CSV files, parsed by pyarrow in byte blocks cut at record boundaries."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.csv as pacsv  # type: ignore[import-untyped]

from batchor_core.errors import ConfigurationError, SourceError
from batchor_core.models import JSONObject
from batchor_core.ports import SourceSlice
from batchor_core.sources._common import (
    BadRowPolicy,
    IdFn,
    RowChunk,
    assemble_slices,
    check_slice_size,
    file_size,
)
from batchor_core.sources._csv_block import CsvShape, block_chunks, one_line, parse_options
from batchor_core.sources._csv_records import RecordScanner
from batchor_core.sources._identity import FileSource, offset_checkpoint, read_offset_checkpoint

__all__ = ["CsvSource"]

_BOM = b"\xef\xbb\xbf"
_HEADER_BLOCK = 1 << 16


@dataclass(frozen=True, slots=True)
class _Header:
    names: list[str]
    line: int  # where the header record starts
    end: int  # offset of the first byte after the header record
    end_line: int


class CsvSource(FileSource):
    """Items from a CSV file with a header line.

    Every value is read as a string, exactly as written (``"00123"`` stays ``"00123"``);
    an empty field is ``""``, never null. A UTF-8 byte order mark is skipped, ``\\r\\n``
    and ``\\n`` line endings both work, quoted values may contain delimiters, quotes
    (doubled) and newlines, and empty lines are skipped.

    Checkpoints are ``{"offset": <byte offset of the next unread record>, "line": <its
    1-based line number>}``; resuming seeks straight there. Locations are ``path:line``.

    Args:
        path: The CSV file.
        id_column: Column holding the item id (default ``"id"`` unless ``id_fn`` is given).
        id_fn: Computes the item id from the whole row (a ``dict`` of column to string);
            it must not modify the row. Its qualified name is part of the identity.
        payload_columns: Columns copied into ``payload`` (default: every column, id too).
        metadata_columns: Columns copied into ``metadata`` (default: no metadata).
        on_bad_row: ``"record"`` keeps a bad row as a rejected row; ``"raise"`` raises
            :class:`~batchor_core.errors.SourceError`.
        delimiter: Field delimiter, one character.
        quote_char: Quote character, one character.
        block_bytes: Bytes parsed at a time (memory use, not results).
        max_record_bytes: Longest record accepted; a longer one is almost always a quote
            left open, and reading on would pull the rest of the file into memory.
    """

    kind = "csv"
    key_name = "column"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        id_column: str | None = None,
        id_fn: IdFn | None = None,
        payload_columns: Iterable[str] | None = None,
        metadata_columns: Iterable[str] | None = None,
        on_bad_row: BadRowPolicy = "record",
        delimiter: str = ",",
        quote_char: str = '"',
        block_bytes: int = 2 << 20,
        max_record_bytes: int = 64 << 20,
    ) -> None:
        self._setup(
            path,
            id_key=id_column,
            id_fn=id_fn,
            payload=payload_columns,
            metadata=metadata_columns,
            on_bad_row=on_bad_row,
        )
        for name, char in (("delimiter", delimiter), ("quote_char", quote_char)):
            if not isinstance(char, str) or len(char) != 1 or char in "\r\n" or ord(char) > 127:
                raise ConfigurationError(f"{name} must be one ASCII character, not {char!r}")
        if delimiter == quote_char:
            raise ConfigurationError("delimiter and quote_char must differ")
        if block_bytes < 1024 or max_record_bytes < block_bytes:
            raise ConfigurationError("need 1024 <= block_bytes <= max_record_bytes")
        self._delimiter = delimiter
        self._quote_char = quote_char
        self._block_bytes = block_bytes
        self._max_record_bytes = max_record_bytes
        self._scanner = RecordScanner(
            delimiter=delimiter.encode("ascii"), quote_char=quote_char.encode("ascii")
        )

    def _identity_options(self) -> JSONObject:
        return {
            **super()._identity_options(),
            "delimiter": self._delimiter,
            "quote_char": self._quote_char,
        }

    def check(self) -> None:
        """Raise :class:`~batchor_core.errors.SourceError` now for any file-level problem.

        Reads the header and looks for a first data row; ``read_slices`` does the same
        before yielding anything, and :class:`MultiSource` calls this for every file first.
        """
        self._size()
        with open(self._path, "rb") as f:
            self._check_has_rows(f, self._header(f))

    def read_slices(
        self, checkpoint: JSONObject | None, *, slice_size: int
    ) -> Iterator[SourceSlice]:
        """Yield slices of at most ``slice_size`` rows, starting after ``checkpoint``.

        Raises:
            SourceError: At once for file-level problems (missing file, empty file, no data
                rows, a selected column not in the header); for a bad row under
                ``on_bad_row="raise"``.
        """
        check_slice_size(slice_size)
        size = self._size()
        with open(self._path, "rb") as f:
            header = self._header(f)
            if checkpoint is None:
                self._check_has_rows(f, header)
                offset, line = header.end, header.end_line
            else:
                offset, line = read_offset_checkpoint(
                    checkpoint, path=self._path, size=size, start=header.end
                )
            shape = CsvShape(
                path=self._path,
                names=header.names,
                id_column=self._id_key,
                id_fn=self._id_fn,
                payload=self._payload if self._payload is not None else header.names,
                metadata=self._metadata,
                policy=self._policy,
                delimiter=self._delimiter,
                quote_char=self._quote_char,
            )
            rows = self._rows(f, shape, offset=offset, line=line)
            yield from assemble_slices(rows, slice_size=slice_size, checkpoint=offset_checkpoint)

    def _size(self) -> int:
        size = file_size(self._path)
        if size == 0:
            raise SourceError(f"{self._path}: file is empty (0 bytes); expected a header line")
        return size

    def _check_has_rows(self, f: BinaryIO, header: _Header) -> None:
        """Raise unless a data record follows the header (empty lines do not count)."""
        f.seek(header.end)
        buf, line = b"", header.end_line
        while True:
            chunk = f.read(_HEADER_BLOCK)
            buf += chunk
            records = self._scanner.scan(buf, first_line=line, eof=not chunk)
            if records.starts or len(buf) > self._max_record_bytes:
                return
            if not chunk:
                raise SourceError(
                    f"{self._path}: has a header line but no data rows; "
                    "nothing to run (check the file)"
                )
            buf, line = buf[records.end :], records.end_line

    # ------------------------------------------------------------------ header

    def _header(self, f: BinaryIO) -> _Header:
        header = self._read_header(f)
        self._check_header(header)
        return header

    def _read_header(self, f: BinaryIO) -> _Header:
        f.seek(0)
        buf = f.read(_HEADER_BLOCK)
        skip = len(_BOM) if buf.startswith(_BOM) else 0
        while True:
            eof = f.tell() >= os.fstat(f.fileno()).st_size
            records = self._scanner.scan(buf[skip:], first_line=1, eof=eof)
            if records.starts:
                break
            if eof:
                raise SourceError(f"{self._path}: has no header line (only empty lines)")
            if len(buf) > self._max_record_bytes:
                raise SourceError(
                    f"{self._path}:1: header line is longer than {self._max_record_bytes} "
                    "bytes; is a quote left open?"
                )
            buf += f.read(max(_HEADER_BLOCK, len(buf)))
        start, end = skip + records.starts[0], skip + records.ends[0]
        raw = buf[start:end]
        fields = raw.count(self._delimiter.encode("ascii")) + 1
        try:
            table = pacsv.read_csv(
                pa.BufferReader(raw),
                read_options=pacsv.ReadOptions(
                    autogenerate_column_names=True, use_threads=False, block_size=len(raw) + 1
                ),
                parse_options=parse_options(self._delimiter, self._quote_char, None),
                convert_options=pacsv.ConvertOptions(
                    column_types={f"f{i}": pa.binary() for i in range(fields)},
                    strings_can_be_null=False,
                ),
            )
            names = [
                bytes(table.column(i)[0].as_py()).decode("utf-8") for i in range(table.num_columns)
            ]
        except UnicodeDecodeError:
            raise SourceError(
                f"{self._path}:{records.lines[0]}: header line is not valid UTF-8"
            ) from None
        except pa.ArrowException as exc:
            raise SourceError(
                f"{self._path}:{records.lines[0]}: cannot parse the header line ({one_line(exc)})"
            ) from exc
        return _Header(names=names, line=records.lines[0], end=end, end_line=records.next_lines[0])

    def _check_header(self, header: _Header) -> None:
        names = header.names
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise SourceError(
                    f"{self._path}:{header.line}: column {name!r} appears twice in the header; "
                    "rename one"
                )
            seen.add(name)
        wanted: list[tuple[str, str]] = []
        if self._id_key is not None:
            wanted.append(("id column", self._id_key))
        wanted += [("payload column", n) for n in self._payload or ()]
        wanted += [("metadata column", n) for n in self._metadata or ()]
        for what, name in wanted:
            if name not in seen:
                hint = " (pass id_column= or id_fn=)" if what == "id column" else ""
                raise SourceError(
                    f"{self._path}:{header.line}: no {what} {name!r} in the header; columns are "
                    f"{_names(names)}{hint}"
                )

    def _rows(self, f: BinaryIO, shape: CsvShape, *, offset: int, line: int) -> Iterator[RowChunk]:
        f.seek(offset)
        buf = b""
        eof = False
        while True:
            if not eof:
                chunk = f.read(self._block_bytes)
                eof = not chunk
                buf = buf + chunk if buf else chunk
                del chunk
            if not buf:
                return
            records = self._scanner.scan(buf, first_line=line, eof=eof)
            if records.end == 0:
                if eof:  # cannot happen: at the end of the file every byte belongs to a record
                    raise SourceError(f"{self._path}:{line}: cannot delimit the last record")
                if len(buf) > self._max_record_bytes:
                    raise SourceError(
                        f"{self._path}:{line}: record is longer than {self._max_record_bytes} "
                        "bytes; is a quote left open?"
                    )
                continue
            if records.ends:
                yield from block_chunks(shape, memoryview(buf)[: records.end], records, offset)
            buf = buf[records.end :]
            offset += records.end
            line = records.end_line
            del records


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:20])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
