"""Items keyed by an integer run key instead of the text run id.

- ``batchor_runs.run_key`` (integer, not null, unique): existing runs are numbered 1, 2,
  ... in creation order; a new run takes one more than the largest key.
- ``batchor_items`` is rebuilt keyed by ``(run_key, seq)``; its item id constraint and
  both indexes lead with ``run_key`` too. Every row is copied as it is, joined with its
  run for the key.

The copy runs in the upgrade's one transaction (DDL is transactional on SQLite and
Postgres): a crash midway leaves the store at 0003. It rewrites every item, so on a
large store it takes a while (7 s for 1M items of short rows on SQLite, 6.5 s on
Postgres, on a 2-core machine; longer outputs take longer) and needs room for a second
copy of the items table until it commits (SQLite reuses the freed pages afterwards;
``VACUUM`` returns them). Other processes opening the store wait for it.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa
from alembic import op

from batchor_core.errors import StorageError

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

log = logging.getLogger("batchor.storage")
_TS = sa.DateTime(timezone=True)
# Measured on a 1M-item SQLite store (see the module docstring), rounded up.
_SECONDS_PER_MILLION = 10
# From this many items on, the upgrade says up front that it takes a while.
_LARGE = 100_000
_FINISHED = sa.text("finished_seq IS NOT NULL")
# Every column of the items table that is copied as it is (all but the run's id/key).
_COPIED = (
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


def _item_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("run_key", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("item_id", sa.String(512), nullable=False),
        sa.Column("payload_json", sa.Text, nullable=False),
        sa.Column("metadata_json", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("chunk_id", sa.String(64)),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("submissions", sa.Integer, nullable=False),
        sa.Column("free_resubmits", sa.Integer, nullable=False),
        sa.Column("not_before", _TS),
        sa.Column("output_json", sa.Text),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("input_tokens", sa.Integer),
        sa.Column("output_tokens", sa.Integer),
        sa.Column("cached_input_tokens", sa.Integer),
        sa.Column("reasoning_tokens", sa.Integer),
        sa.Column("finished_seq", sa.BigInteger),
    ]


def upgrade() -> None:
    """Number the runs, then rebuild the items table on the run key."""
    bind = op.get_bind()
    if "run_key" in {c["name"] for c in sa.inspect(bind).get_columns("batchor_items")}:
        return  # already rebuilt
    total = bind.exec_driver_sql("SELECT count(*) FROM batchor_items").scalar_one()
    (log.warning if total >= _LARGE else log.info)(
        "upgrading the batchor store to schema revision 0004: rewriting its %d items in "
        "one transaction (about %d s per million items); other processes wait for it",
        total,
        _SECONDS_PER_MILLION,
    )
    _number_runs(bind)
    if bind.dialect.name == "postgresql":
        _rebuild_items_postgres()
    else:
        _rebuild_items_sqlite()
    op.create_index("ix_batchor_items_chunk", "batchor_items", ["run_key", "chunk_id"])
    op.create_index(
        "ix_batchor_items_finished",
        "batchor_items",
        ["run_key", "finished_seq"],
        sqlite_where=_FINISHED,
        postgresql_where=_FINISHED,
    )


def _number_runs(bind: sa.Connection) -> None:
    op.add_column("batchor_runs", sa.Column("run_key", sa.Integer))
    runs = sa.table(
        "batchor_runs", sa.column("run_id"), sa.column("run_key"), sa.column("created_at")
    )
    ids = bind.execute(
        sa.select(runs.c.run_id).order_by(runs.c.created_at, runs.c.run_id)
    ).scalars()
    keyed = [{"b_id": run_id, "b_key": n} for n, run_id in enumerate(ids, start=1)]
    if keyed:
        bind.execute(
            runs.update()
            .where(runs.c.run_id == sa.bindparam("b_id"))
            .values(run_key=sa.bindparam("b_key")),
            keyed,
        )
    with op.batch_alter_table("batchor_runs") as batch:  # SQLite: a copy of the small table
        batch.alter_column("run_key", existing_type=sa.Integer, nullable=False)
    op.create_index("ux_batchor_runs_run_key", "batchor_runs", ["run_key"], unique=True)


def _copy_items(source: str, target: str) -> None:
    """Every item of ``source`` into ``target``, with its run's key, in key order."""
    columns = ", ".join(_COPIED)
    picked = ", ".join(f"i.{c}" for c in _COPIED)
    bind = op.get_bind()
    copied = bind.exec_driver_sql(
        f"INSERT INTO {target} (run_key, {columns}) "
        f"SELECT r.run_key, {picked} FROM {source} i "
        "JOIN batchor_runs r ON r.run_id = i.run_id ORDER BY r.run_key, i.seq"
    ).rowcount
    total = bind.exec_driver_sql(f"SELECT count(*) FROM {source}").scalar_one()
    if copied != total:  # items of a run that is not there: keep the store at 0003
        raise StorageError(
            f"batchor_items holds {total - copied} items of runs missing from "
            "batchor_runs; the store was not upgraded (it stays at revision 0003)"
        )


def _rebuild_items_sqlite() -> None:
    # SQLite cannot change a primary key in place: a new table, the rows, then its name.
    op.create_table(
        "batchor_items_0004",
        *_item_columns(),
        sa.UniqueConstraint("run_key", "item_id", name="uq_batchor_items_item_id"),
    )
    _copy_items("batchor_items", "batchor_items_0004")
    op.drop_table("batchor_items")  # and its indexes
    op.rename_table("batchor_items_0004", "batchor_items")


def _rebuild_items_postgres() -> None:
    # The old table's constraints and indexes hold the names the new ones take: drop them
    # first, then load the new table bare and build its key and indexes in bulk.
    op.drop_index("ix_batchor_items_finished", table_name="batchor_items")
    op.drop_index("ix_batchor_items_chunk", table_name="batchor_items")
    op.drop_constraint("uq_batchor_items_item_id", "batchor_items", type_="unique")
    op.drop_constraint("batchor_items_pkey", "batchor_items", type_="primary")
    op.rename_table("batchor_items", "batchor_items_0003")
    op.create_table(
        "batchor_items",
        *(
            sa.Column(c.name, c.type, nullable=False if c.primary_key else c.nullable)
            for c in _item_columns()
        ),
    )
    _copy_items("batchor_items_0003", "batchor_items")
    op.drop_table("batchor_items_0003")
    op.create_primary_key("batchor_items_pkey", "batchor_items", ["run_key", "seq"])
    op.create_unique_constraint("uq_batchor_items_item_id", "batchor_items", ["run_key", "item_id"])
