"""Control-plane stores: SQLite (default), Postgres, and in-memory.

:func:`upgrade` brings a store's schema to this batchor's revision (opening a store does
the same automatically). SQLAlchemy is imported when a store is first used, not on
``import batchor_core.storage``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from batchor_core.storage.sql import (
        MemoryStateStore,
        PostgresStorage,
        SQLiteStorage,
        SQLStateStore,
        upgrade,
    )

__all__ = ["MemoryStateStore", "PostgresStorage", "SQLStateStore", "SQLiteStorage", "upgrade"]


def __getattr__(name: str) -> object:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from batchor_core.storage import sql

    value = getattr(sql, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
