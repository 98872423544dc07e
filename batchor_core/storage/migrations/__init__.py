"""Alembic migration scripts of the SQL store (run programmatically; no alembic.ini).

Adding a schema change: change :mod:`batchor_core.storage.schema`, then add
``versions/rev_NNNN_<what>.py`` with ``revision = "NNNN"`` and ``down_revision`` the
previous number. The highest number is the head; stores upgrade to it when opened.
"""
