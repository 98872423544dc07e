"""Columnar results: to_arrow / to_pandas / typed Parquet agree with results(), per store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ConfigurationError,
    ItemStatus,
    RetryPolicy,
    Run,
)
from batchor_core.columnar import result_schema
from batchor_core.storage import SQLStateStore
from tests.integration.review_model import Review

pytestmark = pytest.mark.integration

N = 30
FAILING = ("text 4!", "text 11!", "text 27!")


def _finished_run(
    make_runner: Callable[..., BatchRunner], store: SQLStateStore, emulator: Any
) -> Run:
    for needle in FAILING:
        emulator.faults.line_fault(contains=needle, kind="error")
    runner = make_runner(storage=store)
    job = BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda i: i.payload["t"],
        output_model=Review,
        retry_policy=RetryPolicy(max_attempts=1),
    )
    items = [
        BatchItem(f"i{k}", {"t": f"text {k}!", "n": k}, metadata={"k": k} if k % 2 else None)
        for k in range(N)
    ]
    run = runner.start(job, items=items, run_id="col")
    summary = run.wait(timeout=60, poll_interval=0.05)
    assert summary.failed_items == len(FAILING) and summary.completed_items == N - len(FAILING)
    return run


def _expected(run: Run) -> dict[str, dict[str, Any]]:
    """results() turned into the row to_arrow should hold for each item."""
    rows = {}
    for r in run.results():
        output = r.output.model_dump(mode="json") if isinstance(r.output, Review) else None
        rows[r.item_id] = {
            "item_id": r.item_id,
            "status": r.status.value,
            **(output or dict.fromkeys(Review.model_fields)),
            "error_code": r.error.code if r.error else None,
            "error_message": r.error.message if r.error else None,
            "attempts": r.attempts,
            "input_tokens": r.usage.input_tokens if r.usage else None,
            "output_tokens": r.usage.output_tokens if r.usage else None,
            "metadata": r.metadata,
            "cursor": r.cursor,
        }
    return rows


def _as_compared(row: dict[str, Any]) -> dict[str, Any]:
    row = dict(row)
    row["metadata"] = json.loads(row["metadata"]) if row["metadata"] else None
    return row


def test_to_arrow_holds_exactly_what_results_yields(
    make_runner: Callable[..., BatchRunner], store: SQLStateStore, emulator: Any
) -> None:
    run = _finished_run(make_runner, store, emulator)
    table = run.to_arrow()
    assert table.column_names == [
        "item_id",
        "status",
        "sentiment",
        "summary",
        "complaint",
        "aspects",
        "error_code",
        "error_message",
        "attempts",
        "input_tokens",
        "output_tokens",
        "metadata",
        "cursor",
    ]
    types = {f.name: f.type for f in table.schema}
    assert types["sentiment"] == pa.string()  # an enum
    assert types["complaint"] == pa.string()  # optional: nullable
    assert types["aspects"] == pa.list_(
        pa.struct([pa.field("name", pa.string()), pa.field("score", pa.int64())])
    )
    expected = _expected(run)
    got = [_as_compared(r) for r in table.to_pylist()]
    assert [r["item_id"] for r in got] == [f"i{k}" for k in range(N)]  # input order
    assert {r["item_id"]: r for r in got} == expected
    failed = [r for r in got if r["status"] == "failed"]
    assert len(failed) == len(FAILING)
    assert all(r["sentiment"] is None and r["aspects"] is None and r["error_code"] for r in failed)

    frame = run.to_pandas()
    assert list(frame.columns) == table.column_names and len(frame) == N
    assert frame.set_index("item_id").loc["i5", "sentiment"] == expected["i5"]["sentiment"]


def test_status_columns_and_payload_selection(
    make_runner: Callable[..., BatchRunner], store: SQLStateStore, emulator: Any
) -> None:
    run = _finished_run(make_runner, store, emulator)
    failed = run.to_arrow(status=ItemStatus.FAILED)
    assert sorted(failed.column("item_id").to_pylist()) == sorted(
        f"i{t.split()[1].rstrip('!')}" for t in FAILING
    )
    assert set(failed.column("status").to_pylist()) == {"failed"}

    picked = run.to_arrow(columns=["sentiment", "item_id", "payload"], include_payload=True)
    assert picked.column_names == ["sentiment", "item_id", "payload"]
    payloads = dict(
        zip(picked.column("item_id").to_pylist(), picked.column("payload").to_pylist(), strict=True)
    )
    assert json.loads(payloads["i7"]) == {"t": "text 7!", "n": 7}
    ids_only = run.to_arrow(columns=["item_id"], status="completed")
    assert ids_only.column_names == ["item_id"] and ids_only.num_rows == N - len(FAILING)
    with pytest.raises(KeyError, match="payload"):
        run.to_arrow(columns=["payload"])  # asked for without include_payload
    with pytest.raises(KeyError, match="nope"):
        run.to_arrow(columns=["nope"])
    with pytest.raises(KeyError, match="asked for twice: item_id"):
        run.to_arrow(columns=["item_id", "status", "item_id"])
    with pytest.raises(ConfigurationError, match="page_size"):
        next(run.results(page_size=0))  # yielded nothing, as if the run had no results


def test_parquet_export_is_typed_and_round_trips(
    make_runner: Callable[..., BatchRunner], store: SQLStateStore, emulator: Any, tmp_path: Path
) -> None:
    run = _finished_run(make_runner, store, emulator)
    report = run.export(tmp_path / "out.parquet", format="parquet")
    assert report.rows == N and report.cursor == max(r.cursor for r in run.results())
    table = pq.read_table(report.path)
    assert table.schema.equals(run.to_arrow(include_payload=True).schema)
    assert table.equals(run.to_arrow(include_payload=True))
    rows = {r["item_id"]: r for r in table.to_pylist()}
    expected = _expected(run)
    for item_id, row in rows.items():
        assert json.loads(row.pop("payload"))["n"] == int(item_id[1:])
        assert _as_compared(row) == expected[item_id]
        if row["status"] == "completed":
            Review.model_validate({k: row[k] for k in Review.model_fields})
    later = run.export(tmp_path / "later.parquet", format="parquet", after=report.cursor)
    assert later.rows == 0 and pq.read_table(later.path).schema.equals(table.schema)

    recorded = len(store.load_run("col").retention["exports"])  # type: ignore[union-attr]
    failed = run.export(tmp_path / "failed.parquet", format="parquet", status="failed")
    assert pq.read_table(failed.path).column("status").to_pylist() == ["failed"] * len(FAILING)
    assert len(store.load_run("col").retention["exports"]) == recorded  # type: ignore[union-attr]


def test_pretty_printed_and_odd_outputs_parse_to_the_same_typed_columns() -> None:
    from batchor_core.columnar import _typed_outputs

    _, typed = result_schema(Review.model_json_schema())
    assert typed is not None
    value = {
        "sentiment": "positive",
        "summary": "ok",
        "complaint": None,
        "aspects": [{"name": "a", "score": 1}],
    }
    compact = _typed_outputs([json.dumps(value), None], typed)
    pretty = _typed_outputs([json.dumps(value, indent=2), None], typed)
    assert compact.equals(pretty)
    assert compact.to_pylist() == [value, dict.fromkeys(value)]
    # Extra keys are ignored; a value that fits no column is a clear error, not a bad table.
    extra = _typed_outputs([json.dumps({**value, "extra": [1]})], typed)
    assert extra.to_pylist() == [value]
    with pytest.raises(ConfigurationError, match="output schema"):
        _typed_outputs([json.dumps({**value, "summary": {"x": 1}})], typed)


def test_pretty_printed_outputs_in_an_arrow_array_parse_like_python_strings() -> None:
    """The SQLite Arrow reader hands outputs over as an Arrow array: parsing its buffer
    gives the same table as the Python strings, multi-line, null and odd outputs too."""
    from batchor_core.columnar import _typed_output_array, _typed_outputs

    _, typed = result_schema(Review.model_json_schema())
    assert typed is not None
    value = {"sentiment": "positive", "summary": "ok", "complaint": None, "aspects": []}
    pages = [
        [json.dumps(value), None, json.dumps({**value, "extra": [1]})],
        [json.dumps(value, indent=2), None, json.dumps(value)],  # one spread over lines
        [None, None],
    ]
    for page in pages:
        array = pa.array(page, pa.string())
        assert _typed_output_array(array, typed).equals(_typed_outputs(page, typed))
        assert _typed_output_array(array.slice(1), typed).equals(_typed_outputs(page[1:], typed))
    with pytest.raises(ConfigurationError, match="output schema"):
        _typed_output_array(pa.array([json.dumps({**value, "summary": {"x": 1}})]), typed)


def test_sqlite_to_arrow_takes_the_adbc_path_and_gives_the_same_table(
    make_runner: Callable[..., BatchRunner], tmp_path: Path, emulator: Any, monkeypatch: Any
) -> None:
    """With ``batchor[fast]`` installed, a SQLite store's pages come from ADBC (the Python
    driver's page reader is never called) and the table is the one the driver path gives,
    in small pages too, where some pages hold errors and metadata and others only NULLs;
    to_pandas() and the Parquet export ride the same path."""
    pytest.importorskip("adbc_driver_sqlite")
    import sys

    monkeypatch.setenv("BATCHOR_SQLITE_ADBC", "1")  # opted in
    from batchor_core.columnar import result_batches
    from batchor_core.storage import SQLiteStorage
    from batchor_core.storage.sqlite_arrow import open_arrow_reader

    store = SQLiteStorage(tmp_path / "fast.sqlite3")
    try:
        run = _finished_run(make_runner, store, emulator)
        schema = run._output_schema()
        calls = []
        driver_read = store.read_result_columns

        def counted(*args: Any, **kwargs: Any) -> Any:
            calls.append(kwargs)
            return driver_read(*args, **kwargs)

        def tables() -> list[pa.Table]:
            return [
                run.to_arrow(),
                run.to_arrow(status="failed", include_payload=True),
                run.to_arrow(columns=["error_code", "aspects", "metadata"]),
                *(
                    pa.Table.from_batches(list(b), schema=s)
                    for s, b in [result_batches(store, "col", schema, page_size=4, after=5)]
                ),
                run.to_pandas().pipe(pa.Table.from_pandas, preserve_index=False),
                pq.read_table(run.export(tmp_path / "r.parquet", format="parquet").path),
            ]

        monkeypatch.setattr(store, "read_result_columns", counted)
        reader = open_arrow_reader(store)
        assert reader is not None
        reader.close()
        fast = tables()
        assert calls == []  # every page came through ADBC
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "adbc_driver_sqlite", None)  # as if not installed
            assert open_arrow_reader(store) is None
            slow = tables()
        assert calls  # ... and now through the driver
        for got, want in zip(fast, slow, strict=True):
            assert got.schema == want.schema
            assert got.equals(want)
        expected = _expected(run)
        assert {r["item_id"]: _as_compared(r) for r in fast[0].to_pylist()} == expected
    finally:
        store.close()


def test_adbc_pages_hand_over_to_the_driver_midway_and_stop_their_worker_when_left(
    make_runner: Callable[..., BatchRunner], tmp_path: Path, emulator: Any, monkeypatch: Any
) -> None:
    """Pages are read ahead on a worker thread. When ADBC cannot give a page (its reader
    returns None, as for values of an unexpected type), that page and the rest come
    through the driver: the same table. A caller that stops early stops the worker."""
    pytest.importorskip("adbc_driver_sqlite")
    import threading

    monkeypatch.setenv("BATCHOR_SQLITE_ADBC", "1")  # opted in
    from batchor_core.columnar import result_batches
    from batchor_core.storage import SQLiteStorage
    from batchor_core.storage.sqlite_arrow import SQLiteArrowReader

    store = SQLiteStorage(tmp_path / "fast.sqlite3")
    try:
        run = _finished_run(make_runner, store, emulator)
        schema = run._output_schema()

        def table() -> pa.Table:
            s, b = result_batches(store, "col", schema, page_size=4, include_payload=True)
            return pa.Table.from_batches(list(b), schema=s)

        whole = table()
        assert whole.num_rows == N and whole.equals(run.to_arrow(include_payload=True))
        pages: list[int] = []
        driver_pages: list[int] = []
        read_page = SQLiteArrowReader.read_page
        driver_read = store.read_result_columns

        def third_page_fails(self: SQLiteArrowReader, *args: Any, **kwargs: Any) -> Any:
            pages.append(kwargs["after_seq"])
            return None if len(pages) == 3 else read_page(self, *args, **kwargs)

        def counted(*args: Any, **kwargs: Any) -> Any:
            driver_pages.append(kwargs["after_seq"])
            return driver_read(*args, **kwargs)

        monkeypatch.setattr(SQLiteArrowReader, "read_page", third_page_fails)
        monkeypatch.setattr(store, "read_result_columns", counted)
        handed = table()
        assert pages[:3] == [-1, 3, 7] and driver_pages[0] == 7  # from the failed page on
        assert handed.schema == whole.schema and handed.equals(whole)

        monkeypatch.setattr(SQLiteArrowReader, "read_page", read_page)
        _, batches = result_batches(store, "col", schema, page_size=4)
        next(batches)
        assert any(t.name == "batchor-arrow-pages" for t in threading.enumerate())
        batches.close()  # type: ignore[attr-defined]
        assert not any(t.name == "batchor-arrow-pages" for t in threading.enumerate())
    finally:
        store.close()


def test_driver_pages_are_read_ahead_on_a_worker_except_for_the_memory_store(
    make_runner: Callable[..., BatchRunner], tmp_path: Path, emulator: Any, monkeypatch: Any
) -> None:
    """Without ADBC, a SQLite file store's driver pages are read on a worker thread one
    page ahead (the parse of one overlaps the read of the next): the same table, a store
    error on a later page reaches the caller as itself, and a caller that stops early
    stops the worker. The memory store (one shared connection) is read on the caller's
    thread."""
    import sys
    import threading

    from batchor_core.columnar import result_batches
    from batchor_core.errors import StorageError
    from batchor_core.storage import MemoryStateStore, SQLiteStorage

    monkeypatch.setitem(sys.modules, "adbc_driver_sqlite", None)  # as if not installed

    def workers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "batchor-result-pages"]

    store = SQLiteStorage(tmp_path / "driver.sqlite3")
    try:
        run = _finished_run(make_runner, store, emulator)
        schema = run._output_schema()
        s, b = result_batches(store, "col", schema, page_size=4, include_payload=True)
        first = next(b)
        assert workers() == ["batchor-result-pages"]
        whole = pa.Table.from_batches([first, *b], schema=s)
        assert not workers()
        assert whole.num_rows == N and whole.equals(run.to_arrow(include_payload=True))
        assert {r["item_id"]: _as_compared(r) for r in run.to_arrow().to_pylist()} == (
            _expected(run)
        )

        driver_read = store.read_result_columns
        calls: list[int] = []

        def third_page_fails(*args: Any, **kwargs: Any) -> Any:
            calls.append(kwargs["after_seq"])
            if len(calls) == 3:
                raise StorageError("the store went away")
            return driver_read(*args, **kwargs)

        monkeypatch.setattr(store, "read_result_columns", third_page_fails)
        _, b = result_batches(store, "col", schema, page_size=4)
        assert next(b).num_rows == 4 and next(b).num_rows == 4
        with pytest.raises(StorageError, match="went away"):
            next(b)
        assert not workers()
        monkeypatch.setattr(store, "read_result_columns", driver_read)

        _, b = result_batches(store, "col", schema, page_size=4)
        next(b)
        b.close()  # type: ignore[attr-defined]
        assert not workers()
    finally:
        store.close()

    memory = MemoryStateStore()
    try:
        run = _finished_run(make_runner, memory, emulator)
        _, b = result_batches(memory, "col", run._output_schema(), page_size=4)
        next(b)
        assert not workers()
        assert pa.Table.from_batches(list(b)).num_rows == N - 4
    finally:
        memory.close()


def test_to_pandas_gives_a_frame_the_caller_can_change_in_place(
    make_runner: Callable[..., BatchRunner], tmp_path: Path, emulator: Any
) -> None:
    """Every column of to_pandas()'s frame is writable: numeric columns without nulls
    (attempts, cursor, ...) must not be read-only views of Arrow memory."""
    pytest.importorskip("pandas")
    from batchor_core.storage import SQLiteStorage

    store = SQLiteStorage(tmp_path / "pandas.sqlite3")
    try:
        run = _finished_run(make_runner, store, emulator)
        frame = run.to_pandas()
        assert len(frame) == N
        first = frame.index[0]
        for name in frame.columns:
            frame.loc[first, name] = frame[name].iloc[1]  # raised on read-only columns
            assert frame[name].iloc[0] == frame[name].iloc[1] or frame[name].isna().iloc[1]
        frame["attempts"] += 1
        assert (frame["attempts"] >= 2).all()
    finally:
        store.close()


def test_a_failed_parquet_export_stops_its_page_reader_at_once(
    make_runner: Callable[..., BatchRunner], tmp_path: Path, emulator: Any, monkeypatch: Any
) -> None:
    """A write that fails midway (a full disk, say) stops the worker reading pages ahead
    and closes its reader then, not whenever the failed export's traceback is let go
    (a notebook keeps the last one)."""
    import threading

    from batchor_core import columnar
    from batchor_core.storage import SQLiteStorage

    def workers() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.endswith("-pages")]

    store = SQLiteStorage(tmp_path / "export.sqlite3")
    try:
        run = _finished_run(make_runner, store, emulator)
        real = columnar.result_batches

        def small_pages(*args: Any, **kwargs: Any) -> Any:
            return real(*args, **kwargs, page_size=4)

        monkeypatch.setattr(columnar, "result_batches", small_pages)
        written: list[int] = []

        def write_batch(self: Any, batch: Any, *args: Any, **kwargs: Any) -> None:
            written.append(batch.num_rows)
            if len(written) == 2:
                raise OSError("no space left on device")

        monkeypatch.setattr(pq.ParquetWriter, "write_batch", write_batch)
        with pytest.raises(OSError, match="no space") as failed:
            run.export(tmp_path / "out.parquet", format="parquet")
        assert failed.value is not None  # the traceback is still held here
        assert not workers()
        assert not (tmp_path / "out.parquet").exists()
    finally:
        store.close()


def test_results_read_beside_an_ingest_in_the_same_process_leave_the_store_sound(
    tmp_path: Path,
) -> None:
    """to_arrow() in one thread while another ingests into the same SQLite file. With the
    ADBC driver's own copy of SQLite reading the file beside Python's (as by default
    before), the store's own statements failed midway: ``database disk image is
    malformed``, ``no such table: batchor_items``."""
    import threading

    from pydantic import BaseModel

    from batchor_core import LocalArtifactStore
    from batchor_core.columnar import result_batches
    from batchor_core.storage import SQLiteStorage
    from batchor_core.testing import FakeBatchProvider

    class Out(BaseModel):
        x: int

    path = tmp_path / "beside.sqlite3"
    store = SQLiteStorage(path)
    runner = BatchRunner(
        storage=store,
        artifacts=LocalArtifactStore(tmp_path / "artifacts", fsync=False),
        provider=FakeBatchProvider(lambda body: '{"x": 1}'),
    )
    job = BatchJob(model="m", build_prompt=lambda item: str(item.payload["t"]), output_model=Out)
    done = threading.Event()
    problems: list[BaseException] = []
    reads = [0]

    def reader() -> None:
        other = SQLiteStorage(path)
        try:
            while not done.is_set():
                schema, batches = result_batches(other, "beside", None, page_size=500)
                table = pa.Table.from_batches(list(batches), schema=schema)
                ids = table.column("item_id").to_pylist()
                assert len(ids) == len(set(ids))
                reads[0] += 1
        except BaseException as exc:  # what the test exists to catch
            problems.append(exc)
        finally:
            other.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        items = (BatchItem(f"i{n}", {"t": n}) for n in range(20_000))
        run = runner.start(job, items=items, run_id="beside")
        assert run.wait(timeout=120, poll_interval=0).completed_items == 20_000
    finally:
        done.set()
        thread.join(60)
        runner.close()
    assert problems == []
    assert reads[0] > 0
