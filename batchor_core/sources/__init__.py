"""Deterministic, checkpointed item sources: CSV, JSON Lines and Parquet files.

Every source implements :class:`batchor_core.ports.ItemSource`::

    source = CsvSource("items.csv", id_column="id", payload_columns=["text"])
    for part in source.read_slices(None, slice_size=10_000):
        ...  # part.items, part.rejected, part.locations, part.checkpoint

Identity
    ``identity()`` describes a source by content: the file's size and sha256 (hashed once
    per instance, in 1 MiB blocks) and the options that change which items come out (id
    column, payload and metadata columns, delimiter, ...). The path is not part of it, so
    moving, copying or touching a file keeps the identity; editing it does not.
    :func:`describe_identity_change` says in one line what differs.

Checkpoints
    Every slice carries the position just after its last row, a JSON object:
    ``{"offset", "line"}`` for CSV and JSONL, ``{"row_group", "row"}`` for Parquet,
    ``{"index", "inner"}`` for :class:`MultiSource`. Resuming seeks there directly (byte
    offset, row group) and yields exactly the rows that follow.

Bad input
    File-level problems raise :class:`~batchor_core.errors.SourceError` at once, before any
    item is yielded: a missing or unreadable file, an empty file (0 bytes), a CSV with a
    header but no data rows or a JSONL file with only blank lines (an empty run is almost
    always a mistake), an id or selected column missing from the header or schema, a
    duplicate CSV column name, a file that is not Parquet, a Parquet id column that is
    neither string nor integer. Each file source's ``check()`` raises these without reading
    any rows; :class:`MultiSource` checks every file before its first item.

    Row-level problems depend on ``on_bad_row``. With ``"record"`` (the default) the row
    becomes a :class:`~batchor_core.ports.RejectedRow` in the slice's ``rejected`` list:
    ``item_id`` is the row's id when readable, else ``"<file>:<line>"``; ``error`` is
    ``"<file>:<line>: <what is wrong>"``; ``raw`` keeps what could be read (``{"line":
    <text>}``, or ``{"row": {...}}`` for Parquet). The runner stores it as a failed item, so
    nothing is lost. With ``"raise"`` the same message (plus a hint) raises ``SourceError``
    before the slice holding the row is yielded. Row-level problems are: malformed JSON, a
    JSON line that is not an object, invalid UTF-8, a CSV row with too many or too few
    fields, an empty, null or over-long id, an id that is neither string nor integer, a
    JSONL line missing the id or a payload field, and an ``id_fn`` that raises. Blank
    lines are skipped, not errors. Duplicate ids are left to the runner (it sees every
    file); ``locations`` name each item's file and line for its message.

Values
    CSV values are strings exactly as written (``"00123"`` stays ``"00123"``, an empty
    field is ``""``); JSONL values are what ``json.loads`` gives; Parquet values are made
    JSON-safe (decimals and dates to strings, binary to base64, NaN to null).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchor_core.sources._identity import describe_identity_change
from batchor_core.sources.csv_source import CsvSource
from batchor_core.sources.jsonl_source import JsonlSource
from batchor_core.sources.multi_source import MultiSource
from batchor_core.sources.parquet_source import ParquetSource

if TYPE_CHECKING:  # mypy proves every source implements the port
    from batchor_core.ports import ItemSource

    _PORT_CHECK: tuple[type[ItemSource], ...] = (
        CsvSource,
        JsonlSource,
        MultiSource,
        ParquetSource,
    )

__all__ = [
    "CsvSource",
    "JsonlSource",
    "MultiSource",
    "ParquetSource",
    "describe_identity_change",
]
