"""Reads while a collect writes: ``summary()`` latency in another process, and ``results()``.

Starts a run of N items on an in-process fake provider that holds its batches (as
``bench_collect.py``), then lets them finish and times the collect (``run.wait()``)
while a second process, on the same SQLite file, calls ``run.summary()`` every 5 ms (a
status poller) and records each call's latency. Prints the reader's latency percentiles
during the collect, the collect's wall time with and without the reader, and then
``results()`` over the finished run (best wall and CPU time of ``--reps``).

Before read-only transactions every read took SQLite's write lock (``BEGIN IMMEDIATE``),
so a ``summary()`` waited for each of the collect's write transactions, and the collect
for each read. To compare with another checkout, run this script with its tree first on
``PYTHONPATH``. Run by hand:

    .venv/bin/python bench/bench_read_during_collect.py --items 100000
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_collect import Label, _OpenAIShapedProvider, _respond

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    LocalArtifactStore,
    Run,
    SQLiteStorage,
)
from batchor_core.testing import FakeBatchProvider

_READ_EVERY = 0.005


def _runner(db: Path, provider: FakeBatchProvider) -> BatchRunner:
    return BatchRunner(
        storage=SQLiteStorage(db),
        artifacts=LocalArtifactStore(db.parent / "artifacts"),
        provider=provider,
    )


def _held_run(db: Path, items: int) -> tuple[Run, _OpenAIShapedProvider]:
    provider = _OpenAIShapedProvider(_respond)
    provider.hold(True)
    runner = _runner(db, provider)
    job = BatchJob(
        model="gpt-4o-mini",
        build_request=lambda item: {"messages": [{"role": "user", "content": item.payload["t"]}]},
        output_model=Label,
        chunk_policy=ChunkPolicy(max_requests=max(items // 10, 1)),
    )
    gen = (BatchItem(f"item-{i}", {"t": f"short text number {i}"}) for i in range(items))
    run = runner.start(job, items=gen, run_id="bench")
    assert sum(b.total for b in provider.created_batches) == items
    provider.openai_outputs()
    return run, provider


def reader(db: str, out: str) -> None:
    """The reader process: ``summary()`` every 5 ms until stdin closes; latencies to ``out``."""
    import threading

    runner = _runner(Path(db), FakeBatchProvider(lambda _body: "{}"))
    run = runner.get_run("bench")
    run.summary()  # imports and first connection outside the measurement
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    times: list[float] = []
    due = time.perf_counter()
    while not stop.is_set():
        # A poller at a fixed rate (one call per 5 ms when calls are fast), so a faster
        # version makes no more calls than a slower one and the collect's time compares.
        due += _READ_EVERY
        t = time.perf_counter()
        run.summary()
        done = time.perf_counter()
        times.append(done - t)
        time.sleep(max(due - done, 0.0))
        due = max(due, done)
    Path(out).write_text("\n".join(f"{x:.6f}" for x in times))
    runner.close()


def _collect(items: int, workdir: Path, *, with_reader: bool) -> tuple[float, list[float]]:
    db = workdir / ("with" if with_reader else "alone") / "runs.sqlite3"
    db.parent.mkdir(parents=True)
    run, _provider = _held_run(db, items)
    proc = None
    out = db.parent / "latencies.txt"
    if with_reader:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--reader", str(db), str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    t = time.perf_counter()
    summary = run.wait(timeout=3600, poll_interval=0)
    wall = time.perf_counter() - t
    assert summary.completed_items == items, summary
    latencies: list[float] = []
    if proc is not None:
        proc.communicate("", timeout=600)
        latencies = [float(x) for x in out.read_text().split()]
    return wall, latencies


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--reader":
        reader(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3, help="results() reads of the run")
    args = parser.parse_args()
    import batchor_core

    print(f"batchor_core from {Path(batchor_core.__file__).parent}")
    workdir = Path(tempfile.mkdtemp(prefix="batchor-readcollect-"))
    alone, _ = _collect(args.items, workdir, with_reader=False)
    wall, lat = _collect(args.items, workdir, with_reader=True)
    ms = [x * 1000 for x in lat]
    print(f"collect {args.items:,} lines: {alone:.2f}s alone, {wall:.2f}s with a summary() reader")
    print(
        f"summary() during the collect ({len(ms)} calls, ms): "
        f"p50 {_pct(ms, 0.5):.2f}  p90 {_pct(ms, 0.9):.2f}  p99 {_pct(ms, 0.99):.2f}  "
        f"max {max(ms):.2f}  mean {statistics.fmean(ms):.2f}"
    )
    store = SQLiteStorage(workdir / "alone" / "runs.sqlite3")
    run = BatchRunner(
        storage=store,
        artifacts=LocalArtifactStore(workdir / "alone" / "artifacts"),
        provider=FakeBatchProvider(lambda _body: "{}"),
    ).get_run("bench")
    best = best_cpu = float("inf")
    for _ in range(args.reps):
        t, cpu = time.perf_counter(), time.process_time()
        n = sum(1 for _ in run.results())
        best = min(best, time.perf_counter() - t)
        best_cpu = min(best_cpu, time.process_time() - cpu)
        assert n == args.items
    print(
        f"results() of {args.items:,} rows: {best:.3f}s wall, {best_cpu:.3f}s CPU "
        f"({args.items / best:,.0f} rows/s)"
    )


if __name__ == "__main__":
    main()
