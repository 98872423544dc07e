"""Replayable requests and orphan uploads: what a crash right after an upload leaves behind."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchor_core import BatchRunner, FsspecArtifactStore, RunStatus
from batchor_core.packing import chunk_key
from tests.crash import run_worker
from tests.crash.worker import items, job

pytestmark = pytest.mark.integration


def test_a_crash_after_upload_leaves_no_orphan_file(tmp_path: Path, emulator: Any) -> None:
    args = (emulator.base_url, "orphan", "10")
    killed = run_worker("tests.crash.worker", tmp_path, *args, crash="submit.uploaded:1")
    assert killed.returncode == -signal.SIGKILL
    assert len([f for f in emulator.files() if f["purpose"] == "batch"]) == 1  # the orphan
    done = run_worker("tests.crash.worker", tmp_path, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    inputs = [f for f in emulator.files() if f["purpose"] == "batch"]
    # Two chunks (7 + 3 requests): exactly one input file each; the orphan was deleted.
    assert len(inputs) == 2
    used = {b["input_file_id"] for b in emulator.batches()}
    assert {f["id"] for f in inputs} == used


def test_a_tampered_request_file_is_never_uploaded(
    make_runner: Callable[..., BatchRunner], emulator: Any, tmp_path: Path
) -> None:
    emulator.faults.http_error(method="POST", path="/v1/files", status=503, count=1)
    runner = make_runner()
    run = runner.start(job(), items=items(5), run_id="tamper")
    assert emulator.batch_create_count == 0  # the upload failed; the chunk waits, sealed
    request_file = runner.artifacts.path_for(chunk_key("tamper", "c00000"))  # type: ignore[attr-defined]
    request_file.write_bytes(request_file.read_bytes().replace(b"review", b"REVIEW"))
    # No retry fixes that: the run pauses and says why, rather than raise at every step.
    summary = run.refresh()
    assert summary.status is RunStatus.PAUSED
    assert summary.status_reason is not None
    assert "changed since it was prepared" in summary.status_reason
    assert run.wait(timeout=30, poll_interval=0.05).status is RunStatus.PAUSED
    assert emulator.batch_create_count == 0
    assert run.resume().status is RunStatus.PAUSED  # still changed: paused again


@pytest.mark.parametrize("tamper", ["overwrite", "delete"])
def test_a_request_file_changed_in_the_bucket_pauses_the_run(
    make_runner: Callable[..., BatchRunner], emulator: Any, s3_bucket: str, tamper: str
) -> None:
    emulator.faults.http_error(method="POST", path="/v1/files", status=503, count=1)
    url = f"s3://{s3_bucket}/batchor"
    runner = make_runner(artifacts=url)
    run = runner.start(job(), items=items(5), run_id="tamper-s3")
    assert emulator.batch_create_count == 0  # sealed and published, not uploaded
    other_host = FsspecArtifactStore(url)  # someone else with access to the bucket
    key = chunk_key("tamper-s3", "c00000")
    if tamper == "overwrite":
        with other_host.open_read(key) as fh:
            changed = fh.read().replace(b"review", b"REVIEW")
        other_host.write_stream(key, iter([changed]))
    else:
        other_host.delete(key)
    summary = run.wait(timeout=30, poll_interval=0.05)
    assert summary.status is RunStatus.PAUSED
    expected = "changed since it was prepared" if tamper == "overwrite" else "is missing"
    assert summary.status_reason is not None and expected in summary.status_reason
    assert key in summary.status_reason
    assert emulator.files() == [] and emulator.batch_create_count == 0


def test_operator_controls_by_run_id(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.hold_batches(True, completed_fraction=0.0)
    runner = make_runner()
    runner.start(job(), items=items(10), run_id="by-id")
    assert runner.pause("by-id").status is RunStatus.PAUSED
    assert runner.resume("by-id").status is RunStatus.RUNNING
    summary = runner.cancel("by-id", reason="operator said so")
    emulator.release_batches()
    summary = runner.get_run("by-id").wait(timeout=30, poll_interval=0.05)
    assert summary.status is RunStatus.CANCELLED
    assert summary.status_reason == "operator said so"
    assert summary.cancelled_items == 10
