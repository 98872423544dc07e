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
