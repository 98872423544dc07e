"""Input files and process helpers for the CLI tests."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

WORDS = ["great value", "broke after a week", "does the job", "love it", "too loud"]


def rows(n: int) -> list[dict[str, str]]:
    """``n`` rows with an ``id`` and a ``text`` column."""
    return [{"id": f"r{i}", "text": f"review {i}: {WORDS[i % len(WORDS)]}"} for i in range(n)]


def write_csv(path: Path, n: int) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "text"])
        writer.writeheader()
        writer.writerows(rows(n))
    return path


def write_jsonl(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows(n)), encoding="utf-8")
    return path


def write_parquet(path: Path, n: int) -> Path:
    pq.write_table(pa.Table.from_pylist(rows(n)), path, row_group_size=128)
    return path


def batchor_command() -> list[str]:
    """The installed console script, or ``python -m batchor_core.cli`` without one."""
    script = Path(sys.executable).with_name("batchor")
    return [str(script)] if script.exists() else [sys.executable, "-m", "batchor_core.cli"]


def batchor(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``batchor args...`` in a fresh process."""
    return subprocess.run(
        [*batchor_command(), *args],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
