"""The real openai SDK against the emulator over HTTP, with real SQLite files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
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
)
from tests.integration.review_model import Review

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"


def _chat_body(item: BatchItem) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": item.payload["text"]}]}


def _responses_body(item: BatchItem) -> dict[str, Any]:
    return {"input": [{"role": "user", "content": item.payload["text"]}]}


def _items(n: int, text: str = "review number") -> list[BatchItem]:
    return [BatchItem(item_id=f"r{i}", payload={"text": f"{text} {i}"}) for i in range(n)]


def _job(endpoint: str = CHAT, **kwargs: Any) -> BatchJob:
    builder = _chat_body if endpoint == CHAT else _responses_body
    return BatchJob(model="gpt-4o-mini", endpoint=endpoint, build_request=builder, **kwargs)


@pytest.mark.parametrize("endpoint", [CHAT, RESPONSES])
def test_typed_results_with_optional_fields(
    make_runner: Callable[..., BatchRunner], endpoint: str
) -> None:
    runner = make_runner()
    run = runner.start(
        _job(endpoint, output_model=Review, request_options={"temperature": 0}),
        items=_items(12),
        run_id=f"typed-{endpoint.rsplit('/', 1)[-1]}",
    )
    summary = run.wait(timeout=60, poll_interval=0.05)
    assert summary.status is RunStatus.COMPLETED
    assert (summary.total_items, summary.completed_items, summary.failed_items) == (12, 12, 0)
    assert summary.usage.input_tokens > 0 and summary.usage.output_tokens > 0
    results = list(run.results())
    assert sorted(r.item_id for r in results) == sorted(f"r{i}" for i in range(12))
    for r in results:
        assert isinstance(r.output, Review)
        assert r.status is ItemStatus.COMPLETED and r.attempts == 1 and r.error is None
        assert r.usage is not None and r.usage.total_tokens > 0


@pytest.mark.parametrize("endpoint", [CHAT, RESPONSES])
def test_text_results_map_back_to_their_items_despite_shuffled_output(
    make_runner: Callable[..., BatchRunner], emulator: Any, endpoint: str
) -> None:
    run = make_runner().start(_job(endpoint), items=_items(20, "unique text"), run_id="text")
    assert run.wait(timeout=60, poll_interval=0.05).completed_items == 20
    for r in run.results():
        assert isinstance(r.output, str)
        # The emulator echoes the prompt; output order differs from input order, so this
        # only holds if custom ids were mapped back correctly.
        assert r.output.endswith(f"unique text {r.item_id[1:]}")


def test_requests_are_packed_into_as_few_batches_as_the_policy_allows(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    job = _job(chunk_policy=ChunkPolicy(max_requests=4))
    runner = make_runner(ingest_slice_size=3)  # slices never decide batch boundaries
    run = runner.start(job, items=_items(10), run_id="packing")
    summary = run.wait(timeout=60, poll_interval=0.05)
    assert summary.batches_total == 3
    assert emulator.batch_create_count == 3
    assert summary.completed_items == 10


def test_per_line_errors_are_retried_then_recorded(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.line_fault(contains="flaky", kind="error", times=1)
    emulator.faults.line_fault(contains="doomed", kind="error")
    items = [
        BatchItem(item_id="ok", payload={"text": "fine"}),
        BatchItem(item_id="flaky", payload={"text": "flaky once"}),
        BatchItem(item_id="doomed", payload={"text": "doomed always"}),
    ]
    run = make_runner().start(
        _job(retry_policy=RetryPolicy(max_attempts=3)), items=items, run_id="line-errors"
    )
    summary = run.wait(timeout=60, poll_interval=0.05)
    assert (summary.completed_items, summary.failed_items) == (2, 1)
    by_id = {r.item_id: r for r in run.results()}
    assert by_id["ok"].attempts == 1
    assert by_id["flaky"].attempts == 2 and by_id["flaky"].status is ItemStatus.COMPLETED
    doomed = by_id["doomed"]
    assert doomed.status is ItemStatus.FAILED and doomed.attempts == 3
    assert doomed.error is not None and "400" in doomed.error.message + doomed.error.code
    # Each attempt used a fresh custom_id, and no item was sent more than its attempts.
    counts = emulator.custom_id_counts()
    assert all(n == 1 for n in counts.values())
    assert len(counts) == 1 + 2 + 3


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("invalid_json", "invalid_json"),
        ("schema_mismatch", "schema_mismatch"),
        ("refusal", "refusal"),
        ("length", "length"),
    ],
)
def test_bad_structured_outputs_are_item_errors_not_crashes(
    make_runner: Callable[..., BatchRunner], emulator: Any, kind: str, code: str
) -> None:
    emulator.faults.line_fault(contains="poison", kind=kind)
    items = [
        BatchItem(item_id="good", payload={"text": "fine"}),
        BatchItem(item_id="bad", payload={"text": "poison"}),
    ]
    run = make_runner().start(
        _job(output_model=Review, retry_policy=RetryPolicy(max_attempts=2)),
        items=items,
        run_id=f"bad-{kind}",
    )
    summary = run.wait(timeout=60, poll_interval=0.05)
    assert (summary.completed_items, summary.failed_items) == (1, 1)
    bad = run.item("bad")
    assert bad is not None and bad.status is ItemStatus.FAILED and bad.attempts == 2
    assert bad.error is not None and bad.error.code == code
    good = run.item("good")
    assert good is not None and isinstance(good.output, Review)


def test_invalid_json_once_then_valid_completes_on_retry(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.line_fault(contains="hiccup", kind="invalid_json", times=1)
    run = make_runner().start(
        _job(output_model=Review),
        items=[BatchItem(item_id="x", payload={"text": "hiccup"})],
        run_id="json-retry",
    )
    run.wait(timeout=60, poll_interval=0.05)
    result = run.item("x")
    assert result is not None and result.status is ItemStatus.COMPLETED and result.attempts == 2
    assert isinstance(result.output, Review)


def test_get_run_in_a_fresh_process_finishes_the_run(
    tmp_path: Path, make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    runner = make_runner()
    run = runner.start(_job(output_model=Review), items=_items(7), run_id="rehydrate")
    assert run.summary().batches_in_flight == 1  # submitted, not collected yet
    script = f"""
import json
from batchor_core import BatchRunner, SQLiteStorage, LocalArtifactStore, OpenAIProviderConfig
runner = BatchRunner(
    storage=SQLiteStorage({str(tmp_path / "runs.sqlite3")!r}),
    artifacts=LocalArtifactStore({str(tmp_path / "artifacts")!r}),
    provider=OpenAIProviderConfig(api_key="sk-test", base_url={emulator.base_url!r}),
)
run = runner.get_run("rehydrate")
s = run.wait(timeout=60, poll_interval=0.05)
first = next(iter(run.results()))
print(json.dumps({{"status": s.status.value, "completed": s.completed_items,
                  "type": type(first.output).__name__}}))
"""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"status": "completed", "completed": 7, "type": "Review"}
    # And the original handle sees the same state, typed.
    again = runner.get_run("rehydrate")
    assert again.summary().completed_items == 7
    assert all(isinstance(r.output, Review) for r in again.results())


def test_start_reports_ingest_progress_per_slice(make_runner: Callable[..., BatchRunner]) -> None:
    seen: list[int] = []
    run = make_runner(ingest_slice_size=4).start(
        _job(),
        items=_items(10),
        run_id="progress",
        on_progress=lambda s: seen.append(s.total_items),
    )
    assert seen == [4, 8, 10]
    assert run.wait(timeout=60, poll_interval=0.05).completed_items == 10
