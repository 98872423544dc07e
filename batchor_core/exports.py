"""Streaming result exports: JSONL, CSV and Parquet, written atomically.

Rows are read from the store page by page and written as they come, so exporting a
10M-item run uses the memory of one page. pyarrow (Parquet) is imported only when used.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batchor_core.errors import ConfigurationError
from batchor_core.models import ItemResult, JSONObject

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]

__all__ = [
    "COLUMNS",
    "ExportReport",
    "export_format",
    "output_fields",
    "result_record",
    "write_export",
    "write_parquet",
]

COLUMNS = (
    "item_id",
    "status",
    "output",
    "error_code",
    "error_message",
    "attempts",
    "input_tokens",
    "output_tokens",
    "metadata",
    "cursor",
)
FORMATS = ("jsonl", "csv", "parquet")
# The format a file's suffix names.
SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}


def export_format(path: str | os.PathLike[str], format: str | None = None) -> str:
    """The format to write ``path`` in: ``format`` if given, else the one its suffix
    names (``.jsonl``/``.ndjson``, ``.csv``, ``.parquet``), else ``jsonl``.

    Raises:
        ConfigurationError: ``format`` is not a known format, or the path's suffix names
            another one (JSON lines in a ``.parquet`` file helps no reader).
    """
    suffix = Path(path).suffix.lower()
    named = SUFFIXES.get(suffix)
    if format is None:
        return named or "jsonl"
    if format not in FORMATS:
        raise ConfigurationError(f"export format {format!r} is not one of {', '.join(FORMATS)}")
    if named is not None and named != format:
        raise ConfigurationError(
            f"{os.fspath(path)!r} ends in {suffix} but the export format is {format!r}: "
            f"pass format={named!r}, or leave format out, or name the file for {format}"
        )
    return format


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What an export wrote.

    Attributes:
        path: The file written.
        format: ``jsonl``, ``csv`` or ``parquet``.
        rows: Results written.
        cursor: The last result's cursor (pass as ``after=`` to export only newer ones).
    """

    path: Path
    format: str
    rows: int
    cursor: int


def result_record(result: ItemResult) -> JSONObject:
    """One result as the JSON object an export writes (the columns of :data:`COLUMNS`)."""
    output: Any = result.output
    if hasattr(output, "model_dump"):
        # By alias: the names the model answered with, the schema's, to_arrow()'s and
        # the CSV columns' (an aliased field was left empty in CSV).
        output = output.model_dump(mode="json", by_alias=True)
    return {
        "item_id": result.item_id,
        "status": result.status.value,
        "output": output,
        "error_code": result.error.code if result.error else None,
        "error_message": result.error.message if result.error else None,
        "attempts": result.attempts,
        "input_tokens": result.usage.input_tokens if result.usage else None,
        "output_tokens": result.usage.output_tokens if result.usage else None,
        "metadata": dict(result.metadata) if result.metadata is not None else None,
        "cursor": result.cursor,
    }


def output_fields(schema: JSONObject | None) -> tuple[str, ...] | None:
    """The output model's top-level fields, in declaration order, when CSV can give each
    a column (None: one ``output`` column)."""
    if not schema or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
        return None
    props = schema["properties"]
    required = [k for k in schema.get("required") or [] if k in props]
    names = tuple(required + [k for k in props if k not in required])
    return None if set(names) & set(COLUMNS) else names


def _flat(record: JSONObject, fields: Sequence[str] | None) -> JSONObject:
    """One CSV row: the output's fields as columns (flattened one level), nested values
    as JSON text."""
    flat = dict(record)
    if fields is not None:
        output = flat.pop("output")
        for name in fields:
            flat[name] = output.get(name) if isinstance(output, dict) else None
    for key in (*(fields or ("output",)), "metadata"):
        value = flat[key]
        if value is not None and not isinstance(value, str):
            flat[key] = json.dumps(value, ensure_ascii=False)
    return flat


def _csv_columns(fields: Sequence[str] | None) -> list[str]:
    if fields is None:
        return list(COLUMNS)
    return ["item_id", "status", *fields, *COLUMNS[3:]]


def write_export(
    results: Iterator[ItemResult],
    path: str | os.PathLike[str],
    fmt: str,
    *,
    after: int,
    output_fields: Sequence[str] | None = None,
) -> ExportReport:
    """Stream ``results`` into ``path`` (temp file + rename) in format ``fmt``.

    ``output_fields`` (CSV only) gives each top-level output field its own column.
    """
    if fmt not in FORMATS:
        raise ConfigurationError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        raise ConfigurationError("parquet exports are written by write_parquet")
    target, temp = _paths(path)
    rows = 0
    cursor = after
    writer = None
    try:
        with open(temp, "w", encoding="utf-8", newline="") as fh:
            if fmt == "csv":
                writer = csv.DictWriter(fh, fieldnames=_csv_columns(output_fields))
                writer.writeheader()
            for result in results:
                record = result_record(result)
                if writer is not None:
                    writer.writerow(_flat(record, output_fields))
                else:
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                rows += 1
                cursor = result.cursor
        os.replace(temp, target)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        _raise_unwritable(target, exc)
        raise
    return ExportReport(path=target, format=fmt, rows=rows, cursor=cursor)


def _paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The export's file and the temp file beside it it is written to first.

    Raises:
        ConfigurationError: The path is a directory, or its directory cannot be made.
    """
    target = Path(path)
    if target.is_dir():
        raise ConfigurationError(f"cannot export to {target}: it is a directory; name a file")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _raise_unwritable(target, exc)
        raise
    return target, target.with_name(f".{target.name}.part")


# The path's own faults (not a full disk, say): the caller's to fix.
_PATH_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def _raise_unwritable(target: Path, exc: BaseException) -> None:
    """An export path that cannot be written, as one line naming the file."""
    if isinstance(exc, _PATH_ERRORS):
        raise ConfigurationError(
            f"cannot write the export to {target}: {exc.strerror or exc}"
        ) from exc


def write_parquet(
    batches: Iterator[pa.RecordBatch],
    schema: pa.Schema,
    path: str | os.PathLike[str],
    *,
    after: int,
) -> ExportReport:
    """Write record batches (see :func:`batchor_core.columnar.result_batches`) to a
    Parquet file at ``path`` (temp file + rename), one row group per batch."""
    import pyarrow.compute as pc  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    target, temp = _paths(path)
    rows = 0
    cursor = after
    try:
        with pq.ParquetWriter(str(temp), schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
                rows += batch.num_rows
                top = pc.max(batch.column("cursor")).as_py()
                cursor = max(cursor, int(top or 0))
        os.replace(temp, target)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        _raise_unwritable(target, exc)
        raise
    finally:
        # Left midway (a failed write), the batches' generator would keep its page
        # reader's worker thread and pages alive for as long as the traceback is.
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    return ExportReport(path=target, format="parquet", rows=rows, cursor=cursor)
