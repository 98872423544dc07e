"""Chunks remember when their current streak of provider errors began.

``batchor_chunks.first_error_at`` (nullable) bounds how long a chunk's provider errors are
retried before the run pauses with a reason (see :mod:`batchor_core.stalls`). Existing
chunks start with no streak.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the column unless it is there already."""
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("batchor_chunks")}
    if "first_error_at" not in columns:
        with op.batch_alter_table("batchor_chunks") as batch:
            batch.add_column(sa.Column("first_error_at", sa.DateTime(timezone=True)))
