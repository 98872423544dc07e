"""Enqueued-token budgets, detailed usage and cost caps (issue 11).

- ``batchor_runs``: ``cached_input_tokens`` and ``reasoning_tokens`` (run totals),
  ``limits`` (JSON budgets such as ``max_cost_usd``, outside the job's fingerprint),
  ``waiting_reason`` (why a running run is not submitting) and ``token_limit_strikes``.
- ``batchor_chunks``: ``est_tokens`` (estimated input tokens) and ``model``, indexed by
  ``(model, state)`` for the budget's sum over chunks in flight.
- ``batchor_items``: ``cached_input_tokens`` and ``reasoning_tokens``.

Existing rows start at zero or NULL: chunks of older runs count 0 tokens in the budget.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ZERO = sa.text("0")


def _columns(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def upgrade() -> None:
    """Add each column and the index unless it is there already."""
    wanted: dict[str, list[sa.Column[object]]] = {
        "batchor_runs": [
            sa.Column("cached_input_tokens", sa.BigInteger, nullable=False, server_default=_ZERO),
            sa.Column("reasoning_tokens", sa.BigInteger, nullable=False, server_default=_ZERO),
            sa.Column("limits", sa.Text),
            sa.Column("waiting_reason", sa.Text),
            sa.Column("token_limit_strikes", sa.Integer, nullable=False, server_default=_ZERO),
        ],
        "batchor_chunks": [
            sa.Column("est_tokens", sa.BigInteger, nullable=False, server_default=_ZERO),
            sa.Column("model", sa.String(256)),
        ],
        "batchor_items": [
            sa.Column("cached_input_tokens", sa.Integer),
            sa.Column("reasoning_tokens", sa.Integer),
        ],
    }
    for table, columns in wanted.items():
        present = _columns(table)
        missing = [c for c in columns if c.name not in present]
        if missing:
            with op.batch_alter_table(table) as batch:
                for column in missing:
                    batch.add_column(column)
    indexes = {i["name"] for i in sa.inspect(op.get_bind()).get_indexes("batchor_chunks")}
    if "ix_batchor_chunks_model_state" not in indexes:
        op.create_index("ix_batchor_chunks_model_state", "batchor_chunks", ["model", "state"])
