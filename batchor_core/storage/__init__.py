"""Control-plane stores: SQLite (default), Postgres, and in-memory."""

from batchor_core.storage.sql import MemoryStateStore, PostgresStorage, SQLiteStorage, SQLStateStore

__all__ = ["MemoryStateStore", "PostgresStorage", "SQLStateStore", "SQLiteStorage"]
