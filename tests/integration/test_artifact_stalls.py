"""An artifact store that fails mid-run stalls the chunk it concerns, never the caller.

A real S3 server (moto) over HTTP, reached through a second store whose endpoint is a
port nothing listens on (the bucket "unreachable" after the run started), the real SDK
against the emulator, real SQLite files. ``wait()`` must not raise ``ArtifactError``:
the chunk backs off, ``summary()`` names the failing operation, the run pauses with a
reason once the outage outlasts the transient budget, and it finishes once the store
is back, every item sent once.
"""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    FakeClock,
    FsspecArtifactStore,
    ItemStatus,
    LocalArtifactStore,
    RetryPolicy,
    Run,
    RunStatus,
    RunTimeoutError,
)
from batchor_core.cli.app import run as cli

pytestmark = pytest.mark.integration

_N = 6


def _items() -> list[BatchItem]:
    return [BatchItem(item_id=f"r{i}", payload={"text": f"review {i}"}) for i in range(_N)]


def _job() -> BatchJob:
    return BatchJob(model="gpt-4o-mini", build_prompt=lambda it: it.payload["text"])


def _dead_endpoint() -> str:
    with socket.socket() as sock:  # a port that was free a moment ago: connections refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _s3(bucket: str, endpoint: str) -> FsspecArtifactStore:
    # One try per call, so a refused connection fails at once (the default is 3 tries).
    options = {"endpoint_url": endpoint, "config_kwargs": {"retries": {"max_attempts": 1}}}
    return FsspecArtifactStore(f"s3://{bucket}/runs-here", storage_options=options)


def _each_sent_once(run: Run, emulator: Any) -> None:
    results = list(run.results())
    assert Counter(r.status for r in results) == {ItemStatus.COMPLETED: _N}
    assert sorted(r.item_id for r in results) == sorted(f"r{i}" for i in range(_N))
    assert emulator.batch_create_count == 1


def test_an_unreachable_bucket_during_collect_stalls_the_chunk_and_the_run_finishes_later(
    make_runner: Callable[..., BatchRunner],
    emulator: Any,
    s3_endpoint: str,
    s3_bucket: str,
    run_id: str,
) -> None:
    up = make_runner(artifacts=_s3(s3_bucket, s3_endpoint))
    run = up.start(_job(), items=_items(), run_id=run_id)
    assert run.summary().batches_in_flight == 1  # request file uploaded from the bucket

    down = make_runner(artifacts=_s3(s3_bucket, _dead_endpoint()))
    stalled = down.get_run(run_id)
    with pytest.raises(RunTimeoutError):  # never an ArtifactError
        stalled.wait(timeout=1.5, poll_interval=0.05)
    summary = stalled.summary()
    assert summary.status is RunStatus.RUNNING
    assert summary.stalled_chunks == 1
    error = summary.last_error or ""
    assert "collecting batch" not in error  # the chunk's error is the store's own message
    assert "cannot look up" in error and f"s3://{s3_bucket}/runs-here/" in error, error
    assert "batchor-test-secret" not in error and "batchor-test-key" not in error

    summary = up.get_run(run_id).wait(timeout=60, poll_interval=0.05)
    assert summary.status is RunStatus.COMPLETED
    assert summary.stalled_chunks == 0 and summary.last_error is None
    _each_sent_once(run, emulator)


def test_an_outage_longer_than_the_budget_pauses_with_the_reason_and_resume_finishes(
    make_runner: Callable[..., BatchRunner],
    emulator: Any,
    s3_endpoint: str,
    s3_bucket: str,
    run_id: str,
) -> None:
    up = make_runner(artifacts=_s3(s3_bucket, s3_endpoint))
    up.start(_job(), items=_items(), run_id=run_id)

    clock = FakeClock()
    down = make_runner(
        artifacts=_s3(s3_bucket, _dead_endpoint()), clock=clock, transient_backoff_seconds=300.0
    )
    started = clock.now()
    summary = down.get_run(run_id).wait(timeout=7200, poll_interval=60.0)  # fake time
    elapsed = (clock.now() - started).total_seconds()
    assert summary.status is RunStatus.PAUSED
    reason = summary.status_reason or ""
    assert "artifact store unreachable for 30 min" in reason, reason
    assert "collecting batch" in reason and f"s3://{s3_bucket}/runs-here/" in reason
    assert "resume()" in reason
    assert 1800 <= elapsed <= 2100, elapsed

    run = up.get_run(run_id)
    run.resume()
    summary = run.wait(timeout=60, poll_interval=0.05)
    assert summary.status is RunStatus.COMPLETED
    _each_sent_once(run, emulator)


def test_an_unreadable_request_file_before_upload_stalls_until_the_bucket_is_back(
    make_runner: Callable[..., BatchRunner],
    emulator: Any,
    s3_endpoint: str,
    s3_bucket: str,
    run_id: str,
) -> None:
    emulator.faults.http_error(method="POST", path="/v1/files", status=503, count=1)
    up = make_runner(artifacts=_s3(s3_bucket, s3_endpoint))
    up.start(_job(), items=_items(), run_id=run_id)  # sealed in the bucket, not uploaded
    assert up.get_run(run_id).summary().batches_in_flight == 0

    down = make_runner(artifacts=_s3(s3_bucket, _dead_endpoint()))
    stalled = down.get_run(run_id)
    for _ in range(3):
        stalled.refresh()  # never raises ArtifactError
    summary = stalled.summary()
    assert summary.status is RunStatus.RUNNING, summary.status_reason  # not "missing"
    assert f"s3://{s3_bucket}/runs-here/" in (summary.last_error or ""), summary.last_error

    run = up.get_run(run_id)
    assert run.wait(timeout=60, poll_interval=0.05).status is RunStatus.COMPLETED
    _each_sent_once(run, emulator)


def test_a_local_output_directory_that_cannot_be_written_stalls_the_chunk(
    make_runner: Callable[..., BatchRunner],
    emulator: Any,
    tmp_path: Path,
    run_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    artifacts = LocalArtifactStore(tmp_path / "local-artifacts")
    runner = make_runner(artifacts=artifacts)
    run = runner.start(_job(), items=_items(), run_id=run_id)
    outputs = artifacts.path_for(f"runs/{run_id}/outputs")
    outputs.write_bytes(b"")  # a file where the directory must go: every write fails
    for _ in range(3):
        run.refresh()
    summary = run.summary()
    assert summary.status is RunStatus.RUNNING
    assert summary.stalled_chunks == 1
    assert "cannot write" in (summary.last_error or ""), summary.last_error
    store = ["--store", str(tmp_path / "runs.sqlite3"), "--artifacts", str(artifacts.root)]
    assert cli(["status", run_id, *store]) == 0  # the operator sees why, too
    shown = capsys.readouterr().out
    assert "retrying" in shown and "cannot write" in shown, shown

    outputs.unlink()
    assert run.wait(timeout=60, poll_interval=0.05).status is RunStatus.COMPLETED
    _each_sent_once(run, emulator)


def _one_retry_job() -> BatchJob:
    return BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda it: it.payload["text"],
        retry_policy=RetryPolicy(backoff_seconds=0.3),
    )


def test_retries_that_cannot_be_prepared_while_the_bucket_is_down_say_so_and_wait(
    make_runner: Callable[..., BatchRunner],
    emulator: Any,
    s3_endpoint: str,
    s3_bucket: str,
    run_id: str,
) -> None:
    emulator.faults.line_fault(contains="review 1", kind="server_error", times=1)
    up = make_runner(artifacts=_s3(s3_bucket, s3_endpoint))
    run = up.start(_one_retry_job(), items=_items(), run_id=run_id)
    run.refresh()  # collected: r1 failed and waits 0.3 s for its retry
    assert run.summary().pending_items == 1
    time.sleep(0.4)

    stalled = make_runner(artifacts=_s3(s3_bucket, _dead_endpoint())).get_run(run_id)
    for _ in range(2):
        stalled.refresh()  # reading r1's request line fails: never raises
    summary = stalled.summary()
    assert summary.status is RunStatus.RUNNING
    waiting = summary.waiting_reason or ""
    assert "retries wait for the artifact store" in waiting, waiting
    assert f"s3://{s3_bucket}/runs-here/" in waiting

    summary = run.wait(timeout=60, poll_interval=0.05)
    assert summary.status is RunStatus.COMPLETED and summary.waiting_reason is None
    assert Counter(r.status for r in run.results()) == {ItemStatus.COMPLETED: _N}
    assert emulator.batch_create_count == 2  # the first batch, then r1's retry


def test_a_request_file_deleted_before_its_retries_pauses_the_run_at_once(
    make_runner: Callable[..., BatchRunner], emulator: Any, tmp_path: Path, run_id: str
) -> None:
    emulator.faults.line_fault(contains="review 1", kind="server_error", times=1)
    artifacts = LocalArtifactStore(tmp_path / "local-artifacts")
    run = make_runner(artifacts=artifacts).start(_one_retry_job(), items=_items(), run_id=run_id)
    run.refresh()
    time.sleep(0.4)
    artifacts.path_for(f"runs/{run_id}/requests/c00000.jsonl").unlink()
    run.refresh()  # no retry can be prepared without it: no 30 min loop either
    summary = run.summary()
    assert summary.status is RunStatus.PAUSED
    assert "preparing retries" in (summary.status_reason or ""), summary.status_reason
