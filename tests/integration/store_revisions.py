"""Stores as an older batchor wrote them, made from a store at the head revision."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, text

from batchor_core.storage.migrate import VERSION_TABLE

__all__ = ["ITEM_FIELDS", "back_to_0003", "dump", "shape"]

# The items table as batchor wrote it at revision 0003 (0001's, plus 0003's two columns),
# to take a store back to 0003; a test checks it against what the 0003 scripts build.
ITEM_FIELDS = (
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


def back_to_0003(url: str) -> None:
    """Rewrite a head store as batchor wrote it at revision 0003, rows and all."""
    fields = ", ".join(ITEM_FIELDS)
    picked = ", ".join(f"h.{f}" for f in ITEM_FIELDS)
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


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of runs, chunks and items (items by run id), in a stable order."""
    from sqlalchemy import inspect

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            keyed = "run_key" in {c["name"] for c in inspect(conn).get_columns("batchor_items")}
            on = "r.run_key = i.run_key" if keyed else "r.run_id = i.run_id"
            fields = ", ".join(f"i.{f}" for f in ITEM_FIELDS)
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


def shape(url: str) -> dict[str, Any]:
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
