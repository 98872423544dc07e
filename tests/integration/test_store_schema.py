"""Store schema: versions, Alembic upgrades, concurrent opens, races, SQLite file safety
(issue 8, part 5)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ConfigurationError,
    JobChangedError,
    LocalArtifactStore,
    OpenAIProviderConfig,
    PostgresStorage,
    RunStatus,
    SQLiteStorage,
)
from batchor_core.storage import SQLStateStore, upgrade
from batchor_core.storage.migrate import MIGRATIONS, VERSION_TABLE, ensure_current
from batchor_core.storage.schema import metadata
from tests.conftest import POSTGRES_URL, postgres_param
from tests.integration.store_revisions import back_to_0003

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _open(url: str) -> SQLStateStore:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return SQLiteStorage(str(parsed.database))
    return PostgresStorage(url)


def _job(tag: str = "a") -> BatchJob:
    return BatchJob(model=f"gpt-4o-{tag}", build_prompt=lambda item: f"t: {item.payload['t']}")


def _finished_run(url: str, tmp_path: Path, emulator: Any, run_id: str = "kept") -> None:
    with BatchRunner(
        storage=_open(url),
        artifacts=LocalArtifactStore(tmp_path / "artifacts"),
        provider=OpenAIProviderConfig(api_key="sk-test", base_url=emulator.base_url),
    ) as runner:
        items = [BatchItem(f"i{n}", {"t": n}, metadata={"n": n}) for n in range(5)]
        run = runner.start(_job(), items=items, run_id=run_id)
        assert run.wait(timeout=30, poll_interval=0.01).status is RunStatus.COMPLETED


def _results(url: str, run_id: str = "kept") -> list[tuple[str, str, object]]:
    with BatchRunner(storage=_open(url), provider=OpenAIProviderConfig(api_key="sk-x")) as runner:
        return sorted(
            (r.item_id, r.status.value, r.output) for r in runner.get_run(run_id).results()
        )


# ---------------------------------------------------------------------------- versions


def test_a_new_store_records_its_schema_revision(fresh_url: str) -> None:
    store = _open(fresh_url)
    try:
        assert store.schema_revision == MIGRATIONS_HEAD
        with store._engine.connect() as conn:
            assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all() == [
                (MIGRATIONS_HEAD,)
            ]
    finally:
        store.close()
    assert upgrade(fresh_url) == MIGRATIONS_HEAD  # the explicit form is a no-op now


def test_migrations_build_exactly_the_schema_the_code_uses(fresh_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = create_engine(fresh_url)
    try:
        # The scripts from an empty database (a new store is built from schema.py).
        assert ensure_current(engine, where="test", create_fresh=False) == MIGRATIONS_HEAD
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    ours = [d for d in diffs if not (d[0] == "remove_table" and d[1].name == VERSION_TABLE)]
    assert ours == []


def test_a_new_store_gets_the_partial_result_index_on_every_dialect(fresh_url: str) -> None:
    # schema.py names the Postgres predicate only when the index is created there (so
    # SQLite processes never load the Postgres dialect): the index must still be partial.
    store = _open(fresh_url)
    try:
        with store._engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                sql = "SELECT indexdef FROM pg_indexes WHERE indexname = :name"
            else:
                sql = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
            found = conn.execute(text(sql), {"name": "ix_batchor_items_finished"}).scalar_one()
    finally:
        store.close()
    assert "WHERE" in found.upper() and "finished_seq IS NOT NULL" in found


@pytest.mark.parametrize("how", ["on open", "explicitly"])
def test_a_store_of_the_release_before_migrations_is_upgraded_in_place(
    fresh_url: str, tmp_path: Path, emulator: Any, how: str
) -> None:
    _finished_run(fresh_url, tmp_path, emulator)
    before = _results(fresh_url)
    engine = create_engine(fresh_url)
    with engine.begin() as conn:  # what the previous release left behind
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
        conn.execute(text("DROP TABLE batchor_collections"))
    engine.dispose()

    if how == "explicitly":
        assert upgrade(fresh_url) == MIGRATIONS_HEAD
    store = _open(fresh_url)
    try:
        assert store.schema_revision == MIGRATIONS_HEAD
        assert store.mark_collected("kept", "asset-1", now=_now()) == "asset-1"
    finally:
        store.close()
    assert _results(fresh_url) == before and len(before) == 5


def test_an_unversioned_store_of_another_schema_version_is_refused(fresh_url: str) -> None:
    _open(fresh_url).close()
    engine = create_engine(fresh_url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
        conn.execute(text("UPDATE batchor_meta SET value = '7' WHERE key = 'schema_version'"))
    engine.dispose()
    with pytest.raises(ConfigurationError, match="schema version 7 but no migration history"):
        _open(fresh_url)


_NEXT_REVISION = '''
"""Test-only revision: a new nullable column, backfilled from existing rows."""

import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = "{down}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batchor_items", sa.Column("note", sa.Text))
    op.execute("UPDATE batchor_items SET note = 'seen ' || item_id")
'''


def test_a_migration_to_the_next_revision_keeps_every_row(
    fresh_url: str, tmp_path: Path, emulator: Any
) -> None:
    _finished_run(fresh_url, tmp_path, emulator)
    before = _results(fresh_url)
    scripts = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    nxt = f"{int(MIGRATIONS_HEAD) + 1:04d}"
    (scripts / "versions" / f"rev_{nxt}_test_note.py").write_text(
        _NEXT_REVISION.format(rev=nxt, down=MIGRATIONS_HEAD)
    )
    engine = create_engine(fresh_url)
    try:
        assert ensure_current(engine, where="test", directory=scripts) == nxt
        with engine.connect() as conn:
            notes = conn.execute(text("SELECT item_id, note FROM batchor_items")).all()
    finally:
        engine.dispose()
    assert sorted(notes) == [(f"i{n}", f"seen i{n}") for n in range(5)]
    # This batchor does not know revision nxt: the store is refused, not misread.
    with pytest.raises(ConfigurationError, match=f"schema revision {nxt}, newer than this"):
        _open(fresh_url)
    # Rows kept: read them with the newer schema's store (upgrade is a no-op there).
    engine = create_engine(fresh_url)
    try:
        with engine.connect() as conn:
            kept = conn.execute(
                text("SELECT item_id, status FROM batchor_items ORDER BY item_id")
            ).all()
    finally:
        engine.dispose()
    assert [(i, s) for i, s, _ in before] == [tuple(r) for r in kept]


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _head() -> str:
    from batchor_core.storage.migrate import known_revisions

    return known_revisions()[-1]


MIGRATIONS_HEAD = _head()


def test_alembic_agrees_on_the_head_revision() -> None:
    from alembic.script import ScriptDirectory

    assert ScriptDirectory(str(MIGRATIONS)).get_heads() == [MIGRATIONS_HEAD]


# ---------------------------------------------------------------------------- races


def test_twelve_processes_open_one_fresh_store_at_once(fresh_url: str) -> None:
    import multiprocessing

    from tests.integration import schema_worker

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.integration.schema_worker", "alembic.command"])
    barrier = ctx.Barrier(12)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=schema_worker.open_store, args=(fresh_url, barrier, results))
        for _ in range(12)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == [MIGRATIONS_HEAD] * 12
    assert [p.exitcode for p in procs] == [0] * 12


@pytest.mark.parametrize("kind", ["sqlite", postgres_param()])
def test_two_starts_of_one_run_id_with_different_jobs_race_to_job_changed(
    kind: str, tmp_path: Path, emulator: Any
) -> None:
    def runner(owner: str) -> BatchRunner:
        store: SQLStateStore = (
            PostgresStorage(str(POSTGRES_URL))
            if kind == "postgres"
            else SQLiteStorage(tmp_path / "race.sqlite3")
        )
        return BatchRunner(
            storage=store,
            artifacts=LocalArtifactStore(tmp_path / owner),
            provider=OpenAIProviderConfig(api_key="sk-test", base_url=emulator.base_url),
            owner_id=owner,
        )

    runners = [runner("p1"), runner("p2")]
    try:
        for round_no in range(10):
            outcomes = _race(runners, f"race-{uuid.uuid4().hex[:10]}-{round_no}")
            assert sorted(outcomes) == ["job changed", "started"], outcomes
    finally:
        for r in runners:
            r.close()


def _race(runners: list[BatchRunner], run_id: str) -> list[str]:
    """Start ``run_id`` from both runners at once, with different jobs."""
    barrier = threading.Barrier(len(runners))
    outcomes: list[str] = []

    def start(r: BatchRunner, tag: str) -> None:
        barrier.wait()
        try:
            r.start(_job(tag), items=[], run_id=run_id)
            outcomes.append("started")
        except JobChangedError:
            outcomes.append("job changed")
        except Exception as exc:  # what the test exists to catch
            outcomes.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=start, args=(r, f"job{n}")) for n, r in enumerate(runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcomes


# ---------------------------------------------------------------------------- sqlite files


def test_sqlite_wal_and_shm_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which made them 0644
    try:
        store = SQLiteStorage(tmp_path / "db" / "state.sqlite3")
        _finished_write(store)
        files = sorted((tmp_path / "db").iterdir())
        names = [p.name for p in files]
        assert names == ["state.sqlite3", "state.sqlite3-shm", "state.sqlite3-wal"]
        assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}
        store.close()
    finally:
        os.umask(old)


def _finished_write(store: SQLStateStore, run_id: str = "r") -> None:
    store.create_run(_new_record(run_id))


def _new_record(run_id: str) -> Any:
    """A new running run's record, as the runner creates one (no items yet)."""
    from batchor_core.jobspec import job_spec
    from batchor_core.ports import RunRecord
    from batchor_core.testing import FakeBatchProvider

    spec, fingerprint = job_spec(_job(), FakeBatchProvider())
    now = _now()
    return RunRecord(
        run_id=run_id,
        status=RunStatus.RUNNING,
        status_reason=None,
        job_spec=spec,
        job_fingerprint=fingerprint,
        source_identity=None,
        source_checkpoint=None,
        ingest_complete=False,
        total_items=0,
        completed_items=0,
        failed_items=0,
        cancelled_items=0,
        input_tokens=0,
        output_tokens=0,
        owner=None,
        created_at=now,
        updated_at=now,
    )


def test_an_existing_store_file_keeps_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    SQLiteStorage(path).close()
    os.chmod(path, 0o640)  # the owner chose this; batchor does not silently change it
    SQLiteStorage(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(ConfigurationError, match=r"something else \(tables: customers\)"):
        SQLiteStorage(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite3"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a database, just some notes that are long enough to look like one\n" * 3)
    with pytest.raises(ConfigurationError, match="not a batchor store"):
        SQLiteStorage(path)


# Columns and index revision 0003 added (issue 11), to take a store back to 0002.
_REV_0003 = {
    "batchor_runs": [
        "cached_input_tokens",
        "reasoning_tokens",
        "limits",
        "waiting_reason",
        "token_limit_strikes",
    ],
    "batchor_chunks": ["est_tokens", "model"],
    "batchor_items": ["cached_input_tokens", "reasoning_tokens"],
}


def test_a_0002_store_with_a_run_in_flight_is_upgraded_and_the_run_finishes(
    fresh_url: str, tmp_path: Path
) -> None:
    from batchor_core import ChunkPolicy, EnqueueLimit
    from batchor_core.testing import OpenAIEmulator

    job = BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda item: f"t: {item.payload['t']}",
        chunk_policy=ChunkPolicy(max_requests=3),
    )
    items = [BatchItem(f"i{n}", {"t": n}) for n in range(9)]
    with OpenAIEmulator(processing="stepwise", in_progress_polls=2, seed=5) as emu:

        def runner(**config: Any) -> BatchRunner:
            return BatchRunner(
                storage=_open(fresh_url),
                artifacts=LocalArtifactStore(tmp_path / "artifacts"),
                provider=OpenAIProviderConfig(api_key="sk-test", base_url=emu.base_url, **config),
                create_grace_seconds=0.0,
            )

        with runner() as old:  # batches in flight, some results already recorded
            run = old.start(job, items=items, run_id="live")
            while run.summary().completed_items == 0:
                run.refresh()
            before = run.summary()
        assert before.status is RunStatus.RUNNING and before.batches_in_flight > 0
        # Take the store back to what batchor wrote at revision 0002.
        back_to_0003(fresh_url)
        engine = create_engine(fresh_url)
        with engine.begin() as conn:
            conn.execute(text("DROP INDEX ix_batchor_chunks_model_state"))
            for table, columns in _REV_0003.items():
                for column in columns:
                    conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
            conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0002'"))
        engine.dispose()
        # Opened by this batchor (with a budget for the model now): upgraded on open.
        with runner(enqueue_limits={"gpt-4o-mini": EnqueueLimit(tokens=10_000)}) as new:
            assert new.storage.schema_revision == MIGRATIONS_HEAD
            run = new.get_run("live")
            after = run.summary()
            assert (after.status, after.total_items, after.completed_items) == (
                before.status,
                9,
                before.completed_items,
            )
            assert after.usage.input_tokens == before.usage.input_tokens > 0
            assert after.usage.output_tokens == before.usage.output_tokens
            assert (after.usage.cached_input_tokens, after.usage.reasoning_tokens) == (0, 0)
            assert after.max_cost_usd is None and after.waiting_reason is None
            assert after.batch_ids == before.batch_ids
            old_chunks = new.storage.list_chunks("live")
            assert all(c.est_tokens == 0 and c.model is None for c in old_chunks)
            done = [r for r in run.results() if r.usage is not None]
            assert done and all(r.usage.cached_input_tokens == 0 for r in done if r.usage)
            # The run goes on: its old batches (no estimate: outside the budget) are
            # collected, and it finishes.
            final = run.wait(timeout=60, poll_interval=0.01)
            assert final.status is RunStatus.COMPLETED and final.completed_items == 9
            assert new.storage.in_flight_tokens("gpt-4o-mini") == 0


@pytest.mark.parametrize("directory", ["runs?v=2", "p%41th", "a#b"])
def test_a_sqlite_path_with_url_characters_opens_that_very_file(
    tmp_path: Path, directory: str
) -> None:
    """The path becomes a SQLAlchemy URL: ``?`` started a query string there (the store
    went to a file named after the part before it, shared by every such directory) and
    ``%41`` was decoded (another directory's file)."""
    path = tmp_path / directory / "state.sqlite3"
    store = SQLiteStorage(path)
    try:
        _finished_write(store)
        with store._engine.connect() as conn:
            files = {r[1]: r[2] for r in conn.exec_driver_sql("PRAGMA database_list")}
        assert files["main"] == str(path)
    finally:
        store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [directory]
