"""One batchor sensor tick with many in-flight runs, on SQLite and on Postgres.

Starts ``--runs`` durable runs owned by one asset (batches held in flight by the
emulator, which runs in its own process like the real provider), then times sensor ticks
evaluated on a real Dagster instance: with the default 40 s budget every run is polled
once per tick. Also times ``import batchor_dagster`` in a fresh interpreter. By hand:

    .venv/bin/python bench/bench_dagster_sensor.py --runs 200
    .venv/bin/python bench/bench_dagster_sensor.py --runs 200 --store postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import dagster as dg
from pydantic import BaseModel

from batchor_core import BatchItem, BatchJob
from batchor_core.testing import OpenAIEmulator
from batchor_dagster import BatchorResource, batchor_asset, build_batchor_sensor


class Label(BaseModel):
    """A small output model."""

    label: str


def _job(context: object = None) -> BatchJob:
    return BatchJob(model="gpt-4o-mini", build_prompt=lambda i: i.payload["t"], output_model=Label)


def _import_seconds() -> float:
    code = (
        "import time; t=time.perf_counter(); import batchor_dagster; print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--store", default=None, help="store URL (default: a SQLite file)")
    parser.add_argument("--ticks", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-sensor-"))
    store = args.store or str(tmp / "b.sqlite3")
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    # The emulator in this process but holding every batch: each poll is a real HTTP GET.
    with OpenAIEmulator(processing="instant") as emulator:
        emulator.faults.hold_batches()
        resource = BatchorResource(
            storage_url=store,
            artifact_root=str(tmp / "artifacts"),
            openai_api_key="sk-bench",
            openai_base_url=emulator.base_url,
        )
        asset_name = f"a_{prefix.replace('-', '_')}"
        asset = batchor_asset(name=asset_name, build_job=_job, build_items=lambda c: [])
        sensor = build_batchor_sensor([asset])
        runner = resource.get_runner()
        started = time.perf_counter()
        for k in range(args.runs):
            runner.start(
                _job(),
                items=[BatchItem(f"i{k}", {"t": f"text {k}"})],
                run_id=f"{prefix}-{k:04d}",
                owner={"asset": asset_name, "partition": None},
            )
        print(
            f"started {args.runs} runs in {time.perf_counter() - started:.1f}s "
            f"({store.split(':')[0]})"
        )
        with dg.instance_for_test() as instance:
            for tick in range(args.ticks):
                with dg.build_sensor_context(
                    instance=instance, resources={"batchor": resource}
                ) as context:
                    t0 = time.perf_counter()
                    result = sensor(context)
                    elapsed = time.perf_counter() - t0
                reason = getattr(result, "skip_reason", None)
                print(
                    f"tick {tick + 1}: {elapsed:.2f}s  ({getattr(reason, 'skip_message', reason)})"
                )
        runner.close()
    print(f"import batchor_dagster: {_import_seconds():.2f}s (fresh interpreter)")


if __name__ == "__main__":
    main()
