"""Readers do not wait behind writers on SQLite, nor writers behind readers.

A writer in another process holds SQLite's write lock (``BEGIN IMMEDIATE``) with an
uncommitted change for as long as the test wants: every read path must answer while it
does, from the last committed state. Had a read taken the write lock, it would have
failed with "database is locked" after the store's busy timeout, so nothing here
depends on how fast the machine is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchor_core import BatchItem, BatchJob, BatchRunner, ChunkPolicy, Run, SQLiteStorage

from ..cli.helpers import batchor

pytestmark = pytest.mark.integration

N = 40

# Holds the write lock with an uncommitted change until a line arrives on stdin.
_WRITER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("UPDATE batchor_runs SET completed_items = completed_items + 1000, "
             "status_reason = 'uncommitted'")
conn.execute("UPDATE batchor_items SET output_json = '{\\"x\\": 1}'")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
print("released", flush=True)
"""


def _job(max_requests: int = 50_000) -> BatchJob:
    return BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda i: i.payload["t"],
        chunk_policy=ChunkPolicy(max_requests=max_requests),
    )


def _finished_run(make_runner: Callable[..., BatchRunner]) -> tuple[BatchRunner, Run]:
    runner = make_runner()
    items = [BatchItem(f"i{k}", {"t": f"text {k}"}) for k in range(N)]
    run = runner.start(_job(), items=items, run_id="reads")
    assert run.wait(timeout=60, poll_interval=0.05).completed_items == N
    return runner, run


class _Writer:
    """A process holding the store's write lock until :meth:`release`."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "locked"

    def release(self) -> None:
        """Let the writer roll back; check it held the lock all along."""
        assert self.proc.poll() is None, "the writer ended before it was released"
        out, _ = self.proc.communicate("go\n", timeout=30)
        assert out.strip() == "released"


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Callable[[], _Writer]]:
    made: list[_Writer] = []

    def start() -> _Writer:
        made.append(_Writer(tmp_path / "runs.sqlite3"))
        return made[-1]

    yield start
    for w in made:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(timeout=30)


def test_reads_answer_while_another_process_holds_the_write_lock(
    make_runner: Callable[..., BatchRunner],
    writer: Callable[[], _Writer],
    tmp_path: Path,
) -> None:
    runner, run = _finished_run(make_runner)
    store = runner.storage
    before = run.summary()
    results_before = [(r.item_id, r.output, r.cursor) for r in run.results()]
    lock = writer()

    summary = run.summary()
    assert summary == before  # the last committed state, not the writer's
    assert summary.status_reason != "uncommitted"
    assert [(r.item_id, r.output, r.cursor) for r in run.results(page_size=7)] == results_before
    assert run.item("i3") is not None
    assert run.error_counts() == {}
    table = run.to_arrow()
    assert table.num_rows == N
    assert sorted(table.column("item_id").to_pylist()) == sorted(f"i{k}" for k in range(N))
    # The ordinary column pages too (to_arrow's path without ADBC).
    page = store.read_result_columns("reads", after_seq=-1, limit=N + 1)
    assert len(page) == N
    assert [s.run_id for s in runner.list_runs()] == ["reads"]
    # A new process: opening the store and `batchor status`.
    status = batchor(
        "status",
        "reads",
        "--json",
        env={"BATCHOR_STORE": str(tmp_path / "runs.sqlite3"), "OPENAI_API_KEY": "sk-test"},
        cwd=tmp_path,
    )
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert (shown["completed_items"], shown["status"]) == (N, "completed")
    lock.release()


def test_a_reader_holding_a_snapshot_does_not_hold_up_a_collect(
    make_runner: Callable[..., BatchRunner],
) -> None:
    runner, first = _finished_run(make_runner)
    store = runner.storage
    reading = threading.Event()
    done = threading.Event()
    seen: dict[str, Any] = {}

    def reader() -> None:
        try:
            with store.read():
                seen["before"] = [r.item_id for r in first.results(page_size=9)]
                seen["runs"] = store.list_run_ids()
                reading.set()
                assert done.wait(timeout=60)
                # Still the snapshot it started with: the other run is not in it.
                seen["after"] = store.list_run_ids()
        except BaseException as exc:
            seen["error"] = exc
            reading.set()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert reading.wait(timeout=30)
        # A whole run (ingest, submit, collect: write transactions) while the read is open.
        second = runner.start(
            _job(), items=[BatchItem(f"j{k}", {"t": f"more {k}"}) for k in range(N)], run_id="w"
        )
        assert second.wait(timeout=60, poll_interval=0.05).completed_items == N
    finally:
        done.set()
        thread.join(timeout=60)
    assert "error" not in seen, seen.get("error")
    assert len(seen["before"]) == N
    assert seen["runs"] == seen["after"] == ["reads"]
    assert store.list_run_ids() == ["reads", "w"]


def test_results_read_while_a_run_collects_are_each_item_once(
    make_runner: Callable[..., BatchRunner],
) -> None:
    """A reader paging results() in a loop in another thread, as a run collects: the
    collect is not held up, and the reader sees every item exactly once, in order."""
    runner = make_runner()
    run = runner.start(
        _job(max_requests=30),
        items=[BatchItem(f"i{k}", {"t": f"text {k}"}) for k in range(300)],
        run_id="paged",
    )
    stop = threading.Event()
    got: list[tuple[str, int]] = []
    errors: list[BaseException] = []

    def reader() -> None:
        cursor = 0
        try:
            while True:
                last_pass = stop.is_set()  # the run is finished: this pass reads the rest
                for r in run.results(after=cursor, page_size=11):
                    got.append((r.item_id, r.cursor))
                    cursor = r.cursor
                if last_pass:
                    return
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        assert run.wait(timeout=60, poll_interval=0.01).completed_items == 300
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors
    assert sorted(i for i, _ in got) == sorted(f"i{k}" for k in range(300))
    assert [c for _, c in got] == list(range(1, 301))


def test_a_store_file_reopened_under_the_lock_answers_reads(
    tmp_path: Path, make_runner: Callable[..., BatchRunner], writer: Callable[[], _Writer]
) -> None:
    """Opening a store that is current (its schema check) takes no write lock."""
    _finished_run(make_runner)
    lock = writer()
    store = SQLiteStorage(tmp_path / "runs.sqlite3")
    try:
        record = store.load_run("reads")
        assert record is not None and record.completed_items == N
    finally:
        store.close()
    lock.release()
