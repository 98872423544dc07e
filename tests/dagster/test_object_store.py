"""The Dagster flow with Postgres + S3 settings: the sensor ticks in this process, the
collect run executes in another one with its own working and temporary directories, as a
run launcher would start it on another machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from batchor_dagster import BatchorResultsIOManager, build_batchor_sensor
from tests.dagster.conftest import materializations
from tests.dagster.object_store_host import asset, resource

pytestmark = [pytest.mark.integration, pytest.mark.postgres]
REPO = Path(__file__).resolve().parents[2]


def test_sensor_here_collect_run_on_another_host_with_postgres_and_s3(
    tmp_path: Path,
    emulator: Any,
    s3_bucket: str,
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    artifacts = f"s3://{s3_bucket}/batchor"
    settings = {
        "BATCHOR_TEST_STORE_URL": postgres_url,
        "BATCHOR_TEST_ARTIFACTS": artifacts,
        "BATCHOR_TEST_BASE_URL": emulator.base_url,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    batchor = resource()
    reviews = asset(f"reviews_{uuid.uuid4().hex[:8]}")  # the Postgres database is shared
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
        resources = {
            "batchor": batchor,
            "batchor_results": BatchorResultsIOManager(batchor=batchor),
        }
        assert dg.materialize([reviews], resources=resources, instance=instance).success  # submits
        sensor = build_batchor_sensor([reviews], minimum_interval_seconds=30)
        with dg.build_sensor_context(instance=instance, resources={"batchor": batchor}) as ctx:
            result = sensor(ctx)
        assert isinstance(result, dg.SensorResult)
        (request,) = result.run_requests
        assert request.asset_selection == [reviews.key]

        host = tmp_path / "collect-host"
        (host / "tmp").mkdir(parents=True)
        env = {**os.environ, **settings, "PYTHONPATH": str(REPO), "TMPDIR": str(host / "tmp")}
        payload = {
            "asset": reviews.key.path,
            "run_config": request.run_config,
            "tags": dict(request.tags),
        }
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.dagster.object_store_host",
                str(dagster_home),
                json.dumps(payload),
            ],
            cwd=host,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert report["success"], done.stderr[-3000:]
        # The export went beside the artifacts in the bucket, not to the pod's disk.
        assert report["results_path"].startswith(f"{artifacts}/exports/")
        assert not list(host.rglob("*.parquet"))
        (materialized,) = materializations(instance, reviews.key)
        shown = json.dumps({k: str(v.value) for k, v in materialized.metadata.items()})
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in shown
        with dg.build_sensor_context(instance=instance, resources={"batchor": batchor}) as ctx:
            after = sensor(ctx)
        assert isinstance(after, dg.SensorResult) and after.run_requests == []
    import pyarrow.parquet as pq
    import s3fs

    with s3fs.S3FileSystem().open(report["results_path"][len("s3://") :], "rb") as fh:
        table = pq.read_table(fh)
    assert table.num_rows == 5
    assert set(table.column("status").to_pylist()) == {"completed"}
    assert emulator.batch_create_count == 1
