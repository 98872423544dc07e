"""Target of the concurrent-open test's child processes (kept small: children fork from a
forkserver that preloads this module, so twelve of them start in well under a second)."""

from __future__ import annotations

from typing import Any

from batchor_core import PostgresStorage, SQLiteStorage


def open_store(url: str, barrier: Any, results: Any) -> None:
    """Wait for every sibling, open the store at ``url``, report its revision or error."""
    barrier.wait()
    try:
        if url.startswith("sqlite:///"):
            store = SQLiteStorage(url[len("sqlite:///") :])
        else:
            store = PostgresStorage(url)
        results.put(store.schema_revision)
        store.close()
    except Exception as exc:  # reported to the test, which expects none
        results.put(f"{type(exc).__name__}: {exc}")
