"""Reading results back: ``run.results()`` (one typed object per row) vs ``run.to_arrow()``.

Builds a finished run of N items once (in-process fake provider, real SQLite file; the
file is kept with ``--db`` and reused), then times each way of reading it and prints the
ratio. Run by hand:

    .venv/bin/python bench/bench_readback.py --items 1000000 --db /tmp/readback.sqlite3

With the ``fast`` extra (adbc-driver-sqlite) installed, to_arrow/to_pandas read the SQLite
pages through ADBC; without it, through the sqlite3 driver (it prints which).
"""

from __future__ import annotations

import argparse
import enum
import json
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel

from batchor_core import BatchItem, BatchJob, BatchRunner, LocalArtifactStore, SQLiteStorage
from batchor_core.models import JSONObject
from batchor_core.testing import FakeBatchProvider


class Mood(enum.StrEnum):
    """An enum field."""

    GOOD = "good"
    BAD = "bad"


class Detail(BaseModel):
    """A nested model."""

    reason: str
    weight: float


class Review(BaseModel):
    """Output with the field kinds to_arrow types: enum, number, list, nested, optional."""

    mood: Mood
    score: int
    tags: list[str]
    detail: Detail
    note: str | None


def _respond(body: JSONObject) -> str:
    text = str(body["messages"][0]["content"])  # type: ignore[index,call-overload]
    n = len(text)
    return json.dumps(
        {
            "mood": "good" if n % 2 else "bad",
            "score": n,
            "tags": ["a", "b"][: n % 3],
            "detail": {"reason": text[:12], "weight": n / 7},
            "note": None if n % 5 else "five",
        }
    )


def _job() -> BatchJob:
    return BatchJob(
        model="gpt-4o-mini",
        build_request=lambda item: {"messages": [{"role": "user", "content": item.payload["t"]}]},
        output_model=Review,
    )


def _runner(db: Path) -> BatchRunner:
    return BatchRunner(
        storage=SQLiteStorage(db),
        artifacts=LocalArtifactStore(db.with_suffix(".artifacts")),
        provider=FakeBatchProvider(_respond),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--db", type=Path, default=None)
    args = parser.parse_args()
    db = args.db or Path(tempfile.mkdtemp(prefix="batchor-readback-")) / "runs.sqlite3"
    runner = _runner(db)
    run_id = f"readback-{args.items}"
    if runner.storage.load_run(run_id) is None:
        t = time.perf_counter()
        items = (BatchItem(f"i{i}", {"t": f"text number {i}"}) for i in range(args.items))
        run = runner.start(_job(), items=items, run_id=run_id)
        run.wait(timeout=36_000, poll_interval=0)
        print(f"built the run in {time.perf_counter() - t:.1f}s ({db})")
    run = runner.get_run(run_id, job=_job())
    from batchor_core.storage.sqlite_arrow import open_arrow_reader

    reader = open_arrow_reader(runner.storage)
    print("to_arrow reads through", "ADBC (batchor[fast])" if reader else "the sqlite3 driver")
    if reader is not None:
        reader.close()

    t = time.perf_counter()
    n_iter = sum(1 for _ in run.results(page_size=5000))
    t_iter = time.perf_counter() - t
    t = time.perf_counter()
    table = run.to_arrow()
    t_arrow = time.perf_counter() - t
    t = time.perf_counter()
    frame = run.to_pandas()
    t_pandas = time.perf_counter() - t
    assert n_iter == table.num_rows == len(frame)
    print(f"results(): {n_iter:,} typed results in {t_iter:.2f}s")
    print(f"to_arrow(): {table.num_rows:,} rows in {t_arrow:.2f}s ({t_iter / t_arrow:.1f}x faster)")
    print(f"to_pandas(): {len(frame):,} rows in {t_pandas:.2f}s ({t_iter / t_pandas:.1f}x faster)")


if __name__ == "__main__":
    main()
