"""Read-only transactions, written once, run on every store: ``store.read()`` blocks
read one snapshot, and nothing inside one can write."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import update

from batchor_core import StorageError
from batchor_core.storage import SQLStateStore
from batchor_core.storage.schema import runs
from tests.contract.test_store_contract import _seed


def test_a_write_method_inside_a_read_block_is_refused(store: SQLStateStore, run_id: str) -> None:
    _seed(store, run_id)
    with store.read():
        with pytest.raises(StorageError, match="inside its read"):
            store.set_waiting(run_id, "written in a read")
        with store.read():  # blocks nest
            assert store.load_run(run_id) is not None
    record = store.load_run(run_id)
    assert record is not None and record.waiting_reason is None
    store.set_waiting(run_id, "written after it")  # the store writes again
    record = store.load_run(run_id)
    assert record is not None and record.waiting_reason == "written after it"


def test_a_statement_that_writes_in_a_read_transaction_fails(
    store: SQLStateStore, run_id: str
) -> None:
    """A read path that wrote by mistake fails at once (SQLite: query_only; Postgres:
    READ ONLY) instead of taking the write lock mid-transaction."""
    _seed(store, run_id)
    for _ in range(3):  # every pooled connection it leaves behind writes again
        with pytest.raises(StorageError, match="read"), store._read() as conn:
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(waiting_reason="x"))
        store.set_waiting(run_id, "a write transaction still writes")
    record = store.load_run(run_id)
    assert record is not None and record.waiting_reason == "a write transaction still writes"


def test_reads_in_one_block_do_not_see_a_commit_made_meanwhile(
    store: SQLStateStore, run_id: str
) -> None:
    """Another thread commits between two reads of one block: the block keeps its
    snapshot; the next block sees the commit."""
    if type(store).__name__ == "MemoryStateStore":
        pytest.skip("the memory store is one connection, not for concurrent threads")
    _seed(store, run_id)
    with store.read():
        first = store.load_run(run_id)
        writer = threading.Thread(target=store.set_waiting, args=(run_id, "moved on"))
        writer.start()
        writer.join(timeout=30)
        assert not writer.is_alive()  # the open read held the writer up for nothing
        again = store.load_run(run_id)
        chunks = store.list_chunks(run_id)
    assert first is not None and again is not None and chunks
    assert first.waiting_reason is None and again.waiting_reason is None
    latest = store.load_run(run_id)
    assert latest is not None and latest.waiting_reason == "moved on"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_read_interrupted_at_any_line_leaves_the_store_writable(
    store: SQLStateStore, run_id: str
) -> None:
    """A KeyboardInterrupt (Ctrl-C in a notebook polling ``summary()``) can land on any
    line of a read's way in and out. Whichever, the next write commits: no pooled
    connection is left read-only (SQLite's query_only, Postgres' READ ONLY) and no
    thread is left inside a read() block."""
    import gc
    import sys
    from types import FrameType
    from typing import Any

    from batchor_core.storage import base, dialects

    _seed(store, run_id)
    traced = {
        f.__code__
        for f in (
            dialects.ReadOnlyTransaction.__enter__,
            dialects.ReadOnlyTransaction.__exit__,
            dialects._writable_again,
            dialects._query_only_off,
            base.ReadTransaction.__enter__,
            base.ReadTransaction.__exit__,
            base.StoreBase.read.__wrapped__,  # type: ignore[attr-defined]
        )
    }
    interrupted_at = 0
    while True:
        lines = 0

        def trace(frame: FrameType, event: str, _arg: Any, at: int = interrupted_at + 1) -> Any:
            nonlocal lines
            if frame.f_code not in traced:
                return None
            if event == "line":
                lines += 1
                if lines == at:
                    raise KeyboardInterrupt
            return trace

        sys.settrace(trace)
        try:
            with store.read():
                store.load_run(run_id)
            store.chunk_stats([run_id])
            finished = True
        except KeyboardInterrupt:
            finished = False
        finally:
            sys.settrace(None)
        # A read interrupted before it closed its connection lets it go when it is
        # collected (the memory store's one connection is busy until then): collected
        # here, within this test.
        gc.collect(1)  # the young generations: what this iteration made
        reason = f"after an interrupt at line {interrupted_at + 1}"
        store.set_waiting(run_id, reason)  # a write: each pooled connection in turn
        store.set_waiting(run_id, reason)
        record = store.load_run(run_id)
        assert record is not None and record.waiting_reason == reason
        if finished:
            break
        interrupted_at += 1
    assert interrupted_at > 10  # every line of the way in and out was interrupted once
