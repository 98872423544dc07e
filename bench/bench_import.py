"""What `import batchor_core` and quick CLI calls cost, each in a fresh interpreter.

Times the median of several runs of: ``import batchor_core`` (lean: heavy libraries load
on first use), the same plus the names that pull the SDK and SQLAlchemy (what every
import cost before they were lazy), ``batchor --help`` and ``batchor status`` on a small
SQLite store. Prints seconds, peak RSS and the ratios. Run by hand:

    .venv/bin/python bench/bench_import.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Peak RSS of this process (VmHWM: ru_maxrss would include the forking parent's peak).
_RSS = (
    "import sys; print([l.split()[1] for l in open('/proc/self/status') "
    "if l.startswith('VmHWM')][0], file=sys.stderr)"
)


def _measure(args: list[str], repeat: int) -> tuple[float, float]:
    """Median wall seconds and median peak RSS (MB) of running ``args``."""
    times, rss = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        done = subprocess.run(args, check=True, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        last = done.stderr.strip().splitlines()[-1:] or ["0"]
        rss.append(int(last[0]) / 1024 if last[0].isdigit() else 0.0)
    return statistics.median(times), statistics.median(rss)


def _store_with_a_run(workdir: Path) -> Path:
    """A SQLite store holding one finished run (made with the in-process fake provider)."""
    from batchor_core import BatchItem, BatchJob, BatchRunner, LocalArtifactStore, SQLiteStorage
    from batchor_core.testing import FakeBatchProvider

    db = workdir / "store.sqlite3"
    with BatchRunner(
        storage=SQLiteStorage(db),
        artifacts=LocalArtifactStore(workdir / "artifacts"),
        provider=FakeBatchProvider(),
    ) as runner:
        job = BatchJob(model="m", build_prompt=lambda i: str(i.payload["t"]))
        run = runner.start(job, items=[BatchItem(f"i{k}", {"t": k}) for k in range(10)], run_id="r")
        run.wait(timeout=60, poll_interval=0)
    return db


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    cli = str(Path(py).with_name("batchor"))
    with tempfile.TemporaryDirectory(prefix="batchor-import-") as tmp:
        db = _store_with_a_run(Path(tmp))
        cases = {
            "python (nothing)": [py, "-c", _RSS],
            "import batchor_core": [py, "-c", "import batchor_core; " + _RSS],
            "... + SDK and store names": [
                py,
                "-c",
                "import batchor_core; "
                "from batchor_core import OpenAIBatchProvider, SQLiteStorage; " + _RSS,
            ],
            "batchor --help": [cli, "--help"],
            "batchor status": [cli, "status", "r", "--store", str(db)],
        }
        results = {name: _measure(argv, args.repeat) for name, argv in cases.items()}
    for name, (seconds, mb) in results.items():
        rss = f"{mb:5.0f} MB" if mb else "       "
        print(f"{name:28s} {seconds:6.3f}s  {rss}")
    lean = results["import batchor_core"][0]
    eager = results["... + SDK and store names"][0]
    print(f"eager/lean import time: {eager / lean:.1f}x")


if __name__ == "__main__":
    main()
