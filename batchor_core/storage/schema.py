"""Table definitions (SQLAlchemy Core) shared by every SQL dialect.

Item status values stored here are finer than the public :class:`ItemStatus`:
``queued`` (its request line sits in a live chunk) and ``retry`` (waiting to be put in a
new chunk) both read as ``pending``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    event,
    select,
)

__all__ = [
    "SCHEMA_VERSION",
    "chunks",
    "collections",
    "items",
    "meta",
    "metadata",
    "run_key_of",
    "runs",
]

# Kept in batchor_meta for the release before migrations, which refuses anything but 1;
# the schema revision itself is Alembic's (see batchor_core.storage.migrate).
SCHEMA_VERSION = 1

metadata = MetaData()

meta = Table(
    "batchor_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

runs = Table(
    "batchor_runs",
    metadata,
    Column("run_id", String(512), primary_key=True),
    # The run's short key in the items table (revision 0004): one more than the largest
    # key so far, assigned when the run is created and never changed.
    Column("run_key", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", Text),
    Column("job_spec", Text, nullable=False),
    Column("job_fingerprint", String(64), nullable=False),
    Column("source_identity", Text),
    Column("source_checkpoint", Text),
    Column("ingest_complete", Boolean, nullable=False, default=False),
    Column("total_items", BigInteger, nullable=False, default=0),
    Column("completed_items", BigInteger, nullable=False, default=0),
    Column("failed_items", BigInteger, nullable=False, default=0),
    Column("cancelled_items", BigInteger, nullable=False, default=0),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("cached_input_tokens", BigInteger, nullable=False, default=0, server_default="0"),
    Column("reasoning_tokens", BigInteger, nullable=False, default=0, server_default="0"),
    # Budgets (JSON: max_cost_usd): outside the job's fingerprint, so they can be raised.
    Column("limits", Text),
    # Why a running run is not submitting (waiting for enqueued-token budget), or NULL.
    Column("waiting_reason", Text),
    # Batches rejected in a row with token_limit_exceeded: halves the run's share (h11).
    Column("token_limit_strikes", Integer, nullable=False, default=0, server_default="0"),
    Column("next_finished_seq", BigInteger, nullable=False, default=1),
    Column("owner", Text),
    # What was exported and pruned, and when (JSON): retention is deliberate and recorded.
    Column("retention", Text),
    # Lease columns: one process at a time advances a run (fencing token on every write).
    Column("lease_owner", String(128)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("lease_token", BigInteger, nullable=False, default=0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ux_batchor_runs_run_key", "run_key", unique=True),
)

# Who turned a finished run into its one downstream result (for example the Dagster
# materialization that collected it). A row of its own, inserted once, so two collectors
# racing for the same run agree on a single winner (the primary key decides).
collections = Table(
    "batchor_collections",
    metadata,
    Column("run_id", String(512), primary_key=True),
    Column("collected_by", String(512), nullable=False),
    Column("collected_at", DateTime(timezone=True), nullable=False),
)

chunks = Table(
    "batchor_chunks",
    metadata,
    Column("run_id", String(512), primary_key=True),
    Column("chunk_id", String(64), primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("request_count", Integer, nullable=False),
    Column("byte_count", BigInteger, nullable=False),
    Column("sha256", String(64)),
    Column("file_id", String(128)),
    Column("batch_id", String(128)),
    Column("provider_status", String(32)),
    Column("not_before", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Start of the current streak of provider errors: bounds retries per chunk (h1).
    Column("first_error_at", DateTime(timezone=True)),
    # Estimated input tokens of the chunk's requests, and their model: the enqueued-token
    # budget sums them over chunks in flight of every run (h11).
    Column("est_tokens", BigInteger, nullable=False, default=0, server_default="0"),
    Column("model", String(256)),
    Index("ix_batchor_chunks_state", "run_id", "state"),
    Index("ix_batchor_chunks_model_state", "model", "state"),
)

# Keyed by the run's integer key, not its run id (up to 512 characters): the key and
# every index below repeat it per item, so a short key makes inserts, outcome updates
# and the store's bytes per item cheaper (revision 0004).
items = Table(
    "batchor_items",
    metadata,
    Column("run_key", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("item_id", String(512), nullable=False),
    Column("payload_json", Text, nullable=False),
    Column("metadata_json", Text),
    Column("status", String(16), nullable=False),
    Column("chunk_id", String(64)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("submissions", Integer, nullable=False, default=0),
    Column("free_resubmits", Integer, nullable=False, default=0),
    Column("not_before", DateTime(timezone=True)),
    Column("output_json", Text),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("input_tokens", Integer),
    Column("output_tokens", Integer),
    Column("cached_input_tokens", Integer),
    Column("reasoning_tokens", Integer),
    Column("finished_seq", BigInteger),
    UniqueConstraint("run_key", "item_id", name="uq_batchor_items_item_id"),
    # Per-chunk lookups: collecting a batch, and finding items waiting for a retry.
    Index("ix_batchor_items_chunk", "run_key", "chunk_id"),
)

# The result cursor. Partial, so ingest (finished_seq still NULL) does not pay for it.
_finished = Index(
    "ix_batchor_items_finished",
    items.c.run_key,
    items.c.finished_seq,
    sqlite_where=items.c.finished_seq.is_not(None),
)


@event.listens_for(_finished, "before_create")
def _postgres_predicate(index: Index, connection: Connection, **_kw: Any) -> None:
    # Postgres' copy of the predicate is added when the index is created there: naming
    # ``postgresql_where`` above would make SQLAlchemy load its Postgres dialect (with
    # asyncio and every Postgres driver module: 2 MB and 0.15 s) in every SQLite process.
    if connection.dialect.name == "postgresql":
        index.dialect_kwargs["postgresql_where"] = items.c.finished_seq.is_not(None)


def run_key_of(run_id: Any) -> Any:
    """The run's key, as a scalar subquery of ``run_id`` (a value or a bind).

    Items queries name their run through it, so the key is read in the same statement
    (and transaction) as the items: nothing caches a run id's key across statements.
    """
    return select(runs.c.run_key).where(runs.c.run_id == run_id).scalar_subquery()
