"""Schema revision 0004: items keyed by an integer run key (issue 9): the upgrade of
real 0003 stores, row for row, run keys given to runs created at once, and every items
statement still searching an index."""

from __future__ import annotations

import re
import shutil
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    LocalArtifactStore,
    OpenAIProviderConfig,
    RunStatus,
    SQLiteStorage,
)
from batchor_core.storage import SQLStateStore
from batchor_core.storage.migrate import MIGRATIONS, VERSION_TABLE, ensure_current
from tests.integration.store_revisions import back_to_0003, dump, shape
from tests.integration.test_store_schema import (
    MIGRATIONS_HEAD,
    _finished_write,
    _new_record,
    _open,
)

pytestmark = pytest.mark.integration


def test_a_store_taken_back_to_0003_has_the_schema_the_0003_scripts_build(
    tmp_path: Path,
) -> None:
    # What the migration tests start from is what batchor 0003 really wrote.
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    for later in (scripts / "versions").glob("rev_000[4-9]_*.py"):
        later.unlink()
    reference = f"sqlite:///{tmp_path / 'ref.sqlite3'}"
    engine = create_engine(reference)
    assert ensure_current(engine, where="ref", directory=scripts, create_fresh=False) == "0003"
    engine.dispose()
    ours = f"sqlite:///{tmp_path / 'ours.sqlite3'}"
    _open(ours).close()
    back_to_0003(ours)
    assert shape(ours) == shape(reference)


def test_a_0003_store_with_runs_in_every_state_is_upgraded_row_for_row_and_goes_on(
    fresh_url: str, tmp_path: Path
) -> None:
    from batchor_core.testing import OpenAIEmulator

    job = BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda item: f"t: {item.payload['t']}",
        chunk_policy=ChunkPolicy(max_requests=3),
    )
    # Ids that share prefixes, and one as long as a run id may be.
    done_id, live_id, idle_id = "r", "r-" + "x" * 198, "r-"
    with OpenAIEmulator(processing="stepwise", in_progress_polls=2, seed=5) as emu:
        emu.faults.line_fault(contains='t: 1"', kind="error")  # failed for good
        emu.faults.line_fault(contains='t: 2"', kind="server_error", times=1)  # retried

        def runner() -> BatchRunner:
            return BatchRunner(
                storage=_open(fresh_url),
                artifacts=LocalArtifactStore(tmp_path / "artifacts"),
                provider=OpenAIProviderConfig(api_key="sk-test", base_url=emu.base_url),
                create_grace_seconds=0.0,
            )

        def items(tag: str) -> list[BatchItem]:
            return [BatchItem(f"{tag}{n}", {"t": n}, metadata={"n": n}) for n in range(9)]

        with runner() as old:
            done = old.start(job, items=items("d"), run_id=done_id)
            assert done.wait(timeout=60, poll_interval=0.01).status is RunStatus.COMPLETED
            live = old.start(job, items=items("l"), run_id=live_id)
            while live.summary().completed_items == 0:  # results recorded, batches in flight
                live.refresh()
            old.start(job, items=items("i"), run_id=idle_id)  # ingested, never advanced
            before = {r: old.get_run(r).summary() for r in (done_id, live_id, idle_id)}
            results = {r: list(old.get_run(r).results()) for r in (done_id, live_id, idle_id)}
        assert before[live_id].batches_in_flight > 0
        assert before[done_id].failed_items == 1 and before[done_id].completed_items == 8
        rows = dump(fresh_url)
        assert {r[0] for r in rows["items"]} == {done_id, live_id, idle_id}
        assert any(r[5] == "retry" or r[8] > 1 for r in rows["items"])  # a retried item
        back_to_0003(fresh_url)
        assert dump(fresh_url) == rows

        with runner() as new:  # upgraded on open
            assert new.storage.schema_revision == MIGRATIONS_HEAD
            assert dump(fresh_url) == rows
            for run_id in (done_id, live_id, idle_id):
                run = new.get_run(run_id)
                assert run.summary() == before[run_id]
                assert list(run.results()) == results[run_id]
            for run_id in (live_id, idle_id):
                final = new.get_run(run_id).wait(timeout=60, poll_interval=0.01)
                assert (final.status, final.completed_items, final.failed_items) == (
                    RunStatus.COMPLETED,
                    8,
                    1,
                )
            engine = create_engine(fresh_url)
            with engine.connect() as conn:  # numbered in creation order
                keys = conn.execute(
                    text("SELECT run_id, run_key FROM batchor_runs ORDER BY created_at")
                ).all()
            engine.dispose()
            assert [k for _, k in keys] == [1, 2, 3]
            assert [r for r, _ in keys] == [done_id, live_id, idle_id]


def test_an_upgrade_that_fails_midway_leaves_the_store_at_0003(fresh_url: str) -> None:
    from batchor_core.errors import StorageError

    store = _open(fresh_url)
    _finished_write(store)
    store.close()
    back_to_0003(fresh_url)
    engine = create_engine(fresh_url)
    with engine.begin() as conn:  # an item of a run that is not there stops the copy
        conn.execute(
            text(
                "INSERT INTO batchor_items (run_id, seq, item_id, payload_json, status, "
                "attempts, submissions, free_resubmits) "
                "VALUES ('gone', 0, 'a', '{}', 'queued', 0, 1, 0)"
            )
        )
    engine.dispose()
    before = shape(fresh_url)
    with pytest.raises(StorageError, match="stays at revision 0003"):
        _open(fresh_url)
    assert shape(fresh_url) == before
    engine = create_engine(fresh_url)
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == "0003"
    engine.dispose()


def test_runs_created_at_once_get_distinct_keys(fresh_url: str) -> None:
    stores = [_open(fresh_url) for _ in range(4)]
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def create(store: SQLStateStore, n: int) -> None:
        record = _new_record(f"run-{n}")
        barrier.wait()
        try:
            store.create_run(record)
        except BaseException as exc:  # what the test exists to catch
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(stores[n % 4], n)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for s in stores:
        s.close()
    assert errors == []
    engine = create_engine(fresh_url)
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT run_id, run_key FROM batchor_runs")).all()
    engine.dispose()
    assert sorted(k for _, k in keys) == list(range(1, 17))
    assert sorted(r for r, _ in keys) == sorted(f"run-{n}" for n in range(16))


def test_every_items_statement_of_a_sqlite_run_searches_an_index(tmp_path: Path) -> None:
    # Keyed by the run key now: no statement on the items table may scan it (a run's
    # collection, retries, results, counts and cancellation each look up a key range).
    from batchor_core.testing import OpenAIEmulator

    path = tmp_path / "plans.sqlite3"
    store = SQLiteStorage(path)
    statements: list[str] = []

    @event.listens_for(store._engine, "connect")
    def _trace(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(statements.append)  # SQL with its values

    store._engine.dispose()  # new connections, traced
    job = BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda item: f"t: {item.payload['t']}",
        chunk_policy=ChunkPolicy(max_requests=3),
    )
    with OpenAIEmulator(processing="instant", seed=3) as emu:
        emu.faults.line_fault(contains='t: 1"', kind="error")
        emu.faults.line_fault(contains='t: 2"', kind="server_error", times=1)
        with BatchRunner(
            storage=store,
            artifacts=LocalArtifactStore(tmp_path / "artifacts"),
            provider=OpenAIProviderConfig(api_key="sk-test", base_url=emu.base_url),
        ) as runner:
            items = [BatchItem(f"i{n}", {"t": n}) for n in range(9)]
            run = runner.start(job, items=items, run_id="planned")
            assert run.wait(timeout=60, poll_interval=0.01).failed_items == 1
            assert len(list(run.results())) == 9 and run.summary().total_items == 9
            assert runner.get_run("planned").item("i3") is not None
            store.error_counts("planned")
            store.count_retry("planned")
            store.next_retry_time("planned")
            store.chunks_with_pending_items("planned")
            store.read_result_columns("planned", after_seq=-1, limit=100)
            other = runner.start(job, items=items, run_id="cancelled")
            other.cancel()
    on_items = {
        re.sub(r"\d+|'[^']*'", "?", s): s
        for s in statements
        if "batchor_items" in s and s.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE"))
    }
    assert len(on_items) >= 12, sorted(on_items)
    conn = sqlite3.connect(path)
    try:
        for sql in on_items.values():
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
            assert not [step for step in plan if step.startswith("SCAN batchor_items")], (sql, plan)
    finally:
        conn.close()


def test_postgres_outcomes_of_a_run_the_statistics_do_not_know_search_a_key_range(
    fresh_postgres: str,
) -> None:
    # Statistics taken before a run's items existed reckon the run one row: the outcome
    # update then searched the index by the run alone and filtered every item of the run
    # for each part (2 s per 5,000 outcomes of a 100k run). It must bound seq in the index.
    import json

    from sqlalchemy.dialects import postgresql

    from batchor_core.ports import NewItem
    from batchor_core.storage.outcomes_sql import DONE

    store = _open(fresh_postgres)
    try:
        for run_id in ("known", "new"):
            _finished_write(store, run_id)
            store.append_items(
                run_id,
                [NewItem(s, f"i{s}", "{}", None, "c0") for s in range(3000)],
                chunks=[],
                checkpoint=None,
            )
            if run_id == "known":
                with store._tx() as conn:
                    conn.execute(text("ANALYZE batchor_items"))
        compiled = DONE._json_statement().compile(dialect=postgresql.psycopg.dialect())
        rows = [[s, 1, "completed", "{}", None, None, 1, 1, 0, 0, 1, s] for s in range(1000, 1500)]
        with store._tx() as conn:
            key = conn.execute(text("SELECT run_key FROM batchor_runs WHERE run_id = 'new'"))
            params = {
                **compiled.params,
                "rows_json": json.dumps(rows),
                "b_run": key.scalar_one(),
                "rows_lo": 1000,
                "rows_hi": 1499,
            }
            plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN {compiled.string}", params).scalars())
    finally:
        store.close()
    searched = [line for line in plan.splitlines() if "Index Cond" in line and "run_key" in line]
    assert searched and all("seq >=" in line and "seq <=" in line for line in searched), plan


def test_postgres_row_updates_keyed_by_text_apply_every_row_whatever_the_collation(
    postgres_url: str,
) -> None:
    # The key range is Python's min and max of the keys: code point order. A text column
    # sorts by its collation (en: "a" < "B" < "c"; code points: "B" < "a" < "c"), so a
    # range on a text key would leave "a" out. Only integer keys are bounded.
    from sqlalchemy import Column, MetaData, Table, Text, insert, select, update

    from batchor_core.storage.dialects import RowUpdate

    table = Table(
        "batchor_t_collated",
        MetaData(),
        Column("k", Text(collation="en-x-icu"), primary_key=True),
        Column("v", Text),
        prefixes=["TEMPORARY"],
    )
    by_text = RowUpdate(
        {"k": Text(), "v": Text()},
        lambda v: update(table).where(table.c.k == v["k"]).values(v=v["v"]),
        key=table.c.k,
    )
    engine = create_engine(postgres_url)
    try:
        with engine.begin() as conn:
            table.create(conn)
            conn.execute(insert(table), [{"k": k} for k in ("a", "B", "c")])
            assert by_text.execute(conn, [("B", "2"), ("a", "1"), ("c", "3")]) == 3
            assert dict(conn.execute(select(table.c.k, table.c.v)).all()) == {
                "a": "1",
                "B": "2",
                "c": "3",
            }
    finally:
        engine.dispose()


def _busy_timeout_ms(engine: Any, ms: int) -> None:
    """Shorten the engine's SQLite busy timeout (batchor's is 30 s), set after batchor's."""

    @event.listens_for(engine, "connect")
    def _short(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute(f"PRAGMA busy_timeout={ms}")


def test_opening_a_sqlite_store_waits_for_an_upgrade_longer_than_the_busy_timeout(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """While one process upgrades a large store (minutes, for millions of items), another
    opening it waits for the write lock past SQLite's busy timeout, then finds the store
    upgraded (here: upgrades it, once the lock is let go), as on Postgres."""
    from batchor_core.storage import migrate
    from batchor_core.storage.dialects import make_engine

    path = tmp_path / "busy.sqlite3"
    url = f"sqlite:///{path}"
    store = SQLiteStorage(path)
    _finished_write(store)
    store.close()
    back_to_0003(url)

    held, release = threading.Event(), threading.Event()

    def upgrading() -> None:  # the other process's upgrade: the write lock, held a while
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            held.set()
            release.wait(10)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    holder = threading.Thread(target=upgrading)
    holder.start()
    engine = make_engine(url)
    _busy_timeout_ms(engine, 50)
    try:
        assert held.wait(5)
        threading.Timer(1.0, release.set).start()  # 20 busy timeouts
        assert ensure_current(engine, where="busy") == MIGRATIONS_HEAD
    finally:
        release.set()
        holder.join(10)
        engine.dispose()

    # A lock that is never let go still fails the open, once the wait is over.
    monkeypatch.setattr(migrate, "_UPGRADE_WAIT_SECONDS", 0.3)
    back_to_0003(url)
    held.clear()
    release.clear()
    holder = threading.Thread(target=upgrading)
    holder.start()
    engine = make_engine(url)
    _busy_timeout_ms(engine, 50)
    try:
        assert held.wait(5)
        with pytest.raises(Exception, match="database is locked"):
            ensure_current(engine, where="busy")
    finally:
        release.set()
        holder.join(10)
        engine.dispose()
