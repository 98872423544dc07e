"""Parquet files, read one row group at a time in record batches."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from batchor_core.errors import ConfigurationError, SourceError
from batchor_core.models import BatchItem, JSONObject, JSONValue
from batchor_core.ports import RejectedRow, SourceSlice
from batchor_core.sources._arrow_values import column_values, is_id_type
from batchor_core.sources._common import (
    BadRowPolicy,
    IdFn,
    Position,
    RowChunk,
    RowProblem,
    assemble_slices,
    check_slice_size,
    column_items,
    file_size,
    id_from_fn,
    item_id_of,
    reject,
)
from batchor_core.sources._identity import FileSource

__all__ = ["ParquetSource"]


class ParquetSource(FileSource):
    """Items from a Parquet file.

    Values are made JSON-safe, the same way whatever the physical type: strings, integers,
    booleans and nulls as they are; NaN and infinities become ``None``; decimals become
    strings (``"12.50"``); dates, times and timestamps become ISO 8601 strings; durations
    become seconds; binary becomes base64; lists, structs and maps are converted
    recursively (map keys become strings). The id column must hold strings or integers.

    Checkpoints are ``{"row_group": g, "row": r}``: the next unread row is row ``r`` of
    row group ``g``. Resuming opens row group ``g`` directly (earlier groups are never
    read) and skips its first ``r`` rows. Locations are ``path:<1-based row number>``.

    Args:
        path: The Parquet file.
        id_column: Column holding the item id (default ``"id"`` unless ``id_fn`` is given).
        id_fn: Computes the item id from the whole row (a ``dict`` of JSON-safe values);
            it must not modify the row. Its qualified name is part of the identity.
        payload_columns: Columns copied into ``payload`` (default: every column, id too).
        metadata_columns: Columns copied into ``metadata`` (default: no metadata).
        on_bad_row: ``"record"`` keeps a bad row as a rejected row; ``"raise"`` raises
            :class:`~batchor_core.errors.SourceError`.
        batch_rows: Rows decoded at a time (memory use, not results).
    """

    kind = "parquet"
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
        batch_rows: int = 8192,
    ) -> None:
        self._setup(
            path,
            id_key=id_column,
            id_fn=id_fn,
            payload=payload_columns,
            metadata=metadata_columns,
            on_bad_row=on_bad_row,
        )
        if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
            raise ConfigurationError(f"batch_rows must be a positive integer, not {batch_rows!r}")
        self._batch_rows = batch_rows

    def check(self) -> None:
        """Raise :class:`~batchor_core.errors.SourceError` now for any file-level problem.

        Reads only the footer; ``read_slices`` does the same before yielding anything, and
        :class:`MultiSource` calls this for every file first.
        """
        with self._open() as pf:
            self._check_schema(pf.schema_arrow)
            self._check_has_rows(self._row_counts(pf))

    def read_slices(
        self, checkpoint: JSONObject | None, *, slice_size: int
    ) -> Iterator[SourceSlice]:
        """Yield slices of at most ``slice_size`` rows, starting after ``checkpoint``.

        Raises:
            SourceError: At once for file-level problems (missing or empty file, not a
                Parquet file, id or selected column missing or of the wrong type, no rows);
                for a bad row under ``on_bad_row="raise"``; if a row group cannot be read.
        """
        check_slice_size(slice_size)
        with self._open() as pf:
            names = self._check_schema(pf.schema_arrow)
            counts = self._row_counts(pf)
            if checkpoint is None:
                self._check_has_rows(counts)
                group, row = 0, 0
            else:
                group, row = self._read_checkpoint(checkpoint, counts)
            rows = self._rows(pf, names, counts, group=group, row=row)
            yield from assemble_slices(rows, slice_size=slice_size, checkpoint=_checkpoint)

    def _open(self) -> Any:
        if file_size(self._path) == 0:
            raise SourceError(f"{self._path}: file is empty (0 bytes), not a Parquet file")
        try:
            # Buffered reads stream each column chunk instead of loading it whole.
            return pq.ParquetFile(self._path, buffer_size=1 << 20, pre_buffer=False)
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(
                f"{self._path}: not a readable Parquet file ({_one_line(exc)})"
            ) from exc

    @staticmethod
    def _row_counts(pf: Any) -> list[int]:
        meta = pf.metadata
        return [int(meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]

    def _check_has_rows(self, counts: list[int]) -> None:
        if sum(counts) == 0:
            raise SourceError(f"{self._path}: has no rows; nothing to run (check the file)")

    def _check_schema(self, schema: Any) -> list[str]:
        """The columns to read; raises for a missing id/selected column or a bad id type."""
        names: list[str] = list(schema.names)
        if len(set(names)) != len(names):
            raise SourceError(f"{self._path}: the schema has duplicate column names {names!r}")
        wanted: list[tuple[str, str]] = []
        if self._id_key is not None:
            wanted.append(("id column", self._id_key))
        wanted += [("payload column", n) for n in self._payload or ()]
        wanted += [("metadata column", n) for n in self._metadata or ()]
        for what, name in wanted:
            if name not in names:
                shown = ", ".join(repr(n) for n in names[:20])
                raise SourceError(
                    f"{self._path}: no {what} {name!r} in the schema; columns are {shown}"
                )
        if self._id_key is not None:
            id_type = schema.field(self._id_key).type
            if not is_id_type(id_type):
                raise SourceError(
                    f"{self._path}: id column {self._id_key!r} has type {id_type}; "
                    "it must hold strings or integers (or pass id_fn=)"
                )
        if self._id_fn is not None or self._payload is None:
            return names
        keep = {self._id_key, *self._payload, *(self._metadata or ())}
        return [n for n in names if n in keep]

    def _read_checkpoint(self, checkpoint: JSONObject, counts: list[int]) -> Position:
        group, row = checkpoint.get("row_group"), checkpoint.get("row")
        if (
            isinstance(group, int)
            and isinstance(row, int)
            and not isinstance(group, bool)
            and not isinstance(row, bool)
            and 0 <= group <= len(counts)
            and 0 <= row <= (counts[group] if group < len(counts) else 0)
        ):
            return group, row
        raise SourceError(
            f"{self._path}: checkpoint {checkpoint!r} does not fit this file "
            f"({len(counts)} row groups); was the file replaced?"
        )

    def _rows(
        self, pf: Any, names: list[str], counts: list[int], *, group: int, row: int
    ) -> Iterator[RowChunk]:
        base = sum(counts[:group])  # rows before this row group
        for g in range(group, len(counts)):
            skip = row if g == group else 0
            if counts[g] > skip:
                yield from self._group_rows(pf, names, g, counts[g], skip=skip, base=base)
            base += counts[g]

    def _group_rows(
        self, pf: Any, names: list[str], g: int, count: int, *, skip: int, base: int
    ) -> Iterator[RowChunk]:
        at = 0  # row within the group of the batch's first row
        batches = pf.iter_batches(
            batch_size=self._batch_rows, row_groups=[g], columns=names, use_threads=False
        )
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as exc:
                raise SourceError(
                    f"{self._path}:{base + at + 1}: cannot read row group {g} ({_one_line(exc)})"
                ) from exc
            if batch is None:
                return
            if at + batch.num_rows <= skip:
                at += batch.num_rows
                continue
            if at < skip:
                batch = batch.slice(skip - at)
                at = skip
            yield self._chunk(batch, names, g, count, at=at, base=base)
            at += batch.num_rows

    def _chunk(
        self, batch: Any, names: list[str], g: int, count: int, *, at: int, base: int
    ) -> RowChunk:
        """Items from one record batch whose first row is row ``at`` of row group ``g``."""
        columns: dict[str, list[JSONValue]] = {}
        bad: dict[int, tuple[str, str]] = {}  # row -> (what is wrong, column)
        for index, name in enumerate(names):
            values, problems = column_values(batch.column(index))
            columns[name] = values
            for i, problem in problems.items():
                bad.setdefault(i, (f"{problem} in column {name!r}", name))
        first = base + at + 1  # 1-based row number in the file
        path = self._path.replace("%", "%%") + ":%d"
        locations = [path % n for n in range(first, first + batch.num_rows)]

        def position(k: int) -> tuple[int, int]:
            r = at + k + 1  # rows of the group read after entry k
            return (g, r) if r < count else (g + 1, 0)

        if not bad and self._id_key is not None:
            ids = columns[self._id_key]
            id_column = batch.column(names.index(self._id_key))
            if pa.types.is_integer(id_column.type) and id_column.null_count == 0:
                ids = list(map(str, ids))
            payload = self._payload if self._payload is not None else names
            items = column_items(ids, columns, payload, self._metadata)
            if items is not None:
                return RowChunk(items, locations, position, clean=True)
        entries = self._entries(columns, names, batch.num_rows, bad, first)
        return RowChunk(entries, locations, position, clean=False)

    def _entries(
        self,
        columns: dict[str, list[JSONValue]],
        names: list[str],
        size: int,
        bad: dict[int, tuple[str, str]],
        first: int,
    ) -> list[BatchItem | RejectedRow]:
        pay_names = self._payload if self._payload is not None else names
        pay = [(n, columns[n]) for n in pay_names]
        meta = [(n, columns[n]) for n in self._metadata] if self._metadata is not None else None
        ids = columns[self._id_key] if self._id_key is not None else None
        entries: list[BatchItem | RejectedRow] = []
        for i in range(size):
            item_id: str | None = None
            try:
                problem, bad_column = bad.get(i, (None, None))
                if ids is not None and bad_column != self._id_key:
                    item_id = item_id_of(ids[i])
                elif self._id_fn is not None and problem is None:
                    item_id = id_from_fn(self._id_fn, {n: columns[n][i] for n in names})
                if problem is not None:
                    raise RowProblem(problem)
                assert item_id is not None
                entries.append(
                    BatchItem(
                        item_id,
                        {n: c[i] for n, c in pay},
                        {n: c[i] for n, c in meta} if meta is not None else None,
                    )
                )
            except RowProblem as problem:
                entries.append(
                    reject(
                        self._policy,
                        where=f"{self._path}:{first + i}",
                        problem=str(problem),
                        item_id=item_id,
                        raw={"row": {n: columns[n][i] for n in names}},
                    )
                )
        return entries


def _checkpoint(position: Position) -> JSONObject:
    return {"row_group": position[0], "row": position[1]}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())
