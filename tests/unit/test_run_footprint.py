"""A run loads only what it uses: module imports are most of a run's memory.

A SQLite store never loads SQLAlchemy's Postgres dialect (2 MB). Each check runs in a
fresh interpreter so other tests' imports don't count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def _run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, object] = json.loads(out.splitlines()[-1])
    return result


def test_a_sqlite_store_does_not_load_the_postgres_dialect(tmp_path: Path) -> None:
    result = _run(
        "import json, sys\n"
        "from batchor_core import SQLiteStorage\n"
        f"store = SQLiteStorage({str(tmp_path / 'runs.sqlite3')!r})\n"
        "ids = store.list_run_ids()\n"
        "store.close()\n"
        "print(json.dumps({'ids': ids,\n"
        "                  'postgres': 'sqlalchemy.dialects.postgresql' in sys.modules}))"
    )
    assert result == {"ids": [], "postgres": False}
