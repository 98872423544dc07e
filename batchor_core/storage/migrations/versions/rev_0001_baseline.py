"""Baseline: the schema of batchor 0.1 (runs, chunks, items, collection markers).

Written out in full, never derived from ``schema.py``, so it stays what it was. It only
creates what is missing: a store made by the release before migrations (schema_version 1
in ``batchor_meta``, no ``batchor_collections``) gains the collections table and is then
at this revision, with its rows untouched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the tables and indexes that do not exist yet."""
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "batchor_meta" not in existing:
        meta = op.create_table(
            "batchor_meta",
            sa.Column("key", sa.String(64), primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
        )
        # Read by the release before migrations, which refuses anything but 1.
        op.bulk_insert(meta, [{"key": "schema_version", "value": "1"}])
    if "batchor_runs" not in existing:
        _create_runs()
    if "batchor_collections" not in existing:
        op.create_table(
            "batchor_collections",
            sa.Column("run_id", sa.String(512), primary_key=True),
            sa.Column("collected_by", sa.String(512), nullable=False),
            sa.Column("collected_at", _TS, nullable=False),
        )
    if "batchor_chunks" not in existing:
        _create_chunks()
    if "batchor_items" not in existing:
        _create_items()


def _create_runs() -> None:
    counters = (
        "total_items",
        "completed_items",
        "failed_items",
        "cancelled_items",
        "input_tokens",
        "output_tokens",
    )
    op.create_table(
        "batchor_runs",
        sa.Column("run_id", sa.String(512), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("status_reason", sa.Text),
        sa.Column("job_spec", sa.Text, nullable=False),
        sa.Column("job_fingerprint", sa.String(64), nullable=False),
        sa.Column("source_identity", sa.Text),
        sa.Column("source_checkpoint", sa.Text),
        sa.Column("ingest_complete", sa.Boolean, nullable=False),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in counters),
        sa.Column("next_finished_seq", sa.BigInteger, nullable=False),
        sa.Column("owner", sa.Text),
        sa.Column("retention", sa.Text),
        sa.Column("lease_owner", sa.String(128)),
        sa.Column("lease_expires_at", _TS),
        sa.Column("lease_token", sa.BigInteger, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )


def _create_chunks() -> None:
    op.create_table(
        "batchor_chunks",
        sa.Column("run_id", sa.String(512), primary_key=True),
        sa.Column("chunk_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request_count", sa.Integer, nullable=False),
        sa.Column("byte_count", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64)),
        sa.Column("file_id", sa.String(128)),
        sa.Column("batch_id", sa.String(128)),
        sa.Column("provider_status", sa.String(32)),
        sa.Column("not_before", _TS),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
    )
    op.create_index("ix_batchor_chunks_state", "batchor_chunks", ["run_id", "state"])


def _create_items() -> None:
    op.create_table(
        "batchor_items",
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
        sa.Column("not_before", _TS),
        sa.Column("output_json", sa.Text),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.Text),
        sa.Column("input_tokens", sa.Integer),
        sa.Column("output_tokens", sa.Integer),
        sa.Column("finished_seq", sa.BigInteger),
        sa.UniqueConstraint("run_id", "item_id", name="uq_batchor_items_item_id"),
    )
    op.create_index("ix_batchor_items_chunk", "batchor_items", ["run_id", "chunk_id"])
    finished = sa.text("finished_seq IS NOT NULL")
    op.create_index(
        "ix_batchor_items_finished",
        "batchor_items",
        ["run_id", "finished_seq"],
        sqlite_where=finished,
        postgresql_where=finished,
    )
