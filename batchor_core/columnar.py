"""Results as Arrow tables: typed columns from the output model's JSON schema.

Rows come from the store page by page; outputs are parsed by Arrow's JSON reader (C++)
against a schema derived from the run's stored output schema, so a million results never
become a million Python result objects. pyarrow is imported only when this is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from batchor_core import jsoncodec
from batchor_core.errors import ConfigurationError
from batchor_core.models import JSONObject
from batchor_core.ports import StateStore

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]

    from batchor_core.records import ResultColumns

__all__ = ["BASE_COLUMNS", "arrow_type", "result_batches", "result_schema", "results_table"]

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
# Every column name the table has besides the output's (``payload`` is added to these
# with include_payload, as in a Parquet export).
_OURS = frozenset((*BASE_COLUMNS, *TAIL_COLUMNS))
_PAGE = 50_000
# Table column -> ResultColumns field (the stored column it comes from).
_STORED = {
    "item_id": "item_id",
    "status": "status",
    "error_code": "error_code",
    "error_message": "error_message",
    "attempts": "attempts",
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "metadata": "metadata_json",
    "cursor": "finished_seq",
    "payload": "payload_json",
}


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


def _output_schema(schema: JSONObject | None, *, include_payload: bool = False) -> pa.Schema | None:
    import pyarrow as pa

    if not schema or not isinstance(schema.get("properties"), dict):
        return None
    defs = schema.get("$defs") or {}
    try:
        props = schema["properties"]
        fields = [pa.field(k, arrow_type(props[k], defs)) for k in _field_order(schema)]
    except _Unmappable:
        return None
    ours = _OURS | {"payload"} if include_payload else _OURS
    if any(f.name in ours for f in fields):
        return None  # a field named like one of ours: keep the output as one column
    return pa.schema(fields)


_OUTPUT_SENTINEL = "output"


def result_schema(
    output_schema: JSONObject | None, *, include_payload: bool = False
) -> tuple[pa.Schema, pa.Schema | None]:
    """The table's schema, and the typed output fields within it (None: one ``output``
    text column, for text jobs and schemas with no single Arrow type)."""
    import pyarrow as pa

    typed = _output_schema(output_schema, include_payload=include_payload)
    fields = [pa.field("item_id", pa.string()), pa.field("status", pa.string())]
    if typed is not None:
        fields.extend(typed)
    else:
        fields.append(pa.field(_OUTPUT_SENTINEL, pa.string()))
    fields += [
        pa.field("error_code", pa.string()),
        pa.field("error_message", pa.string()),
        pa.field("attempts", pa.int32()),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("metadata", pa.string()),
        pa.field("cursor", pa.int64()),
    ]
    if include_payload:
        fields.append(pa.field("payload", pa.string()))
    return pa.schema(fields), typed


def result_batches(
    storage: StateStore,
    run_id: str,
    output_schema: JSONObject | None,
    *,
    status: str | None = None,
    columns: Sequence[str] | None = None,
    include_payload: bool = False,
    after: int = 0,
    page_size: int = _PAGE,
) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema of the results table, and its record batches read page by page.

    Args:
        storage: The store to read from.
        run_id: The run.
        output_schema: The run's stored output JSON schema, if any.
        status: Only rows with this stored status.
        columns: Only these columns, in this order (unknown names raise ``KeyError``).
        include_payload: Add a ``payload`` column (the item's input, JSON text).
        after: Only results with a cursor past this one.
        page_size: Rows per batch.
    """
    schema, typed = result_schema(output_schema, include_payload=include_payload)
    if columns is not None:
        missing = [c for c in columns if schema.get_field_index(c) < 0]
        if missing:
            raise KeyError(f"no such result column(s): {', '.join(missing)}")
        if len(set(columns)) != len(columns):
            twice = sorted({c for c in columns if list(columns).count(c) > 1})
            raise KeyError(f"result column(s) asked for twice: {', '.join(twice)}")
        schema = _pick(schema, columns)
    names = set(schema.names)
    parse = typed is not None and any(f.name in names for f in typed)
    fields = {_STORED[n] for n in names if n in _STORED}
    if parse or _OUTPUT_SENTINEL in names:
        fields.add("output_json")

    def batches() -> Iterator[pa.RecordBatch]:
        from batchor_core.storage.read_ahead import read_ahead, reads_ahead_safely
        from batchor_core.storage.sqlite_arrow import open_arrow_reader, prefetch_pages

        # Which rows and columns a page holds, whichever reader reads it.
        query: dict[str, Any] = {
            "limit": page_size,
            "status": status,
            "finished_after": after,
            "fields": fields,
        }

        def read(after_seq: int) -> tuple[ResultColumns, int]:
            page = storage.read_result_columns(run_id, after_seq=after_seq, **query)
            return page, page.last_seq

        def batch(page: ResultColumns) -> pa.RecordBatch:
            columns = {f: getattr(page, f) for f in fields | {"item_id"}}
            return _page_batch(columns, schema, typed if parse else None)

        after_seq = -1  # seqs start at 0
        # Pages as Arrow arrays, from ADBC: in this process when opted in, else for a
        # run of more than one page from a child process (the first page through the
        # driver, so a small run never starts one). None from either: the rest, from
        # that page's seq on, through the driver.
        arrow_pages: Any = None
        try:
            reader = open_arrow_reader(storage)
            if reader is not None:
                arrow_pages = prefetch_pages(
                    reader, run_id, after_seq=after_seq, json_lines=parse, **query
                )
            elif _child_pages_wanted(storage):

                def child_pages() -> _ChildAhead | None:
                    return _child_pages(storage, run_id, after_seq=None, json_lines=parse, **query)

                # A run that may have more than a page: the child starts now, beside
                # this first page, read through the driver (a small run starts none).
                child = child_pages() if _finished_items(storage, run_id) > page_size else None
                arrow_pages = child
                page, last_seq = read(after_seq)
                if len(page) < page_size:  # the last page
                    if len(page):
                        yield batch(page)
                    return
                if child is None:  # more results than the counters said when it began
                    child = arrow_pages = child_pages()
                if child is not None:
                    child.begin(last_seq)  # before this page is parsed: side by side
                yield batch(page)
                after_seq = last_seq
            for got in arrow_pages or ():
                if got is None:
                    break  # ADBC cannot give this page: the rest the ordinary way
                columns, last_seq = got
                if not columns:
                    return
                yield _page_batch(columns, schema, typed if parse else None, json_lines=parse)
                after_seq = last_seq
        finally:
            if arrow_pages is not None:
                arrow_pages.close()
        if reads_ahead_safely(storage):
            # The driver's next page is read while this one is parsed (outside the GIL).
            ahead = read_ahead(read, after_seq=after_seq, is_last=lambda page: not len(page))
            try:
                for read_page in ahead:
                    if read_page is None:
                        break  # the worker is gone without a word: the rest on this thread
                    if not len(read_page[0]):
                        return
                    yield batch(read_page[0])
                    after_seq = read_page[1]
            finally:
                ahead.close()
        while True:
            page, last_seq = read(after_seq)
            if len(page) == 0:
                return
            yield batch(page)
            after_seq = last_seq

    return schema, batches()


def _child_pages_wanted(storage: StateStore) -> bool:
    """Whether large results of ``storage`` are read by an ADBC child process: a SQLite
    file store, the driver installed, and ``BATCHOR_SQLITE_ADBC`` unset (``1`` reads in
    this process, ``0`` never through ADBC)."""
    import os

    from batchor_core.storage.arrow_child import adbc_installed
    from batchor_core.storage.sql import SQLiteStorage
    from batchor_core.storage.sqlite_arrow import ADBC_ENV

    return (
        isinstance(storage, SQLiteStorage)
        and os.name == "posix"  # the child's pipe is waited on with select()
        and os.environ.get(ADBC_ENV, "") == ""
        and adbc_installed()
    )


def _finished_items(storage: StateStore, run_id: str) -> int:
    """How many items of the run have a result (an upper bound of any filter's rows)."""
    record = storage.load_run(run_id)
    if record is None:
        return 0
    return record.completed_items + record.failed_items + record.cancelled_items


def _child_pages(storage: Any, run_id: str, **options: Any) -> _ChildAhead | None:
    """The pages after the first from an ADBC child (see ``storage.arrow_child``), taken
    from its pipe on a worker thread once they begin; None if the child cannot be
    started."""
    from batchor_core.storage.arrow_child import ChildPages

    try:
        child = ChildPages(storage.path, run_id, **options)
    except OSError:
        return None
    return _ChildAhead(child)


class _ChildAhead:
    """A child's pages, each taken from the pipe by a worker thread while the caller
    parses the one before: a page (~10 MB) is more than the pipe holds, so otherwise
    its transfer waits until the caller comes back for it, and only then can the child
    go on to read the next."""

    def __init__(self, child: Any) -> None:
        self._child = child
        self._pages: Any = None

    def begin(self, after_seq: int) -> None:
        """Start the pages after ``after_seq``, and the worker taking them."""
        from batchor_core.storage.read_ahead import read_ahead

        self._child.begin(after_seq)
        pages = iter(self._child)
        self._pages = read_ahead(
            lambda _after: next(pages, None),
            after_seq=-1,  # the child knows where it is
            is_last=lambda columns: not columns,
            close=self._child.close,
            name="batchor-arrow-child",
        )

    def __iter__(self) -> Iterator[Any]:
        return iter(self._pages or ())

    def close(self) -> None:
        """Stop the child first (a worker waiting on its pipe sees it end at once), then
        the worker, which reaps it (or reap it here if the pages never began)."""
        self._child.kill()
        if self._pages is None:
            self._child.close()
        else:
            self._pages.close()


def results_table(
    storage: StateStore,
    run_id: str,
    output_schema: JSONObject | None,
    *,
    status: str | None = None,
    columns: Sequence[str] | None = None,
    include_payload: bool = False,
) -> pa.Table:
    """Build the results table from the store (see :meth:`batchor_core.Run.to_arrow`)."""
    import pyarrow as pa

    schema, batches = result_batches(
        storage,
        run_id,
        output_schema,
        status=status,
        columns=columns,
        include_payload=include_payload,
    )
    return pa.Table.from_batches(list(batches), schema=schema)


def _pick(schema: pa.Schema, columns: Sequence[str]) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([schema.field(c) for c in columns])


def _page_batch(
    columns: Mapping[str, Any],
    schema: pa.Schema,
    typed: pa.Schema | None,
    *,
    json_lines: bool = False,
) -> pa.RecordBatch:
    """One page's record batch from its stored columns (Python sequences from the store's
    driver, or Arrow arrays from the SQLite Arrow reader; with ``json_lines``, outputs
    as the reader's JSON lines)."""
    import pyarrow as pa

    names = set(schema.names)
    arrays: dict[str, pa.Array] = {}
    outputs = columns.get("output_json")
    if typed is not None:
        typed = pa.schema([f for f in typed if f.name in names])  # parse only what is shown
        if json_lines:
            parsed = _typed_output_lines(outputs, typed)
        elif isinstance(outputs, pa.Array):
            parsed = _typed_output_array(outputs, typed)
        else:
            parsed = _typed_outputs(outputs or (), typed)
        # Parsed as one block, so one batch: its arrays as they are (combining chunks
        # copies even a single one).
        chunks = parsed.to_batches()
        for name in parsed.column_names:
            column = parsed.column(name)
            arrays[name] = chunks[0].column(name) if len(chunks) == 1 else column.combine_chunks()
    for field in schema:
        if field.name in arrays:
            continue
        if field.name == _OUTPUT_SENTINEL and typed is None:
            texts = outputs.to_pylist() if isinstance(outputs, pa.Array) else outputs or ()
            arrays[field.name] = pa.array([_as_text(o) for o in texts], pa.string())
            continue
        values = columns[_STORED[field.name]]
        if isinstance(values, pa.Array):
            arrays[field.name] = values.cast(field.type)
        else:
            arrays[field.name] = pa.array(values, field.type)
    return pa.RecordBatch.from_arrays([arrays[f.name] for f in schema], schema=schema)


def _typed_outputs(outputs: Sequence[str | None], typed: pa.Schema) -> pa.Table:
    """Parse a page's outputs in one go with Arrow's JSON reader (rows without an output,
    failed items, become all-null rows)."""
    import pyarrow as pa

    if not outputs:
        return pa.table({f.name: pa.array([], f.type) for f in typed})
    text = "\n".join([o or "{}" for o in outputs])
    # Stored outputs are usually one line each; the reader is parallel only when no value
    # may hold a newline, so take the fast path when the page allows it.
    multiline = text.count("\n") >= len(outputs)
    try:
        table = _read_json(text.encode(), typed, multiline=multiline)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        table = None
    if table is None or table.num_rows != len(outputs):
        return _python_outputs(outputs, typed)  # unusual text: slower, but the same table
    return table.select([f.name for f in typed])


def _typed_output_array(outputs: pa.Array, typed: pa.Schema) -> pa.Table:
    """:func:`_typed_outputs` for outputs already in an Arrow string array: the reader
    parses the array's own text buffer, one output per line, with no Python strings."""
    import pyarrow.compute as pc  # type: ignore[import-untyped]

    if not len(outputs):
        return _typed_outputs((), typed)
    lines = pc.binary_join_element_wise(pc.fill_null(outputs, "{}"), "", "\n")
    table = _parse_line_array(lines, typed)
    if table is not None:
        return table
    return _python_outputs(outputs.to_pylist(), typed)  # unusual text: the same table, slower


def _typed_output_lines(lines: pa.Array, typed: pa.Schema) -> pa.Table:
    """:func:`_typed_outputs` for outputs as the SQLite Arrow reader's JSON lines (each
    output followed by a newline, ``{}`` for none): the array's text buffer is parsed
    as it is."""
    if not len(lines):
        return _typed_outputs((), typed)
    table = _parse_line_array(lines, typed)
    if table is not None:
        return table
    texts = [line[:-1] for line in lines.to_pylist()]  # "{}" for none parses as none
    return _python_outputs(texts, typed)  # unusual text: the same table, slower


def _parse_line_array(lines: pa.Array, typed: pa.Schema) -> pa.Table | None:
    """Parse a string array whose values are JSON lines (each ending in a newline) from
    its own text buffer; None when they are not one output per value."""
    import pyarrow as pa

    _, offset_buffer, data = lines.buffers()
    offsets = pa.Array.from_buffers(
        pa.int32(), len(lines) + 1, [None, offset_buffer], offset=lines.offset
    )
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    return _parse_lines(data.slice(start, end - start), len(lines), typed)


def _parse_lines(data: pa.Buffer, rows: int, typed: pa.Schema) -> pa.Table | None:
    """Parse JSON lines, one output each; None when they are not ``rows`` outputs."""
    import pyarrow as pa

    # Searching the page for a raw newline costs more than parsing it, so parse it as one
    # output per line first: an output spread over lines is not valid JSON line by line
    # (its first line leaves a bracket open), so the reader fails and the page is read
    # again allowing newlines in values.
    for multiline in (False, True):
        try:
            table = _read_json(data, typed, multiline=multiline)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        if table.num_rows == rows:
            return table.select([f.name for f in typed])
    return None


def _read_json(data: bytes | pa.Buffer, typed: pa.Schema, *, multiline: bool) -> pa.Table:
    import pyarrow as pa
    import pyarrow.json as pj  # type: ignore[import-untyped]

    # The page as one block on this thread: the reader's threads would only contend with
    # the page reader's worker for the same cores, and several blocks come back as
    # several chunks, which a record batch must copy into one.
    return pj.read_json(
        pa.BufferReader(data),
        read_options=pj.ReadOptions(block_size=max(len(data) + 1, 1 << 20), use_threads=False),
        parse_options=pj.ParseOptions(
            explicit_schema=typed,
            unexpected_field_behavior="ignore",
            newlines_in_values=multiline,
        ),
    )


def _python_outputs(outputs: Sequence[str | None], typed: pa.Schema) -> pa.Table:
    import pyarrow as pa

    values = [jsoncodec.loads(o) if o else {} for o in outputs]
    try:
        struct = pa.array(values, pa.struct(list(typed)))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ConfigurationError(
            f"stored outputs do not fit the run's output schema ({exc}); read them with "
            "results(), or leave the output fields out with to_arrow(columns=...)"
        ) from exc
    return pa.Table.from_arrays(struct.flatten(), schema=typed)


def _as_text(output_json: str | None) -> str | None:
    """A text output as plain text; any other output as compact JSON text."""
    if output_json is None:
        return None
    value: Any = jsoncodec.loads(output_json)
    return value if isinstance(value, str) else jsoncodec.dumps_text(value)
