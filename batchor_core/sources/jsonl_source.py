"""JSON Lines files: one JSON object per line, read in binary with byte offsets."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NoReturn

from batchor_core.errors import SourceError
from batchor_core.models import BatchItem, JSONObject, JSONValue
from batchor_core.ports import RejectedRow, SourceSlice
from batchor_core.sources._common import (
    MAX_ID_LENGTH,
    BadRowPolicy,
    IdFn,
    RowChunk,
    RowProblem,
    assemble_slices,
    check_slice_size,
    file_size,
    id_from_fn,
    item_id_of,
    reject,
)
from batchor_core.sources._identity import FileSource, offset_checkpoint, read_offset_checkpoint

__all__ = ["JsonlSource"]

_BOM = b"\xef\xbb\xbf"
_BLOCK = 1 << 20
_WHITESPACE = " \t\r\n"  # JSON's whitespace; str.strip() alone would take more
_WHITESPACE_BYTES = _WHITESPACE.encode("ascii")


class JsonlSource(FileSource):
    """Items from a JSON Lines file (one JSON object per line, UTF-8).

    Blank lines are skipped. A UTF-8 byte order mark is skipped; ``\\r\\n`` line endings
    work. ``NaN`` and ``Infinity`` are not JSON and make a line bad.

    Checkpoints are ``{"offset": <byte offset of the next unread line>, "line": <its
    1-based line number>}``; resuming seeks straight there. Locations are ``path:line``.

    Args:
        path: The JSONL file.
        id_field: Field holding the item id, a string or an integer (default ``"id"``
            unless ``id_fn`` is given).
        id_fn: Computes the item id from the whole object; it must not modify it. Its
            qualified name is part of the identity.
        payload_fields: Fields copied into ``payload`` (default: the whole object, id too).
            A line missing one of them is a bad row.
        metadata_fields: Fields copied into ``metadata`` (default: no metadata); a missing
            one is ``null``.
        on_bad_row: ``"record"`` keeps a bad line as a rejected row; ``"raise"`` raises
            :class:`~batchor_core.errors.SourceError`.
    """

    kind = "jsonl"
    key_name = "field"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        id_field: str | None = None,
        id_fn: IdFn | None = None,
        payload_fields: Iterable[str] | None = None,
        metadata_fields: Iterable[str] | None = None,
        on_bad_row: BadRowPolicy = "record",
    ) -> None:
        self._setup(
            path,
            id_key=id_field,
            id_fn=id_fn,
            payload=payload_fields,
            metadata=metadata_fields,
            on_bad_row=on_bad_row,
        )

    def check(self) -> None:
        """Raise :class:`~batchor_core.errors.SourceError` now for any file-level problem.

        ``read_slices`` does the same before yielding anything, and :class:`MultiSource`
        calls this for every file first.
        """
        self._size()
        with open(self._path, "rb") as f:
            self._check_has_lines(f)

    def read_slices(
        self, checkpoint: JSONObject | None, *, slice_size: int
    ) -> Iterator[SourceSlice]:
        """Yield slices of at most ``slice_size`` lines, starting after ``checkpoint``.

        Raises:
            SourceError: At once for file-level problems (missing, unreadable or empty
                file, no JSON lines at all); for a bad line under ``on_bad_row="raise"``.
        """
        check_slice_size(slice_size)
        size = self._size()
        with open(self._path, "rb") as f:
            if checkpoint is None:
                self._check_has_lines(f)
                offset, line = 0, 1
            else:
                offset, line = read_offset_checkpoint(
                    checkpoint, path=self._path, size=size, start=0
                )
            rows = self._rows(f, offset=offset, line=line)
            yield from assemble_slices(rows, slice_size=slice_size, checkpoint=offset_checkpoint)

    def _size(self) -> int:
        size = file_size(self._path)
        if size == 0:
            raise SourceError(f"{self._path}: file is empty (0 bytes)")
        return size

    def _check_has_lines(self, f: BinaryIO) -> None:
        f.seek(0)
        for raw in f:
            if raw.strip().removeprefix(_BOM).strip():
                return
        raise SourceError(f"{self._path}: has no JSON lines (only empty lines)")

    def _rows(self, f: BinaryIO, *, offset: int, line: int) -> Iterator[RowChunk]:
        f.seek(offset)
        while block := f.read(_BLOCK):
            if not block.endswith(b"\n"):
                block += f.readline()  # finish the last line (it may still end at EOF)
            lines = block.split(b"\n")
            if not lines[-1]:
                lines.pop()
            yield self._chunk(block, lines, offset, line)
            offset += len(block)
            line += len(lines)

    def _chunk(self, block: bytes, lines: list[bytes], base: int, first_line: int) -> RowChunk:
        """Parse one block of whole lines; blank lines yield nothing."""
        skip_bom = base == 0 and block.startswith(_BOM)
        try:  # one decode per block; a bad block is decoded line by line instead
            texts: list[str] | None = (
                block[len(_BOM) if skip_bom else 0 :].decode("utf-8").split("\n")
            )
        except UnicodeDecodeError:
            texts = None
        entries: list[BatchItem | RejectedRow] = []
        locations: list[str] = []
        ends: list[int] = []
        next_lines: list[int] = []
        end = base
        clean = True
        fast = self._id_key is not None
        count, has_newline = len(lines), block.endswith(b"\n")
        for k, raw in enumerate(lines):
            end += len(raw) + (1 if k + 1 < count or has_newline else 0)
            if texts is not None:
                text: str | None = texts[k].strip(_WHITESPACE)
                if not text:
                    continue
            else:
                text = None
                raw = (raw[len(_BOM) :] if k == 0 and skip_bom else raw).strip(_WHITESPACE_BYTES)
                if not raw:
                    continue
            where = f"{self._path}:{first_line + k}"
            entry: BatchItem | RejectedRow | None = None
            if text is not None and fast:
                entry = self._fast(text)
            if entry is None:
                entry = self._entry(text, raw, where)
                clean = clean and isinstance(entry, BatchItem)
            entries.append(entry)
            locations.append(where)
            ends.append(end)
            next_lines.append(first_line + k + 1)

        def position(k: int) -> tuple[int, int]:
            return ends[k], next_lines[k]

        return RowChunk(entries, locations, position, clean=clean)

    def _fast(self, text: str) -> BatchItem | None:
        """The item of a well-formed line, or None to take the careful path."""
        try:
            obj, stop = _DECODER.raw_decode(text)
        except (ValueError, RecursionError):
            return None
        if stop != len(text) or type(obj) is not dict:
            return None
        value = obj.get(self._id_key)
        if type(value) is not str or not value or len(value) > MAX_ID_LENGTH:
            return None
        try:
            return BatchItem(value, self._pick(obj), self._meta(obj))
        except RowProblem:
            return None

    def _entry(self, text: str | None, raw: bytes, where: str) -> BatchItem | RejectedRow:
        """The item of a line, or a rejected row saying exactly what is wrong."""
        item_id: str | None = None
        try:
            if text is None:
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise RowProblem(f"invalid UTF-8 at byte {exc.start + 1}") from None
            try:
                obj = _DECODER.decode(text)
            except json.JSONDecodeError as exc:
                raise RowProblem(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            except (ValueError, RecursionError) as exc:
                raise RowProblem(f"not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise RowProblem(f"expected a JSON object, got {_json_kind(obj)}")
            if self._id_key is not None:
                if self._id_key not in obj:
                    raise RowProblem(f"no id field {self._id_key!r}")
                item_id = item_id_of(obj[self._id_key])
            else:
                assert self._id_fn is not None
                item_id = id_from_fn(self._id_fn, obj)
            return BatchItem(item_id, self._pick(obj), self._meta(obj))
        except RowProblem as problem:
            line = text if text is not None else raw.decode("utf-8", "replace")
            return reject(
                self._policy, where=where, problem=str(problem), item_id=item_id, raw={"line": line}
            )

    def _pick(self, obj: dict[str, JSONValue]) -> dict[str, JSONValue]:
        if self._payload is None:
            return obj
        missing = [f for f in self._payload if f not in obj]
        if missing:
            raise RowProblem(f"no payload field {', '.join(repr(f) for f in missing)}")
        return {f: obj[f] for f in self._payload}

    def _meta(self, obj: dict[str, JSONValue]) -> dict[str, JSONValue] | None:
        if self._metadata is None:
            return None
        return {f: obj.get(f) for f in self._metadata}


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _json_kind(value: JSONValue) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return "a number"
