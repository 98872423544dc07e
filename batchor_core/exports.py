"""Streaming result exports: JSONL, CSV and Parquet, written atomically.

Rows are read from the store page by page and written as they come, so exporting a
10M-item run uses the memory of one page. pyarrow (Parquet) is imported only when used.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchor_core.errors import ConfigurationError
from batchor_core.models import ItemResult, JSONObject

__all__ = ["COLUMNS", "ExportReport", "result_record", "write_export"]

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
        output = output.model_dump(mode="json")
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


def _flat(record: JSONObject) -> JSONObject:
    """Nested values as JSON text, for columnar formats."""
    flat = dict(record)
    for key in ("output", "metadata"):
        value = flat[key]
        if value is not None and not isinstance(value, str):
            flat[key] = json.dumps(value, ensure_ascii=False)
    return flat


def write_export(
    results: Iterator[ItemResult], path: str | os.PathLike[str], fmt: str, *, after: int
) -> ExportReport:
    """Stream ``results`` into ``path`` (temp file + rename) in format ``fmt``."""
    if fmt not in FORMATS:
        raise ConfigurationError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.part")
    rows = 0
    cursor = after
    try:
        if fmt == "parquet":
            rows, cursor = _write_parquet(results, temp, cursor)
        else:
            with open(temp, "w", encoding="utf-8", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=COLUMNS) if fmt == "csv" else None
                if writer is not None:
                    writer.writeheader()
                for result in results:
                    record = result_record(result)
                    if writer is not None:
                        writer.writerow(_flat(record))
                    else:
                        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                    rows += 1
                    cursor = result.cursor
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return ExportReport(path=target, format=fmt, rows=rows, cursor=cursor)


def _write_parquet(results: Iterator[ItemResult], temp: Path, cursor: int) -> tuple[int, int]:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    schema = pa.schema(
        [
            ("item_id", pa.string()),
            ("status", pa.string()),
            ("output", pa.string()),
            ("error_code", pa.string()),
            ("error_message", pa.string()),
            ("attempts", pa.int64()),
            ("input_tokens", pa.int64()),
            ("output_tokens", pa.int64()),
            ("metadata", pa.string()),
            ("cursor", pa.int64()),
        ]
    )
    rows = 0
    page: list[JSONObject] = []
    with pq.ParquetWriter(str(temp), schema) as writer:
        for result in results:
            page.append(_flat(result_record(result)))
            rows += 1
            cursor = result.cursor
            if len(page) >= 10_000:
                writer.write_table(pa.Table.from_pylist(page, schema=schema))
                page = []
        if page or rows == 0:
            writer.write_table(pa.Table.from_pylist(page, schema=schema))
    return rows, cursor
