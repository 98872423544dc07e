"""End-to-end throughput and memory: N items through the runner against the emulator.

The emulator runs in its own process (like the real provider, it is not our memory);
the runner uses a real SQLite file and local artifacts. Prints items/s, the runner
process's peak RSS, and the runner's own time: wall time minus the CPU time the emulator
process spent (the runner waits on the emulator's answers; on a loaded machine the
emulator's wall time is longer than its CPU time, so this still overstates our share a
little). Also prints the store and artifact bytes per item. Run by hand:

    .venv/bin/python bench/bench_e2e.py --items 100000
    .venv/bin/python bench/bench_e2e.py --items 1000000
    .venv/bin/python bench/bench_e2e.py --store postgresql+psycopg://user:pw@host/db
    .venv/bin/python bench/bench_e2e.py --store postgresql+psycopg://... --vs-sqlite
        # then the same on a SQLite file, and Postgres / SQLite throughput
    .venv/bin/python bench/bench_e2e.py --store postgresql+psycopg://... \
        --artifacts s3://bench/run --local-s3   # S3 artifacts on a local moto server

``--local-s3`` starts an S3-compatible server (moto, from the dev extra) in its own
process on 127.0.0.1, points the AWS environment variables at it and creates the
artifacts URL's bucket (its CPU time then counts with the emulator's).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    LocalArtifactStore,
    OpenAIProviderConfig,
    PostgresStorage,
    SQLiteStorage,
)


class Label(BaseModel):
    """A small output model."""

    label: str
    score: int


def _items(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield BatchItem(item_id=f"item-{i}", payload={"text": f"short text number {i}"})


def _start_emulator(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "batchor_core.testing.emulator",
            "--port",
            "0",
            "--data-dir",
            str(data_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = line.strip().rsplit(" ", 1)[-1]
    if not url.startswith("http"):
        proc.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    return proc, url


def _start_local_s3(artifacts: str) -> subprocess.Popen[bytes]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("the local S3 server did not start") from None
            time.sleep(0.1)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_DEFAULT_REGION="us-east-1",
    )
    import s3fs  # type: ignore[import-untyped]

    s3fs.S3FileSystem().mkdir(artifacts.removeprefix("s3://").split("/", 1)[0])
    return proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--store", default=None, help="a store URL (default: a SQLite file)")
    parser.add_argument(
        "--artifacts", default=None, help="an artifacts URL, e.g. s3://bucket/prefix"
    )
    parser.add_argument(
        "--local-s3", action="store_true", help="serve the s3:// artifacts URL locally (moto)"
    )
    parser.add_argument(
        "--vs-sqlite", action="store_true", help="with --store: also run on SQLite, print the ratio"
    )
    args = parser.parse_args()
    if args.vs_sqlite and args.store:
        extra = ["--artifacts", args.artifacts] if args.artifacts else []
        extra += ["--local-s3"] if args.local_s3 else []
        ours = _run_self(["--items", str(args.items), "--store", args.store, *extra])
        sqlite = _run_self(["--items", str(args.items)])
        setup = args.store.split("://")[0]
        if args.artifacts:
            setup += " + " + args.artifacts.split("://")[0]
        print(
            f"{setup} / SQLite + local files end-to-end throughput: "
            f"{ours / sqlite:.2f} ({ours:,.0f} vs {sqlite:,.0f} items/s)"
        )
        return
    if args.dir is not None:
        _bench(args, args.dir)
    else:  # a 1M run leaves 2 GB behind: remove it unless --dir asked to keep it
        with tempfile.TemporaryDirectory(prefix="batchor-bench-") as tmp:
            _bench(args, Path(tmp))


def _bench(args: argparse.Namespace, workdir: Path) -> None:
    """Run the benchmark in ``workdir`` and print its numbers."""
    s3 = _start_local_s3(args.artifacts) if args.local_s3 and args.artifacts else None
    emu, url = _start_emulator(workdir / "emulator")
    try:
        runner = BatchRunner(
            storage=(
                PostgresStorage(args.store)
                if args.store
                else SQLiteStorage(workdir / "runs.sqlite3")
            ),
            artifacts=args.artifacts or LocalArtifactStore(workdir / "artifacts"),
            provider=OpenAIProviderConfig(api_key="sk-bench", base_url=url),
        )
        job = BatchJob(
            model="gpt-4o-mini",
            build_request=lambda item: {
                "messages": [{"role": "user", "content": item.payload["text"]}]
            },
            output_model=Label,
        )
        started = time.perf_counter()
        run_id = f"bench-{time.time_ns()}"  # a reused Postgres database may hold older runs
        run = runner.start(job, items=_items(args.items), run_id=run_id)
        ingested = time.perf_counter()
        summary = run.wait(timeout=3600, poll_interval=0.05)
        finished = time.perf_counter()
        read = sum(1 for _ in run.results())
        read_done = time.perf_counter()
    finally:
        emu.terminate()
        emu.wait(timeout=30)
        if s3 is not None:
            s3.terminate()
            s3.wait(timeout=30)
    own = resource.getrusage(resource.RUSAGE_SELF)
    emu_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    emu_cpu = emu_usage.ru_utime + emu_usage.ru_stime
    peak_mb = own.ru_maxrss / 1024
    total = finished - started
    print(
        f"items:            {summary.total_items} ({summary.completed_items} completed, "
        f"{summary.failed_items} failed) in {summary.batches_total} batches"
    )
    print(f"start (ingest+submit): {ingested - started:.2f}s")
    print(f"wait (poll+collect):   {finished - ingested:.2f}s")
    print(f"end to end:       {total:.2f}s = {summary.total_items / total:,.0f} items/s")
    print(f"read results:     {read} in {read_done - finished:.2f}s")
    print(
        f"emulator CPU:     {emu_cpu:.2f}s; runner CPU {own.ru_utime + own.ru_stime:.2f}s; "
        f"runner's own time (end to end + read - emulator CPU): "
        f"{total + read_done - finished - emu_cpu:.2f}s"
    )
    print(f"peak RSS (runner process): {peak_mb:.0f} MB")
    n = max(summary.total_items, 1)
    artifacts = _bytes((workdir / "artifacts").rglob("*"))
    requests = _bytes((workdir / "artifacts").rglob("requests/*"))
    print(f"store: {runner.storage!r}  artifacts: {runner.artifacts!r}")
    if not args.store and not args.artifacts:
        store = _bytes(workdir.glob("runs.sqlite3*"))
        print(
            f"store:            {store / n:.0f} B/item (SQLite file); artifacts "
            f"{artifacts / n:.0f} B/item ({requests / n:.0f} requests + "
            f"{(artifacts - requests) / n:.0f} outputs); store / artifacts = "
            f"{store / artifacts:.2f}"
        )


def _run_self(argv: list[str]) -> float:
    """Run this benchmark in a fresh process; print its output, return its items/s."""
    out = subprocess.run(
        [sys.executable, __file__, *argv], check=True, capture_output=True, text=True
    ).stdout
    print(out, end="")
    found = re.search(r"end to end:.*= ([0-9,]+) items/s", out)
    assert found, out
    return float(found.group(1).replace(",", ""))


def _bytes(paths: Iterable[Path]) -> int:
    """Total size of the files among ``paths``."""
    return sum(p.stat().st_size for p in paths if p.is_file())


if __name__ == "__main__":
    main()
