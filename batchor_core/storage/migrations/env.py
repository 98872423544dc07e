"""Alembic environment: migrate on the connection (and inside the transaction) given.

:func:`batchor_core.storage.migrate.ensure_current` passes its connection in
``config.attributes["connection"]``; it already holds the schema lock and its
transaction, so every revision commits (or rolls back) together with the check.
"""

from __future__ import annotations

from alembic import context

from batchor_core.storage.migrate import VERSION_TABLE

context.configure(
    connection=context.config.attributes["connection"],
    version_table=VERSION_TABLE,
)
with context.begin_transaction():
    context.run_migrations()
