"""Steps are bounded (no sleeping on Retry-After), every store runs a whole job, no key leaks."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    FakeClock,
    LocalArtifactStore,
    OpenAIProviderConfig,
    RunStatus,
    SQLiteStorage,
)
from batchor_core.storage import SQLStateStore
from tests.integration.review_model import Review

pytestmark = pytest.mark.integration


def _job(**kwargs: Any) -> BatchJob:
    return BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda item: str(item.payload["text"]),
        output_model=Review,
        **kwargs,
    )


def _items(n: int) -> list[BatchItem]:
    return [BatchItem(item_id=f"r{i}", payload={"text": f"text {i}"}) for i in range(n)]


def test_a_long_retry_after_defers_without_sleeping(tmp_path: Path, emulator: Any) -> None:
    emulator.faults.http_error(method="POST", path="/v1/batches", status=429, retry_after=3600)
    clock = FakeClock()
    with BatchRunner(
        storage=SQLiteStorage(tmp_path / "s.sqlite3"),
        artifacts=LocalArtifactStore(tmp_path / "a"),
        provider=OpenAIProviderConfig(api_key="sk-test", base_url=emulator.base_url),
        clock=clock,
    ) as runner:
        started = time.monotonic()
        run = runner.start(_job(), items=_items(3), run_id="deferred")
        for _ in range(5):
            summary = run.refresh()  # each step returns at once; nothing is created yet
        assert time.monotonic() - started < 10
        assert clock.slept == []
        assert emulator.batch_create_count == 0
        assert summary.batches_in_flight == 0 and summary.status is RunStatus.RUNNING
        wake = runner.stepper.next_wake("deferred")
        assert wake is not None and (wake - clock.now()).total_seconds() > 3500
        clock.advance(3601)
        summary = run.wait(timeout=30, poll_interval=0.01)
        assert summary.status is RunStatus.COMPLETED and emulator.batch_create_count == 1


def test_a_whole_job_on_every_store(
    store: SQLStateStore, run_id: str, tmp_path: Path, emulator: Any
) -> None:
    with BatchRunner(
        storage=store,
        artifacts=LocalArtifactStore(tmp_path / "a"),
        provider=OpenAIProviderConfig(api_key="sk-test", base_url=emulator.base_url),
        transient_backoff_seconds=0,
    ) as runner:
        emulator.faults.line_fault(contains="text 3", kind="invalid_json", times=1)
        run = runner.start(
            _job(chunk_policy=ChunkPolicy(max_requests=4)), items=_items(10), run_id=run_id
        )
        summary = run.wait(timeout=60, poll_interval=0.02)
        assert (summary.status, summary.completed_items, summary.batches_total) == (
            RunStatus.COMPLETED,
            10,
            4,  # 3 chunks + 1 retry chunk
        )
        results = {r.item_id: r for r in run.results()}
        assert results["r3"].attempts == 2 and isinstance(results["r3"].output, Review)
        assert [r.cursor for r in run.results()] == sorted(r.cursor for r in results.values())


def test_the_api_key_never_reaches_logs(
    tmp_path: Path, emulator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-live-DO-NOT-LOG-0123456789"
    caplog.set_level(logging.DEBUG)
    emulator.faults.http_error(method="GET", path="/v1/batches/{id}", status=500, count=1)
    with BatchRunner(
        storage=SQLiteStorage(tmp_path / "s.sqlite3"),
        artifacts=LocalArtifactStore(tmp_path / "a"),
        provider=OpenAIProviderConfig(api_key=secret, base_url=emulator.base_url),
        transient_backoff_seconds=0,
    ) as runner:
        runner.start(_job(), items=_items(2), run_id="quiet").wait(timeout=30, poll_interval=0.02)
    assert caplog.records, "expected some log output to check"
    assert all(secret not in record.getMessage() for record in caplog.records)
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes()
