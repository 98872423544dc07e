"""The example project under real Dagster processes: validation, and a real daemon.

The daemon test runs ``dagster-daemon`` against ``example_project`` with a temporary
``DAGSTER_HOME`` and the emulator, for as long as it takes one submitted run and one run
started with the core API to be collected (about a minute), then watches a few more
sensor ticks: exactly one collecting run and one materialization per durable run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from batchor_core import BatchRunner
from batchor_core.sources import CsvSource
from batchor_core.testing import OpenAIEmulator
from batchor_dagster import COLLECT_FOR_TAG

PROJECT = Path(__file__).resolve().parents[2] / "example_project"
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def example_env(tmp_path: Path) -> Iterator[tuple[dict[str, str], Any]]:
    with OpenAIEmulator(processing="instant", seed=11) as emulator:
        home = tmp_path / "dagster_home"
        home.mkdir()
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "BATCHOR_EXAMPLE_HOME": str(tmp_path / "batchor"),
            "BATCHOR_EXAMPLE_BASE_URL": emulator.base_url,
            "BATCHOR_EXAMPLE_SENSOR_INTERVAL": "5",
            "OPENAI_API_KEY": "sk-test-example",
            "PYTHONPATH": str(PROJECT),
        }
        yield env, emulator


def _dagster(
    *args: str, env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dagster"), *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_definitions_validate(example_env: tuple[dict[str, str], Any]) -> None:
    env, _ = example_env
    done = _dagster("definitions", "validate", "-m", "example_project.definitions", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All code locations passed validation" in done.stdout + done.stderr


def test_a_real_daemon_collects_each_durable_run_exactly_once(
    example_env: tuple[dict[str, str], Any],
) -> None:
    env, emulator = example_env
    emulator.faults.hold_batches()
    submit = _dagster(
        "asset",
        "materialize",
        "-m",
        "example_project.definitions",
        "--select",
        "reviews_classified",
        env=env,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr
    # A second durable run of the same asset, started with the core API (as a script or
    # the CLI would); the sensor must pick it up too.
    sys.path.insert(0, str(PROJECT))
    try:
        from example_project.definitions import REVIEWS_CSV, build_job

        runner = BatchRunner.from_settings(
            store=Path(env["BATCHOR_EXAMPLE_HOME"]) / "batchor.sqlite3",
            artifacts=Path(env["BATCHOR_EXAMPLE_HOME"]) / "artifacts",
            api_key="sk-test-example",
            base_url=emulator.base_url,
        )
        runner.start(
            build_job(None),  # type: ignore[arg-type]
            items=CsvSource(REVIEWS_CSV, id_column="review_id"),
            run_id="started-outside",
            owner={"asset": "reviews_classified", "partition": None},
        )
    finally:
        sys.path.remove(str(PROJECT))
    durable = {s.run_id for s in runner.list_runs()}
    assert len(durable) == 2 and all(not s.is_finished for s in runner.list_runs())
    emulator.release_batches()

    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-m", "example_project.definitions"],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                collected = {s.run_id for s in runner.list_runs(collected=True)}
                active = [r for r in instance.get_runs() if not r.is_finished]
                if collected == durable and not active:
                    break
                time.sleep(2)
            assert {s.run_id for s in runner.list_runs(collected=True)} == durable
            time.sleep(15)  # three more ticks at a 5 s interval: nothing more may happen
            collect_runs = [r for r in instance.get_runs() if COLLECT_FOR_TAG in r.tags]
            assert sorted(r.tags[COLLECT_FOR_TAG] for r in collect_runs) == sorted(durable)
            assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in collect_runs)
            assert sorted(
                r.run_config["ops"]["reviews_classified"]["config"]["run_id"] for r in collect_runs
            ) == sorted(durable)  # type: ignore[index]
            records = instance.fetch_materializations(
                dg.AssetKey("reviews_classified"), limit=10
            ).records
            run_ids = sorted(
                r.asset_materialization.metadata["batchor/run_id"].value  # type: ignore[union-attr]
                for r in records
            )
            assert run_ids == sorted(durable)
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
        runner.close()
    assert emulator.batch_create_count == 2
