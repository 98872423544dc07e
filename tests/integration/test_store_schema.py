"""Store schema: versions, Alembic upgrades, concurrent opens, races, SQLite file safety
(issue 8, part 5)."""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import threading
import uuid
from collections.abc import Iterator
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

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    """A new, empty Postgres database of its own (dropped afterwards)."""
    if not POSTGRES_URL:
        pytest.skip("BATCHOR_TEST_POSTGRES_URL not set")
    name = f"batchor_t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", postgres_param()])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to a store that does not exist yet: a new SQLite file or Postgres database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    else:
        yield request.getfixturevalue("fresh_postgres")


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


def _finished_write(store: SQLStateStore) -> None:
    from batchor_core.jobspec import job_spec
    from batchor_core.ports import RunRecord
    from batchor_core.testing import FakeBatchProvider

    spec, fingerprint = job_spec(_job(), FakeBatchProvider())
    now = _now()
    store.create_run(
        RunRecord(
            run_id="r",
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
        _back_to_0003(fresh_url)
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


# ---------------------------------------------------------------------------- revision 0004

# The items table as batchor wrote it at revision 0003 (0001's, plus 0003's two columns),
# to take a store back to 0003; a test checks it against what the 0003 scripts build.
_ITEM_FIELDS = (
    "seq",
    "item_id",
    "payload_json",
    "metadata_json",
    "status",
    "chunk_id",
    "attempts",
    "submissions",
    "free_resubmits",
    "not_before",
    "output_json",
    "error_code",
    "error_message",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "finished_seq",
)


def _items_0003() -> Any:
    import sqlalchemy as sa

    ts = sa.DateTime(timezone=True)
    finished = sa.text("finished_seq IS NOT NULL")
    return sa.Table(
        "batchor_items",
        sa.MetaData(),
        sa.Column("run_id", sa.String(512), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("item_id", sa.String(512), nullable=False),
        sa.Column("payload_json", sa.Text, nullable=False),
        sa.Column("metadata_json", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("chunk_id", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("submissions", sa.Integer, nullable=False),
        sa.Column("free_resubmits", sa.Integer, nullable=False),
        sa.Column("not_before", ts),
        sa.Column("output_json", sa.Text),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("input_tokens", sa.Integer),
        sa.Column("output_tokens", sa.Integer),
        sa.Column("finished_seq", sa.BigInteger),
        sa.Column("cached_input_tokens", sa.Integer),
        sa.Column("reasoning_tokens", sa.Integer),
        sa.UniqueConstraint("run_id", "item_id", name="uq_batchor_items_item_id"),
        sa.Index("ix_batchor_items_chunk", "run_id", "chunk_id"),
        sa.Index(
            "ix_batchor_items_finished",
            "run_id",
            "finished_seq",
            sqlite_where=finished,
            postgresql_where=finished,
        ),
    )


def _back_to_0003(url: str) -> None:
    """Rewrite a head store as batchor wrote it at revision 0003, rows and all."""
    fields = ", ".join(_ITEM_FIELDS)
    picked = ", ".join(f"h.{f}" for f in _ITEM_FIELDS)
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_batchor_items_chunk"))
        conn.execute(text("DROP INDEX ix_batchor_items_finished"))
        conn.execute(text("ALTER TABLE batchor_items RENAME TO batchor_items_head"))
        if conn.dialect.name == "postgresql":  # their index names are the old table's
            conn.execute(text("ALTER TABLE batchor_items_head DROP CONSTRAINT batchor_items_pkey"))
            conn.execute(
                text("ALTER TABLE batchor_items_head DROP CONSTRAINT uq_batchor_items_item_id")
            )
        _items_0003().create(conn)
        conn.execute(
            text(
                f"INSERT INTO batchor_items (run_id, {fields}) SELECT r.run_id, {picked} "
                "FROM batchor_items_head h JOIN batchor_runs r ON r.run_key = h.run_key"
            )
        )
        conn.execute(text("DROP TABLE batchor_items_head"))
        conn.execute(text("DROP INDEX ux_batchor_runs_run_key"))
        conn.execute(text("ALTER TABLE batchor_runs DROP COLUMN run_key"))
        conn.execute(text(f"UPDATE {VERSION_TABLE} SET version_num = '0003'"))
    engine.dispose()


def _dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of runs, chunks and items (items by run id), in a stable order."""
    from sqlalchemy import inspect

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            keyed = "run_key" in {c["name"] for c in inspect(conn).get_columns("batchor_items")}
            on = "r.run_key = i.run_key" if keyed else "r.run_id = i.run_id"
            fields = ", ".join(f"i.{f}" for f in _ITEM_FIELDS)
            run_columns = ", ".join(
                c["name"]
                for c in inspect(conn).get_columns("batchor_runs")
                if c["name"] != "run_key"
            )
            return {
                "items": list(
                    conn.execute(
                        text(
                            f"SELECT r.run_id, {fields} FROM batchor_items i "
                            f"JOIN batchor_runs r ON {on} ORDER BY r.run_id, i.seq"
                        )
                    ).all()
                ),
                "runs": list(
                    conn.execute(
                        text(f"SELECT {run_columns} FROM batchor_runs ORDER BY run_id")
                    ).all()
                ),
                "chunks": list(
                    conn.execute(
                        text("SELECT * FROM batchor_chunks ORDER BY run_id, chunk_id")
                    ).all()
                ),
            }
    finally:
        engine.dispose()


def _shape(url: str) -> dict[str, Any]:
    """Columns, keys and indexes of every batchor table, as SQLAlchemy reflects them."""
    from sqlalchemy import inspect

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            found = inspect(conn)
            return {
                name: (
                    sorted(
                        (c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(name)
                    ),
                    found.get_pk_constraint(name)["constrained_columns"],
                    sorted(
                        (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                        for i in found.get_indexes(name)
                    ),
                    sorted(
                        (u["name"], tuple(u["column_names"]))
                        for u in found.get_unique_constraints(name)
                    ),
                )
                for name in sorted(found.get_table_names())
            }
    finally:
        engine.dispose()


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
    _back_to_0003(ours)
    assert _shape(ours) == _shape(reference)


def test_a_0003_store_with_runs_in_every_state_is_upgraded_row_for_row_and_goes_on(
    fresh_url: str, tmp_path: Path
) -> None:
    from batchor_core import ChunkPolicy
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
        rows = _dump(fresh_url)
        assert {r[0] for r in rows["items"]} == {done_id, live_id, idle_id}
        assert any(r[5] == "retry" or r[8] > 1 for r in rows["items"])  # a retried item
        _back_to_0003(fresh_url)
        assert _dump(fresh_url) == rows

        with runner() as new:  # upgraded on open
            assert new.storage.schema_revision == MIGRATIONS_HEAD
            assert _dump(fresh_url) == rows
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
    _back_to_0003(fresh_url)
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
    before = _shape(fresh_url)
    with pytest.raises(StorageError, match="stays at revision 0003"):
        _open(fresh_url)
    assert _shape(fresh_url) == before
    engine = create_engine(fresh_url)
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar() == "0003"
    engine.dispose()


def test_runs_created_at_once_get_distinct_keys(fresh_url: str) -> None:
    from batchor_core.jobspec import job_spec
    from batchor_core.ports import RunRecord
    from batchor_core.testing import FakeBatchProvider

    spec, fingerprint = job_spec(_job(), FakeBatchProvider())
    stores = [_open(fresh_url) for _ in range(4)]
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def create(store: SQLStateStore, n: int) -> None:
        now = _now()
        record = RunRecord(
            run_id=f"run-{n}",
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
