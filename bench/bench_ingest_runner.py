"""Ingest through the runner: file rows -> items in SQLite -> request JSONL -> submitted batches.

Generates N-row CSV and Parquet files (default 1,000,000), starts the emulator in its own
process, then for each format runs ``runner.start(job, items=<source>)`` in a fresh
subprocess (so the generator's memory is not counted) and prints rows/s and peak RSS::

    .venv/bin/python bench/bench_ingest_runner.py
    .venv/bin/python bench/bench_ingest_runner.py --rows 200000 --formats csv
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_e2e import _start_emulator
from bench_ingest import generate, peak_rss_mb


def measure(fmt: str, path: str, url: str, workdir: str) -> dict[str, float]:
    """Run in the measuring subprocess: start() ingests everything and submits every batch."""
    from batchor_core import (
        BatchJob,
        BatchRunner,
        LocalArtifactStore,
        OpenAIProviderConfig,
        SQLiteStorage,
    )
    from batchor_core.sources import CsvSource, ParquetSource

    source = (CsvSource if fmt == "csv" else ParquetSource)(
        path, id_column="id", payload_columns=["text"], metadata_columns=["category"]
    )
    job = BatchJob(model="gpt-4o-mini", build_prompt=lambda item: str(item.payload["text"]))
    base = peak_rss_mb()
    with BatchRunner(
        storage=SQLiteStorage(Path(workdir) / f"{fmt}.sqlite3"),
        artifacts=LocalArtifactStore(Path(workdir) / f"{fmt}-artifacts"),
        provider=OpenAIProviderConfig(api_key="sk-bench", base_url=url),
    ) as runner:
        started = time.perf_counter()
        run = runner.start(job, items=source, run_id=f"ingest-{fmt}")
        elapsed = time.perf_counter() - started
        summary = run.summary()
    return {
        "rows": summary.total_items,
        "batches": summary.batches_total,
        "submitted_or_done": summary.batches_in_flight + (summary.completed_items > 0),
        "seconds": elapsed,
        "rows_per_second": summary.total_items / elapsed,
        "base_rss_mb": base,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default="csv,parquet")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--measure", nargs=4, metavar=("FMT", "PATH", "URL", "WORKDIR"))
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="batchor-ingest-"))
    formats = args.formats.split(",")
    paths = generate(workdir, args.rows, formats)
    emu, url = _start_emulator(workdir / "emulator")
    try:
        for fmt in formats:
            out = subprocess.run(
                [sys.executable, __file__, "--measure", fmt, str(paths[fmt]), url, str(workdir)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(
                f"{fmt:8s} {int(r['rows']):,} rows -> {int(r['batches'])} batches in "
                f"{r['seconds']:.1f}s = {r['rows_per_second']:,.0f} rows/s; peak RSS "
                f"{r['peak_rss_mb']:.0f} MB (after imports {r['base_rss_mb']:.0f} MB)"
            )
    finally:
        emu.terminate()
        emu.wait(timeout=60)


if __name__ == "__main__":
    main()
