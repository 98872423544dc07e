"""Reading results back: ``run.results()`` (one typed object per row) vs ``run.to_arrow()``.

Builds a finished run of N items once (in-process fake provider, real SQLite file; the
file is kept with ``--db`` and reused), then times each way of reading it, ``--reps``
times in turn, and prints the min and median of each (and its least CPU time over all
threads, which a busy shared machine disturbs less than wall time) and their ratios:

- ``floor read``: the least a reader can do (``select item_id, status, output_json`` and
  ``model_validate_json`` per row, as ``floor.py``), against ``results()``;
- ``to_arrow()`` and ``to_pandas()`` through ADBC in this process (the ``fast`` extra,
  opted in with ``BATCHOR_SQLITE_ADBC=1``), through ADBC in a child process (the
  default with the extra) and through the sqlite3 driver (as without the extra), in
  turn; the first call (cold: imports included) is printed apart. CPU includes the
  child's.

Run by hand:

    .venv/bin/python bench/bench_readback.py --items 1000000 --db /tmp/readback.sqlite3
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import json
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
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


def _floor_read(db: Path) -> int:
    """What floor.py's read phase does: three columns, one model validation per row."""
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("select item_id, status, output_json from batchor_items order by seq")
        return sum(1 for i, s, o in rows if (i, s, Review.model_validate_json(o)) is not None)
    finally:
        conn.close()


@contextlib.contextmanager
def _without_adbc() -> Iterator[None]:
    """to_arrow() as without the ``fast`` extra: the sqlite3 driver's pages."""
    saved = sys.modules.get("adbc_driver_sqlite")
    sys.modules["adbc_driver_sqlite"] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if saved is None:
            del sys.modules["adbc_driver_sqlite"]
        else:
            sys.modules["adbc_driver_sqlite"] = saved


@contextlib.contextmanager
def _adbc_in_a_child() -> Iterator[None]:
    """to_arrow() by default: pages after the first from an ADBC child process."""
    from batchor_core.storage.sqlite_arrow import ADBC_ENV

    saved = os.environ.pop(ADBC_ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[ADBC_ENV] = saved


def _cpu() -> float:
    # Every thread of this process, and its reaped children (to_arrow()'s ADBC child).
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


_CPU: dict[str, list[float]] = {}


def _timed(fn: Callable[[], int], name: str = "") -> tuple[float, int]:
    t, c = time.perf_counter(), _cpu()
    n = fn()
    _CPU.setdefault(name, []).append(_cpu() - c)
    return time.perf_counter() - t, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--reps", type=int, default=3)
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
    from batchor_core.storage.sqlite_arrow import ADBC_ENV, open_arrow_reader

    # Opted in only now: nothing writes to the store from here on (the ADBC driver's own
    # copy of SQLite must not share the file with a writer in this process).
    os.environ[ADBC_ENV] = "1"
    reader = open_arrow_reader(runner.storage)
    if reader is None:
        print("adbc-driver-sqlite is not installed: both to_arrow rows use the sqlite3 driver")
    else:
        reader.close()

    cold, n = _timed(lambda: run.to_arrow().num_rows)
    print(f"to_arrow() cold (first call, imports included): {n:,} rows in {cold:.2f}s")
    ways: dict[str, Callable[[], int]] = {
        "floor read": lambda: _floor_read(db),
        "results()": lambda: sum(1 for _ in run.results()),
        "to_arrow() ADBC": lambda: run.to_arrow().num_rows,
        "to_pandas() ADBC": lambda: len(run.to_pandas()),
        "to_arrow() child": lambda: run.to_arrow().num_rows,
        "to_pandas() child": lambda: len(run.to_pandas()),
        "to_arrow() driver": lambda: run.to_arrow().num_rows,
        "to_pandas() driver": lambda: len(run.to_pandas()),
    }
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.reps):
        for name, way in ways.items():
            if name.endswith("driver"):
                with _without_adbc():
                    seconds, got = _timed(way, name)
            elif name.endswith("child"):
                with _adbc_in_a_child():
                    seconds, got = _timed(way, name)
            else:
                seconds, got = _timed(way, name)
            assert got == args.items, (name, got)
            times[name].append(seconds)
    print(
        f"{args.items:,} results, {args.reps} reps each, in turn "
        "(min / median seconds; least CPU seconds, all threads):"
    )
    for name, secs in times.items():
        print(
            f"  {name:20s} {min(secs):6.2f} / {statistics.median(secs):6.2f}"
            f"   CPU {min(_CPU[name]):6.2f}"
        )
    best = {name: min(secs) for name, secs in times.items()}
    print(f"floor read / results(): {best['floor read'] / best['results()']:.2f}")
    print(f"to_arrow() driver / ADBC: {best['to_arrow() driver'] / best['to_arrow() ADBC']:.2f}x")
    print(f"results() / to_arrow() ADBC: {best['results()'] / best['to_arrow() ADBC']:.1f}x")
    print(f"to_arrow() driver / child: {best['to_arrow() driver'] / best['to_arrow() child']:.2f}x")


if __name__ == "__main__":
    main()
