"""Read throughput and peak memory of the file sources.

Generates an N-row CSV, Parquet and JSONL file (id, ~60 characters of text, a category,
a number), then reads each fully through ``read_slices(None, slice_size=...)`` in a fresh
subprocess, so the generator's memory is not counted, and prints rows/s and peak RSS::

    python bench/bench_ingest.py                 # 1,000,000 rows in a temporary directory
    python bench/bench_ingest.py --rows 200000 --dir /tmp/bench --formats csv
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("csv", "parquet", "jsonl")
WORDS = ("alpha", "beta", "gamma", "delta", "batch", "runner", "durable", "resume")
WORDS += ("checkpoint", "slice", "token", "model", "request", "output", "stream", "offset")
CHUNK = 100_000
READ = [sys.executable, __file__, "--read"]


def _text(rng: random.Random) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < 60:
        words.append(rng.choice(WORDS))
    text = " ".join(words)
    if rng.random() < 0.1:  # some values need quoting in CSV
        text = text.replace(" ", ", ", 1)
    return text


def _columns(start: int, stop: int, rng: random.Random) -> dict[str, list[object]]:
    return {
        "id": [f"{i:08d}" for i in range(start, stop)],
        "text": [_text(rng) for _ in range(start, stop)],
        "category": [rng.choice(("news", "sports", "science", "arts")) for _ in range(start, stop)],
        "score": [round(rng.random() * 100, 3) for _ in range(start, stop)],
    }


def generate(directory: Path, rows: int, formats: list[str]) -> dict[str, Path]:
    """Write the input files; return their paths by format."""
    paths = {fmt: directory / f"bench_{rows}.{fmt}" for fmt in formats}
    rng = random.Random(42)
    with contextlib.ExitStack() as stack:
        csv_file = (
            stack.enter_context(open(paths["csv"], "w", newline="")) if "csv" in paths else None
        )
        csv_out = csv.writer(csv_file) if csv_file is not None else None
        jsonl = stack.enter_context(open(paths["jsonl"], "w")) if "jsonl" in paths else None
        writer: pq.ParquetWriter | None = None
        if csv_out is not None:
            csv_out.writerow(["id", "text", "category", "score"])
        for start in range(0, rows, CHUNK):
            cols = _columns(start, min(rows, start + CHUNK), rng)
            if csv_out is not None:
                csv_out.writerows(zip(*cols.values(), strict=True))
            if jsonl is not None:
                names = list(cols)
                for values in zip(*cols.values(), strict=True):
                    jsonl.write(json.dumps(dict(zip(names, values, strict=True))) + "\n")
            if "parquet" in paths:
                table = pa.table(cols)
                if writer is None:
                    writer = stack.enter_context(pq.ParquetWriter(paths["parquet"], table.schema))
                writer.write_table(table)  # one row group per chunk
    return paths


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MB.

    ``VmHWM`` where Linux has it: ``ru_maxrss`` survives ``exec`` and so would count the
    parent's memory at fork time.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def read_one(fmt: str, path: str, slice_size: int) -> dict[str, float]:
    """Read ``path`` fully; runs in the measuring subprocess."""
    from batchor_core.sources import CsvSource, JsonlSource, ParquetSource

    base_rss = peak_rss_mb()
    source = {"csv": CsvSource, "parquet": ParquetSource, "jsonl": JsonlSource}[fmt](path)
    started = time.perf_counter()
    source.identity()
    hashed = time.perf_counter()
    rows = rejected = 0
    for part in source.read_slices(None, slice_size=slice_size):
        rows += len(part.items)
        rejected += len(part.rejected)
    done = time.perf_counter()
    return {
        "rows": rows,
        "rejected": rejected,
        "hash_seconds": hashed - started,
        "read_seconds": done - hashed,
        "rows_per_second": rows / (done - hashed),
        "base_rss_mb": base_rss,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files")
    parser.add_argument("--slice-size", type=int, default=10_000)
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated")
    parser.add_argument("--read", nargs=2, metavar=("FORMAT", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read_one(args.read[0], args.read[1], args.slice_size)))
        return
    formats = [f for f in args.formats.split(",") if f]
    unknown = set(formats) - set(FORMATS)
    if unknown:
        parser.error(f"unknown formats {sorted(unknown)}; choose from {FORMATS}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = args.dir or Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        paths = generate(directory, args.rows, formats)
        print(
            f"generated {args.rows:,} rows in {time.perf_counter() - started:.1f}s in {directory}"
        )
        for fmt in formats:
            size_mb = paths[fmt].stat().st_size / 1e6
            out = subprocess.run(
                [*READ, fmt, str(paths[fmt]), "--slice-size", str(args.slice_size)],
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(out.stdout)
            print(
                f"{fmt:8} {size_mb:7.1f} MB  {r['rows']:>9,} rows  "
                f"read {r['read_seconds']:6.2f}s = {r['rows_per_second']:>9,.0f} rows/s  "
                f"hash {r['hash_seconds']:5.2f}s  peak RSS {r['peak_rss_mb']:6.1f} MB "
                f"(after imports {r['base_rss_mb']:5.1f} MB)"
            )


if __name__ == "__main__":
    main()
