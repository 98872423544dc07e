"""One block of whole CSV records: parsed by pyarrow, turned into items and rejected rows."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.csv as pacsv  # type: ignore[import-untyped]

from batchor_core.errors import SourceError
from batchor_core.models import BatchItem
from batchor_core.ports import RejectedRow
from batchor_core.sources._common import (
    BadRowPolicy,
    IdFn,
    RowChunk,
    RowProblem,
    column_items,
    id_from_fn,
    item_id_of,
    reject,
)
from batchor_core.sources._csv_records import Records

__all__ = ["CHUNK_ROWS", "CsvShape", "block_chunks", "one_line", "parse_options"]

CHUNK_ROWS = 8192
"""Rows turned into Python objects at a time, whatever the block size (bounds memory)."""


@dataclass(frozen=True, slots=True)
class CsvShape:
    """What a CSV file's rows look like and how they become items."""

    path: str
    names: list[str]
    id_column: str | None
    id_fn: IdFn | None
    payload: list[str]
    metadata: list[str] | None
    policy: BadRowPolicy
    delimiter: str
    quote_char: str

    @property
    def wanted(self) -> list[str]:
        """The columns to convert, in header order."""
        if self.id_fn is not None:
            return self.names
        keep = {self.id_column, *self.payload, *(self.metadata or ())}
        return [n for n in self.names if n in keep]


def parse_options(delimiter: str, quote_char: str, handler: Any) -> Any:
    """pyarrow parse options; ``newlines_in_values`` because quoted values may hold them."""
    return pacsv.ParseOptions(
        delimiter=delimiter,
        quote_char=quote_char,
        newlines_in_values=True,
        invalid_row_handler=handler,
    )


def block_chunks(
    shape: CsvShape, view: memoryview, records: Records, base: int
) -> Iterator[RowChunk]:
    """Parse ``view`` (whole records at file offset ``base``) and yield its rows in chunks."""
    ragged: dict[int, str] = {}
    expected = len(shape.names)

    def on_invalid(row: Any) -> str:
        index = row.number - 1 if row.number is not None else -1  # -1: fails the check below
        ragged[index] = f"expected {expected} fields, got {row.actual_columns}"
        return "skip"

    wanted = shape.wanted
    try:
        table = pacsv.read_csv(
            pa.BufferReader(pa.py_buffer(view)),
            read_options=pacsv.ReadOptions(
                column_names=shape.names, use_threads=False, block_size=len(view) + 1
            ),
            parse_options=parse_options(shape.delimiter, shape.quote_char, on_invalid),
            convert_options=pacsv.ConvertOptions(
                # binary, not string: no type inference, and a bad UTF-8 value is one bad
                # row instead of an error for the whole block
                column_types={n: pa.binary() for n in shape.names},
                include_columns=wanted,
                strings_can_be_null=False,
                null_values=[],
            ),
        )
    except pa.ArrowException as exc:
        raise SourceError(
            f"{shape.path}:{records.lines[0]}: cannot parse CSV ({one_line(exc)})"
        ) from exc
    count = len(records.ends)
    if table.num_rows + len(ragged) != count or any(not 0 <= k < count for k in ragged):
        raise SourceError(
            f"{shape.path}:{records.lines[0]}: CSV records could not be delimited reliably "
            f"({count} found, pyarrow read {table.num_rows + len(ragged)})"
        )
    skipped = sorted(ragged)
    for k0 in range(0, count, CHUNK_ROWS):
        k1 = min(count, k0 + CHUNK_ROWS)
        j0, j1 = k0 - bisect_left(skipped, k0), k1 - bisect_left(skipped, k1)
        yield _chunk(shape, view, records, base, table.slice(j0, j1 - j0), k0, k1, ragged)


def _chunk(
    shape: CsvShape,
    view: memoryview,
    records: Records,
    base: int,
    table: Any,
    k0: int,
    k1: int,
    ragged: dict[int, str],
) -> RowChunk:
    """Records ``k0..k1`` of the block; ``table`` holds those that are not ragged."""
    columns, bad_utf8 = _decode(table, shape.wanted)
    path = shape.path.replace("%", "%%") + ":%d"
    locations = [path % n for n in records.lines[k0:k1]]
    ends, next_lines = records.ends, records.next_lines

    def position(k: int) -> tuple[int, int]:
        return base + ends[k0 + k], next_lines[k0 + k]

    local = {k - k0: why for k, why in ragged.items() if k0 <= k < k1}
    if not local and not bad_utf8 and shape.id_column is not None:
        items = column_items(columns[shape.id_column], columns, shape.payload, shape.metadata)
        if items is not None:
            return RowChunk(items, locations, position, clean=True)
    entries = _slow_entries(shape, columns, view, records, k0, k1, local, bad_utf8)
    return RowChunk(entries, locations, position, clean=False)


def _decode(table: Any, names: list[str]) -> tuple[dict[str, list[Any]], dict[int, str]]:
    """Columns as lists of ``str``, and rows (by index) holding invalid UTF-8 (which column)."""
    columns: dict[str, list[Any]] = {}
    bad: dict[int, str] = {}
    for name in names:
        column = table.column(name)
        try:
            columns[name] = column.cast(pa.string()).to_pylist()
            continue
        except pa.ArrowInvalid:
            pass
        values: list[Any] = []
        for index, raw in enumerate(column.to_pylist()):
            try:
                values.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                values.append("")
                bad.setdefault(index, name)
        columns[name] = values
    return columns, bad


def _slow_entries(
    shape: CsvShape,
    columns: dict[str, list[Any]],
    view: memoryview,
    records: Records,
    k0: int,
    k1: int,
    ragged: dict[int, str],
    bad_utf8: dict[int, str],
) -> list[BatchItem | RejectedRow]:
    """Row by row, for chunks holding a bad row or using ``id_fn``."""
    pay = [(n, columns[n]) for n in shape.payload]
    meta = [(n, columns[n]) for n in shape.metadata] if shape.metadata is not None else None
    ids = columns[shape.id_column] if shape.id_column is not None else None
    every = [(n, columns[n]) for n in shape.names] if shape.id_fn is not None else []
    entries: list[BatchItem | RejectedRow] = []
    j = 0  # row in the parsed table (ragged records are not in it)
    for k in range(k1 - k0):
        where = f"{shape.path}:{records.lines[k0 + k]}"
        item_id: str | None = None
        try:
            if k in ragged:
                raise RowProblem(ragged[k])
            j += 1
            bad_column = bad_utf8.get(j - 1)
            if ids is not None and bad_column != shape.id_column:
                item_id = item_id_of(ids[j - 1])
            elif shape.id_fn is not None and bad_column is None:
                item_id = id_from_fn(shape.id_fn, {n: c[j - 1] for n, c in every})
            if bad_column is not None:
                raise RowProblem(f"invalid UTF-8 in column {bad_column!r}")
            assert item_id is not None
            entries.append(
                BatchItem(
                    item_id,
                    {n: c[j - 1] for n, c in pay},
                    {n: c[j - 1] for n, c in meta} if meta is not None else None,
                )
            )
        except RowProblem as problem:
            start, end = records.starts[k0 + k], records.ends[k0 + k]
            text = bytes(view[start:end]).decode("utf-8", "replace").rstrip("\r\n")
            entries.append(
                reject(
                    shape.policy,
                    where=where,
                    problem=str(problem),
                    item_id=item_id,
                    raw={"line": text},
                )
            )
    return entries


def one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split())
