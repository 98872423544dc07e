"""Large results of a SQLite store read by an ADBC child process: the same table as the
driver's, every wait on the child bounded, and no child left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pytest

from batchor_core import BatchRunner
from batchor_core.columnar import result_batches
from batchor_core.storage import SQLiteStorage, arrow_child
from batchor_core.storage.arrow_child import ChildPages
from tests.integration.test_columnar_results import N, _finished_run

pytestmark = pytest.mark.integration
pytest.importorskip("adbc_driver_sqlite")


@pytest.fixture
def children(monkeypatch: Any) -> Iterator[list[subprocess.Popen[bytes]]]:
    """The child processes started, with ADBC neither opted in nor off."""
    monkeypatch.delenv("BATCHOR_SQLITE_ADBC", raising=False)
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        process = real(*args, **kwargs)
        if any("arrow_child" in str(a) for a in args[0]):
            started.append(process)
        return process

    monkeypatch.setattr(arrow_child.subprocess, "Popen", popen)
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()


def _table(store: SQLiteStorage, schema: Any, **options: Any) -> pa.Table:
    s, batches = result_batches(store, "col", schema, **options)
    return pa.Table.from_batches(list(batches), schema=s)


def _pages(path: Path, run_id: str = "r", **options: Any) -> ChildPages:
    """A child's pages of a 10-row page query on ``path``, from the start."""
    return ChildPages(
        path,
        run_id,
        after_seq=0,
        limit=10,
        status=None,
        finished_after=0,
        fields=None,
        json_lines=False,
        **options,
    )


def _driver_calls(store: SQLiteStorage, monkeypatch: Any) -> list[int]:
    calls: list[int] = []
    read = store.read_result_columns

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["after_seq"])
        return read(*args, **kwargs)

    monkeypatch.setattr(store, "read_result_columns", counted)
    return calls


def test_pages_after_a_full_first_one_come_from_a_child_and_give_the_driver_s_table(
    make_runner: Callable[..., BatchRunner],
    tmp_path: Path,
    emulator: Any,
    monkeypatch: Any,
    children: list[Any],
) -> None:
    store = SQLiteStorage(tmp_path / "child.sqlite3")
    try:
        run = _finished_run(make_runner, store, emulator)
        schema = run._output_schema()
        variants: list[dict[str, Any]] = [
            {"include_payload": True},
            {"status": "failed"},
            {"columns": ["error_code", "aspects", "metadata"]},
            {"after": 5},
        ]
        calls = _driver_calls(store, monkeypatch)
        got = [_table(store, schema, page_size=4, **v) for v in variants]
        # A child starts beside the first page of a run of more than one page; the 3
        # failed items fit in that page, so theirs is stopped unused.
        assert len(children) == len(variants)
        assert [c.wait(10) for c in children] == [0, -signal.SIGKILL, 0, 0]
        assert calls == [-1] * len(variants)  # the driver read only the first pages
        monkeypatch.setenv("BATCHOR_SQLITE_ADBC", "0")  # the driver alone
        want = [_table(store, schema, page_size=4, **v) for v in variants]
        assert len(children) == len(variants)
        for g, w in zip(got, want, strict=True):
            assert g.schema == w.schema and g.equals(w)
        assert got[0].num_rows == N
        # One page's worth starts no child at all.
        monkeypatch.delenv("BATCHOR_SQLITE_ADBC")
        assert run.to_arrow().num_rows == N
        assert len(children) == len(variants)
    finally:
        store.close()


def test_a_child_that_dies_midway_leaves_the_rest_to_the_driver(
    make_runner: Callable[..., BatchRunner],
    tmp_path: Path,
    emulator: Any,
    monkeypatch: Any,
    children: list[Any],
) -> None:
    store = SQLiteStorage(tmp_path / "child.sqlite3")
    try:
        run = _finished_run(make_runner, store, emulator)
        schema = run._output_schema()
        want = run.to_arrow(include_payload=True)
        real_iter = ChildPages.__iter__

        def dying(self: ChildPages) -> Iterator[Any]:
            for n, page in enumerate(real_iter(self)):
                yield page
                if n == 1:
                    self.process.kill()  # as by the OOM killer, between two pages
                    self.process.wait(10)

        monkeypatch.setattr(ChildPages, "__iter__", dying)
        calls = _driver_calls(store, monkeypatch)
        got = _table(store, schema, page_size=4, include_payload=True)
        assert len(children) == 1
        assert len(calls) > 1  # the driver took over after the child's pages
        assert got.equals(want)
    finally:
        store.close()


def test_a_child_that_gives_nothing_is_waited_on_only_so_long(tmp_path: Path) -> None:
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    pages = _pages(tmp_path / "none.sqlite3", page_timeout=0.5, command=sleeper)
    began = time.monotonic()
    try:
        assert list(pages) == [None]  # read the rest through the driver
        assert time.monotonic() - began < 10
    finally:
        pages.close()
    assert pages.process.poll() is not None  # stopped and reaped


def test_a_child_that_cannot_read_the_file_ends_the_pages_at_once(tmp_path: Path) -> None:
    pages = _pages(tmp_path / "missing" / "store.sqlite3")
    try:
        assert list(pages) == [None]
    finally:
        pages.close()


def test_a_reader_that_stops_early_stops_its_child(
    make_runner: Callable[..., BatchRunner],
    tmp_path: Path,
    emulator: Any,
    children: list[Any],
) -> None:
    store = SQLiteStorage(tmp_path / "child.sqlite3")
    try:
        run = _finished_run(make_runner, store, emulator)
        _, batches = result_batches(store, "col", run._output_schema(), page_size=2)
        next(batches)
        next(batches)  # the child's first page
        assert len(children) == 1 and children[0].poll() is None
        batches.close()  # type: ignore[attr-defined]
        assert children[0].poll() is not None
    finally:
        store.close()


def test_a_run_id_holding_the_page_marker_is_read_the_ordinary_way(tmp_path: Path) -> None:
    """The child is given the page query with a marker for each page's position; a run
    id that holds the marker's digits would be rewritten with it, so no child is started."""
    with pytest.raises(OSError):
        _pages(tmp_path / "s.sqlite3", f"run-{arrow_child._MARK}")


_FAKE_CHILD = """
import struct, sys
import pyarrow as pa

sys.stdin.buffer.readline()
sys.stdin.buffer.readline()
out = sys.stdout.buffer


def page(last, text):
    batch = pa.RecordBatch.from_arrays(
        [pa.array([text])], ["item_id"], metadata={b"batchor.last_seq": str(last).encode()}
    )
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    data = sink.getvalue()
    out.write(struct.pack("<cQ", b"P", data.size))
    out.write(data)
    out.flush()


page(1, "a")
page(2, "b" * (4 << 20))  # more than the pipe holds: written only as it is read
open(sys.argv[1], "w").close()
out.write(struct.pack("<cQ", b"E", 0))
out.flush()
"""


def test_the_child_writes_its_next_page_while_the_caller_is_busy(tmp_path: Path) -> None:
    """A page is larger than the pipe, so the child can only go on to read the next one
    once its last is taken off the pipe: that happens while the caller parses a page,
    not when the caller comes back for the next."""
    from types import SimpleNamespace

    from batchor_core.columnar import _child_pages

    written = tmp_path / "second-page-written"
    pages = _child_pages(
        SimpleNamespace(path=tmp_path / "s.sqlite3"),
        "r",
        after_seq=None,
        limit=10,
        status=None,
        finished_after=0,
        fields=None,
        json_lines=False,
        command=[sys.executable, "-c", _FAKE_CHILD, str(written)],
    )
    assert pages is not None
    try:
        pages.begin(0)
        got = iter(pages)
        first = next(got)
        assert first is not None and first[1] == 1
        deadline = time.monotonic() + 20
        while not written.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the caller, busy with the first page
        assert written.exists()
        second = next(got)
        assert second is not None and second[1] == 2
        assert len(second[0]["item_id"][0].as_py()) == 4 << 20
        assert next(got) == ({}, -1)
    finally:
        pages.close()


@pytest.mark.parametrize("size", [2**62, 2**64 - 1])
def test_a_garbled_page_length_ends_the_pages(tmp_path: Path, size: int) -> None:
    garbled = (
        "import struct, sys; sys.stdin.buffer.readline(); "
        f"sys.stdout.buffer.write(struct.pack('<cQ', b'P', {size})); sys.stdout.flush()"
    )
    pages = _pages(tmp_path / "s.sqlite3", command=[sys.executable, "-c", garbled])
    try:
        assert list(pages) == [None]  # read the rest through the driver
    finally:
        pages.close()
