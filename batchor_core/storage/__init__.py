"""Control-plane stores: SQLite (default), Postgres, and in-memory.

:func:`upgrade` brings a store's schema to this batchor's revision (opening a store does
the same automatically).
"""

from batchor_core.storage.sql import (
    MemoryStateStore,
    PostgresStorage,
    SQLiteStorage,
    SQLStateStore,
    upgrade,
)

__all__ = ["MemoryStateStore", "PostgresStorage", "SQLStateStore", "SQLiteStorage", "upgrade"]
