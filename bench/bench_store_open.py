"""How long opening a store takes (it happens on every process start).

Usage: python -m bench.bench_store_open [POSTGRES_URL]
Prints the median of 20 opens (fresh process state excluded: imports happen once first)
for a new SQLite file, an existing SQLite file and, with a URL, an existing Postgres store.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from batchor_core import PostgresStorage, SQLiteStorage


def _median_ms(open_store: object, rounds: int = 20) -> float:
    times = []
    for i in range(rounds):
        started = time.perf_counter()
        store = open_store(i)  # type: ignore[operator]
        times.append(time.perf_counter() - started)
        store.close()
    return statistics.median(times) * 1000


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        SQLiteStorage(root / "warm.sqlite3").close()  # imports and first-use costs
        fresh = _median_ms(lambda i: SQLiteStorage(root / f"new-{i}.sqlite3"))
        SQLiteStorage(root / "existing.sqlite3").close()
        existing = _median_ms(lambda i: SQLiteStorage(root / "existing.sqlite3"))
        print(f"sqlite new file:      {fresh:7.2f} ms")
        print(f"sqlite existing file: {existing:7.2f} ms")
    if len(sys.argv) > 1:
        PostgresStorage(sys.argv[1]).close()
        pg = _median_ms(lambda i: PostgresStorage(sys.argv[1]))
        print(f"postgres existing:    {pg:7.2f} ms")


if __name__ == "__main__":
    main()
