"""Results as Arrow tables: typed columns from the output model's JSON schema.

Rows come from the store page by page; outputs are parsed by Arrow's JSON reader (C++)
against a schema derived from the run's stored output schema, so a million results never
become a million Python result objects. pyarrow is imported only when this is used.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from batchor_core import jsoncodec
from batchor_core.models import ItemStatus, JSONObject
from batchor_core.ports import ResultRow

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]

__all__ = ["BASE_COLUMNS", "arrow_type", "results_table"]

BASE_COLUMNS = ("item_id", "status")
TAIL_COLUMNS = (
    "error_code",
    "error_message",
    "attempts",
    "input_tokens",
    "output_tokens",
    "metadata",
    "cursor",
)
_PAGE = 50_000


class _Unmappable(Exception):
    """A JSON schema construct with no single Arrow type (the output stays JSON text)."""


def arrow_type(node: JSONObject, defs: JSONObject) -> pa.DataType:
    """The Arrow type for one JSON schema node (``$ref``, nullable ``anyOf`` resolved).

    Raises:
        _Unmappable: The node has no single Arrow type (a union of several types, say).
    """
    import pyarrow as pa

    if "$ref" in node:
        name = str(node["$ref"]).rsplit("/", 1)[-1]
        if name not in defs:
            raise _Unmappable(node["$ref"])
        return arrow_type(defs[name], defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise _Unmappable("union")
        return arrow_type(options[0], defs)
    kind = node.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        if len(kinds) != 1:
            raise _Unmappable("union")
        kind = kinds[0]
    if kind == "string" or (kind is None and "enum" in node):
        return pa.string()
    if kind == "integer":
        return pa.int64()
    if kind == "number":
        return pa.float64()
    if kind == "boolean":
        return pa.bool_()
    if kind == "array" and isinstance(node.get("items"), dict):
        return pa.list_(arrow_type(node["items"], defs))
    if kind == "object" and isinstance(node.get("properties"), dict) and node["properties"]:
        props = node["properties"]
        return pa.struct([pa.field(k, arrow_type(props[k], defs)) for k in _field_order(node)])
    raise _Unmappable(str(kind))


def _field_order(node: JSONObject) -> list[str]:
    """Property names in the model's order: stored specs sort object keys, but strict
    schemas list every property in ``required``, in declaration order."""
    props = node["properties"]
    required = [k for k in node.get("required") or [] if k in props]
    return required + [k for k in props if k not in required]


def _output_schema(schema: JSONObject | None) -> pa.Schema | None:
    import pyarrow as pa

    if not schema or not isinstance(schema.get("properties"), dict):
        return None
    defs = schema.get("$defs") or {}
    try:
        props = schema["properties"]
        fields = [pa.field(k, arrow_type(props[k], defs)) for k in _field_order(schema)]
    except _Unmappable:
        return None
    if any(f.name in BASE_COLUMNS or f.name in TAIL_COLUMNS for f in fields):
        return None  # a field named like one of ours: keep the output as one column
    return pa.schema(fields)


def results_table(rows: Iterable[ResultRow], output_schema: JSONObject | None) -> pa.Table:
    """Build the results table from stored rows (see :meth:`batchor_core.Run.to_arrow`)."""
    import pyarrow as pa

    typed = _output_schema(output_schema)
    batches: list[pa.RecordBatch] = []
    page: list[ResultRow] = []
    schema: pa.Schema | None = None
    for row in rows:
        page.append(row)
        if len(page) >= _PAGE:
            batch = _page_batch(page, typed)
            batches.append(batch)
            schema = batch.schema
            page = []
    if page or not batches:
        batch = _page_batch(page, typed)
        batches.append(batch)
        schema = batch.schema
    assert schema is not None
    return pa.Table.from_batches(batches, schema=schema)


def _page_batch(page: list[ResultRow], typed: pa.Schema | None) -> pa.RecordBatch:
    import pyarrow as pa

    completed = ItemStatus.COMPLETED
    columns: dict[str, pa.Array] = {
        "item_id": pa.array([r.item_id for r in page], pa.string()),
        "status": pa.array([r.status.value for r in page], pa.string()),
    }
    outputs = [r.output_json if r.status is completed else None for r in page]
    parsed = _typed_outputs(outputs, typed) if typed is not None else None
    if parsed is not None:
        for name in parsed.column_names:
            columns[name] = parsed.column(name).combine_chunks()
    else:
        columns["output"] = pa.array([_as_text(o) for o in outputs], pa.string())
    columns["error_code"] = pa.array(
        [r.error.code if r.error and r.status is not completed else None for r in page],
        pa.string(),
    )
    columns["error_message"] = pa.array(
        [r.error.message if r.error and r.status is not completed else None for r in page],
        pa.string(),
    )
    columns["attempts"] = pa.array([r.attempts for r in page], pa.int32())
    columns["input_tokens"] = pa.array(
        [r.usage.input_tokens if r.usage else None for r in page], pa.int64()
    )
    columns["output_tokens"] = pa.array(
        [r.usage.output_tokens if r.usage else None for r in page], pa.int64()
    )
    columns["metadata"] = pa.array([r.metadata_json for r in page], pa.string())
    columns["cursor"] = pa.array([r.finished_seq for r in page], pa.int64())
    return pa.RecordBatch.from_pydict(columns)


def _typed_outputs(outputs: list[str | None], typed: pa.Schema) -> pa.Table | None:
    """Parse the page's outputs in one go with Arrow's JSON reader; None if it cannot."""
    import pyarrow as pa
    import pyarrow.json as pj  # type: ignore[import-untyped]

    if not outputs:
        return pa.table({f.name: pa.array([], f.type) for f in typed})
    # One object per line; rows without an output are empty objects (all fields null).
    # Model outputs may be pretty-printed, so newlines inside an object are allowed.
    data = b"\n".join((o or "{}").encode() for o in outputs)
    try:
        table = pj.read_json(
            io.BytesIO(data),
            read_options=pj.ReadOptions(block_size=max(len(data) + 1, 1 << 20)),
            parse_options=pj.ParseOptions(
                explicit_schema=typed,
                unexpected_field_behavior="ignore",
                newlines_in_values=True,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(outputs):
        return None
    return table.select([f.name for f in typed])


def _as_text(output_json: str | None) -> str | None:
    """A text output as plain text; any other output as compact JSON text."""
    if output_json is None:
        return None
    value: Any = jsoncodec.loads(output_json)
    return value if isinstance(value, str) else jsoncodec.dumps_text(value)
