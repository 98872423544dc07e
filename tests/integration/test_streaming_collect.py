"""A chunk larger than the record batch is collected in parts with the same outcomes.

Collection reads a batch's files line by line and records outcomes a few thousand at a
time (here: 4 at a time, so chunks of 23 take several parts). Lines of every kind
(completed, errored, invalid JSON, expired) and items with no line at all are spread over
the parts; the run must end exactly as if the chunk had been recorded in one transaction.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    ItemStatus,
    RetryPolicy,
    RunStatus,
    SQLiteStorage,
)
from batchor_core.ports import ChunkRecord, ItemOutcome
from tests.integration.review_model import Review

pytestmark = pytest.mark.integration

N = 23


class PartCountingStorage(SQLiteStorage):
    """The real SQLite store, remembering how each record_outcomes call was made."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.parts: list[tuple[bool, int]] = []

    def record_outcomes(
        self,
        run_id: str,
        chunk: ChunkRecord,
        outcomes: Sequence[ItemOutcome],
        *,
        final: bool = True,
        lease_owner: str | None = None,
    ) -> int:
        self.parts.append((final, len(outcomes)))
        return super().record_outcomes(
            run_id, chunk, outcomes, final=final, lease_owner=lease_owner
        )


def _items() -> list[BatchItem]:
    marks = {3: "flakyerr", 9: "badjson", 17: "broken", 21: "flakyerr"}
    return [
        BatchItem(item_id=f"r{i:02d}", payload={"text": f"{marks.get(i, 'plain')} review {i}"})
        for i in range(N)
    ]


def _job() -> BatchJob:
    return BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda item: str(item.payload["text"]),
        output_model=Review,
        chunk_policy=ChunkPolicy(max_requests=N),
        retry_policy=RetryPolicy(max_attempts=2),
    )


def _runner(make_runner: Callable[..., BatchRunner], tmp_path: Path) -> BatchRunner:
    runner = make_runner(storage=PartCountingStorage(tmp_path / "parts.sqlite3"))
    runner.stepper.collector.record_batch = 4
    return runner


def test_a_chunk_larger_than_the_record_batch_is_recorded_in_parts(
    make_runner: Callable[..., BatchRunner], emulator: Any, tmp_path: Path
) -> None:
    emulator.faults.line_fault(contains="flakyerr", kind="error", times=1)
    emulator.faults.line_fault(contains="badjson", kind="invalid_json", times=1)
    emulator.faults.line_fault(contains="broken", kind="invalid_json")  # every attempt
    emulator.faults.expire_batch(completed_fraction=0.6)  # the rest: batch_expired lines
    runner = _runner(make_runner, tmp_path)
    run = runner.start(_job(), items=_items(), run_id="parts")
    summary = run.wait(timeout=60, poll_interval=0.05)

    assert summary.status is RunStatus.COMPLETED
    assert (summary.completed_items, summary.failed_items) == (N - 1, 1)
    storage = runner.storage
    assert isinstance(storage, PartCountingStorage)
    first_chunk = storage.parts[: N // 4 + 1]
    assert [final for final, _ in first_chunk] == [False] * (N // 4) + [True]
    assert all(0 < size <= 4 for _, size in first_chunk[:-1])
    assert sum(size for _, size in first_chunk) == N  # every item once, in some part
    results = {r.item_id: r for r in run.results()}
    assert len(results) == N
    # Attempts: an expired line is free, an error or invalid output spends one.
    for item in _items():
        result = results[item.item_id]
        text = str(item.payload["text"])
        if "broken" in text:
            assert result.status is ItemStatus.FAILED and result.attempts == 2
            assert result.error is not None and result.error.code == "invalid_json"
        else:
            assert result.status is ItemStatus.COMPLETED and isinstance(result.output, Review)
    sent = Counter(emulator.custom_id_counts())
    assert all(n == 1 for n in sent.values())
    record = storage.load_run("parts")
    assert record is not None
    assert record.input_tokens > 0 and record.output_tokens > 0


def test_items_without_a_line_are_recorded_in_parts_too(
    make_runner: Callable[..., BatchRunner], emulator: Any, tmp_path: Path
) -> None:
    # A cancelled batch leaves out the lines it never ran: 18 of 23 items have no line.
    emulator.faults.hold_batches(True, completed_fraction=0.25)
    runner = _runner(make_runner, tmp_path)
    run = runner.start(_job(), items=_items(), run_id="missing")
    run.cancel()
    summary = run.wait(timeout=60, poll_interval=0.05)

    assert summary.status is RunStatus.CANCELLED
    done = N * 25 // 100
    assert (summary.completed_items, summary.cancelled_items) == (done, N - done)
    storage = runner.storage
    assert isinstance(storage, PartCountingStorage)
    assert storage.parts[-1][0] is True
    assert sum(size for _, size in storage.parts) == N
    assert len(storage.parts) >= (N - done) // 4  # the missing items took several parts
    statuses = Counter(r.status for r in run.results())
    assert statuses == {ItemStatus.COMPLETED: done, ItemStatus.CANCELLED: N - done}
    record = storage.load_run("missing")
    assert record is not None and record.cancelled_items == N - done
