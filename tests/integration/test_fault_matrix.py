"""Every scripted provider fault, end to end: the real SDK over HTTP, real SQLite files.

Each test scripts one fault on the emulator, runs the job to its end, and checks the
exact outcome on both sides: the run's counts and each item's attempts and error, and
the emulator's record of what it was sent (no batch created twice, no custom_id received
twice, no item sent more often than its attempts and free resubmissions allow).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    ItemStatus,
    RetryPolicy,
    Run,
    RunStatus,
    RunSummary,
)
from tests.integration.review_model import Review

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
# Keep Retry-After short: a run really waits it out.
RETRY_AFTER = 0.2

_ITEM_IN_LINE = re.compile(rb"review of ([\w-]+) please")


def _items(*ids: str) -> list[BatchItem]:
    return [BatchItem(item_id=i, payload={"text": f"review of {i} please"}) for i in ids]


def _ids(n: int) -> tuple[str, ...]:
    return tuple(f"r{i}" for i in range(n))


def _job(**kwargs: Any) -> BatchJob:
    return BatchJob(
        model="gpt-4o-mini",
        endpoint=CHAT,
        build_request=lambda item: {
            "messages": [{"role": "user", "content": item.payload["text"]}]
        },
        **kwargs,
    )


def _finish(run: Run) -> RunSummary:
    return run.wait(timeout=60, poll_interval=0.05)


def _item_of(line: bytes) -> str:
    found = _ITEM_IN_LINE.search(line)
    assert found is not None, line
    return found.group(1).decode()


def _sends(emulator: Any) -> Counter[str]:
    """How often each item was sent, over every batch the emulator created.

    Also checks that no custom_id was ever received twice.
    """
    counts = emulator.custom_id_counts()
    repeated = {cid: n for cid, n in counts.items() if n != 1}
    assert not repeated, f"custom_ids received more than once: {repeated}"
    sent: Counter[str] = Counter()
    for batch in emulator.batches():
        for line in emulator.file_content(batch["input_file_id"]).splitlines():
            if line.strip():
                sent[_item_of(line)] += 1
    assert sum(sent.values()) == len(counts)
    return sent


def _custom_ids_in(emulator: Any, file_id: str | None) -> set[str]:
    if file_id is None:
        return set()
    lines = emulator.file_content(file_id).splitlines()
    return {json.loads(line)["custom_id"] for line in lines if line.strip()}


def _counts(summary: RunSummary) -> tuple[int, int, int, int]:
    return (
        summary.total_items,
        summary.completed_items,
        summary.failed_items,
        summary.cancelled_items,
    )


def _item(run: Run, item_id: str) -> Any:
    result = run.item(item_id)
    assert result is not None, item_id
    return result


def _assert_all_completed_once(run: Run, emulator: Any, ids: tuple[str, ...]) -> None:
    for item_id in ids:
        result = _item(run, item_id)
        assert result.status is ItemStatus.COMPLETED, (item_id, result.error)
        assert result.attempts == 1 and result.error is None
    assert _sends(emulator) == Counter(dict.fromkeys(ids, 1))


# ---------------------------------------------------------------------- transport faults

TARGETS = {
    "upload": ("POST", "/v1/files"),
    "create": ("POST", "/v1/batches"),
    "poll": ("GET", "/v1/batches/{id}"),
}


def _script(emulator: Any, fault: str, target: str, *, count: int) -> None:
    method, path = TARGETS[target]
    if fault == "429":
        emulator.faults.http_error(
            method=method, path=path, status=429, count=count, retry_after=RETRY_AFTER
        )
    elif fault == "500":
        emulator.faults.http_error(method=method, path=path, status=500, count=count)
    else:
        emulator.faults.drop_connection(method=method, path=path, count=count)


@pytest.mark.parametrize("target", sorted(TARGETS))
@pytest.mark.parametrize("fault", ["429", "500", "drop"])
def test_transient_http_faults_delay_but_never_duplicate(
    make_runner: Callable[..., BatchRunner], emulator: Any, fault: str, target: str
) -> None:
    # Two failures in a row hit the same chunk: the step stops submitting on an error.
    _script(emulator, fault, target, count=2)
    ids = _ids(4)
    run = make_runner().start(
        _job(chunk_policy=ChunkPolicy(max_requests=2)),
        items=_items(*ids),
        run_id=f"{fault}-{target}",
    )
    summary = _finish(run)
    assert summary.status is RunStatus.COMPLETED
    assert _counts(summary) == (4, 4, 0, 0)
    assert emulator.batch_create_count == 2
    assert len(emulator.batches()) == 2
    _assert_all_completed_once(run, emulator, ids)


@pytest.mark.parametrize("drop", [False, True], ids=["500", "dropped"])
def test_commit_then_fail_on_create_adopts_the_existing_batch(
    make_runner: Callable[..., BatchRunner], emulator: Any, drop: bool
) -> None:
    emulator.faults.commit_then_fail(count=2, status=500, drop_connection=drop)
    ids = _ids(4)
    run = make_runner().start(
        _job(chunk_policy=ChunkPolicy(max_requests=2)), items=_items(*ids), run_id="commit"
    )
    summary = _finish(run)
    assert summary.status is RunStatus.COMPLETED
    assert _counts(summary) == (4, 4, 0, 0)
    assert emulator.batch_create_count == 2  # one per chunk, none created twice
    chunks = {b["metadata"]["batchor_chunk"] for b in emulator.batches()}
    assert len(chunks) == 2
    _assert_all_completed_once(run, emulator, ids)


# ---------------------------------------------------------------------- whole-batch faults


def test_failed_batch_spends_the_only_attempt(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.fail_batch(code="invalid_request")
    ids = _ids(3)
    run = make_runner().start(
        _job(retry_policy=RetryPolicy(max_attempts=1)), items=_items(*ids), run_id="failed-1"
    )
    summary = _finish(run)
    assert summary.status is RunStatus.COMPLETED
    assert _counts(summary) == (3, 0, 3, 0)
    assert emulator.batch_create_count == 1
    for item_id in ids:
        result = _item(run, item_id)
        assert result.status is ItemStatus.FAILED and result.attempts == 1
        assert result.error is not None and result.error.code == "batch_failed"
        assert "invalid_request" in result.error.message
    assert _sends(emulator) == Counter(dict.fromkeys(ids, 1))


def test_failed_batch_is_retried_with_a_second_attempt(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.fail_batch(code="invalid_request")
    ids = _ids(3)
    run = make_runner().start(
        _job(retry_policy=RetryPolicy(max_attempts=2)), items=_items(*ids), run_id="failed-2"
    )
    summary = _finish(run)
    assert _counts(summary) == (3, 3, 0, 0)
    assert emulator.batch_create_count == 2
    assert [b["status"] for b in emulator.batches()] == ["failed", "completed"]
    for item_id in ids:
        result = _item(run, item_id)
        assert result.status is ItemStatus.COMPLETED and result.attempts == 2
    assert _sends(emulator) == Counter(dict.fromkeys(ids, 2))


def test_token_limit_resubmits_without_spending_an_attempt(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.fail_batch(code="token_limit_exceeded")
    ids = _ids(3)
    # max_attempts=1: had the token limit spent an attempt, the items would end failed.
    run = make_runner().start(
        _job(retry_policy=RetryPolicy(max_attempts=1)), items=_items(*ids), run_id="tokens"
    )
    summary = _finish(run)
    assert _counts(summary) == (3, 3, 0, 0)
    assert emulator.batch_create_count == 2
    for item_id in ids:
        result = _item(run, item_id)
        assert result.status is ItemStatus.COMPLETED and result.attempts == 1
    assert _sends(emulator) == Counter(dict.fromkeys(ids, 2))


def test_expired_batch_keeps_finished_rows_and_resubmits_the_rest_for_free(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.expire_batch(completed_fraction=0.5)
    ids = _ids(4)
    run = make_runner().start(
        _job(retry_policy=RetryPolicy(max_attempts=1)), items=_items(*ids), run_id="expired"
    )
    summary = _finish(run)
    assert _counts(summary) == (4, 4, 0, 0)
    assert emulator.batch_create_count == 2
    first = emulator.batches()[0]
    assert first["status"] == "expired"
    done_first = _custom_ids_in(emulator, first["output_file_id"])
    assert len(done_first) == 2
    for item_id in ids:
        result = _item(run, item_id)
        assert result.status is ItemStatus.COMPLETED and result.attempts == 1
    sent = _sends(emulator)
    assert sorted(sent.values()) == [1, 1, 2, 2]
    # The rows that finished in the expired batch were kept, not sent again.
    inputs = emulator.file_content(first["input_file_id"]).splitlines()
    kept = {_item_of(line) for line in inputs if json.loads(line)["custom_id"] in done_first}
    assert {i for i, n in sent.items() if n == 1} == kept


def test_repeated_expiry_stops_after_the_free_resubmit_bound(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    # One free resubmission, then expiries spend attempts: batch 1 free, batches 2 and 3
    # spend the two attempts, so three expiries end the items as failed.
    emulator.faults.expire_batch(completed_fraction=0.0, count=3)
    ids = _ids(2)
    run = make_runner().start(
        _job(retry_policy=RetryPolicy(max_attempts=2, max_free_resubmits=1)),
        items=_items(*ids),
        run_id="expiry-loop",
    )
    summary = _finish(run)
    assert summary.status is RunStatus.COMPLETED
    assert _counts(summary) == (2, 0, 2, 0)
    assert emulator.batch_create_count == 3
    assert [b["status"] for b in emulator.batches()] == ["expired"] * 3
    for item_id in ids:
        result = _item(run, item_id)
        assert result.status is ItemStatus.FAILED and result.attempts == 2
        assert result.error is not None and result.error.code == "batch_expired"
        assert "resubmitted 1 times" in result.error.message
    assert _sends(emulator) == Counter(dict.fromkeys(ids, 3))


# ---------------------------------------------------------------------- line faults


def test_line_errors_and_invalid_json_in_one_batch_are_retried_once(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.line_fault(contains="flakyerr", kind="error", times=1)
    emulator.faults.line_fault(contains="badjson", kind="invalid_json", times=1)
    ids = ("ok0", "flakyerr", "ok1", "badjson")
    run = make_runner().start(
        _job(output_model=Review, retry_policy=RetryPolicy(max_attempts=2)),
        items=_items(*ids),
        run_id="lines",
    )
    summary = _finish(run)
    assert _counts(summary) == (4, 4, 0, 0)
    assert emulator.batch_create_count == 2
    expected_attempts = {"ok0": 1, "ok1": 1, "flakyerr": 2, "badjson": 2}
    for item_id, attempts in expected_attempts.items():
        result = _item(run, item_id)
        assert result.status is ItemStatus.COMPLETED and result.attempts == attempts
        assert isinstance(result.output, Review) and result.error is None
    assert _sends(emulator) == Counter(expected_attempts)


# ---------------------------------------------------------------------- operator control


def test_cancel_mid_flight_keeps_finished_rows_and_creates_nothing_more(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.hold_batches(True, completed_fraction=0.5)
    ids = _ids(8)
    policy = ChunkPolicy(max_requests=4, max_inflight_batches=1)
    run = make_runner().start(_job(chunk_policy=policy), items=_items(*ids), run_id="cancel")
    assert emulator.batch_create_count == 1
    assert run.summary().batches_in_flight == 1

    run.cancel()
    summary = _finish(run)
    assert summary.status is RunStatus.CANCELLED
    # Half of the held batch finished; its other half and the unsubmitted chunk are cancelled.
    assert _counts(summary) == (8, 2, 0, 6)
    (batch,) = emulator.batches()
    assert batch["status"] == "cancelled"
    assert batch["request_counts"]["completed"] == 2
    finished = _custom_ids_in(emulator, batch["output_file_id"])
    assert len(finished) == 2

    emulator.release_batches()
    for _ in range(3):
        assert run.refresh().status is RunStatus.CANCELLED
    assert emulator.batch_create_count == 1
    statuses = Counter(_item(run, i).status for i in ids)
    assert statuses == {ItemStatus.COMPLETED: 2, ItemStatus.CANCELLED: 6}
    assert _sends(emulator) == Counter(dict.fromkeys(ids[:4], 1))


def test_pause_stops_submissions_until_resume(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    ids = _ids(6)
    policy = ChunkPolicy(max_requests=2, max_inflight_batches=1)
    run = make_runner().start(_job(chunk_policy=policy), items=_items(*ids), run_id="pause")
    # Full chunks are submitted during ingest; with one batch in flight at a time, start()
    # has submitted the first and possibly, after collecting it, the second.
    created = emulator.batch_create_count
    assert created in (1, 2)

    assert run.pause().status is RunStatus.PAUSED
    for _ in range(4):
        summary = run.refresh()
    assert summary.status is RunStatus.PAUSED
    assert summary.completed_items == 2 * created  # batches in flight are still collected
    assert summary.batches_in_flight == 0
    assert emulator.batch_create_count == created  # but nothing new is submitted

    run.resume()
    summary = _finish(run)
    assert summary.status is RunStatus.COMPLETED
    assert _counts(summary) == (6, 6, 0, 0)
    assert emulator.batch_create_count == 3
    _assert_all_completed_once(run, emulator, ids)


def test_insufficient_quota_pauses_the_run_until_resumed(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.http_error(
        method="POST",
        path="/v1/batches",
        status=429,
        code="insufficient_quota",
        retry_after=RETRY_AFTER,
        count=100,
    )
    ids = _ids(3)
    run = make_runner().start(_job(), items=_items(*ids), run_id="quota")
    for _ in range(3):
        summary = run.refresh()
    assert summary.status is RunStatus.PAUSED
    assert summary.status_reason is not None and "insufficient_quota" in summary.status_reason
    assert summary.pending_items == 3
    assert emulator.batch_create_count == 0

    emulator.faults.clear()
    run.resume()
    summary = _finish(run)
    assert summary.status is RunStatus.COMPLETED
    assert _counts(summary) == (3, 3, 0, 0)
    assert emulator.batch_create_count == 1
    _assert_all_completed_once(run, emulator, ids)
