"""Enqueued-token budgets, usage and cost, end to end: the real SDK over HTTP against the
emulator configured with an enqueued-token limit, real SQLite files, real Postgres.

The emulator enforces the limit as OpenAI does (a batch whose tokens, at 4 bytes per
token, plus those of other batches in progress exceed it ends ``failed`` with
``token_limit_exceeded``), and batches stay ``in_progress`` for several polls
(stepwise), so a runner that over-submits is caught by the emulator, not by our code.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    EnqueueLimit,
    ItemStatus,
    LocalArtifactStore,
    OpenAIProviderConfig,
    Price,
    RunStatus,
    RunSummary,
    SQLiteStorage,
    Usage,
)
from batchor_core.testing import OpenAIEmulator
from tests.conftest import POSTGRES_URL, postgres_param

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
LIMIT = 600
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stepwise() -> Iterator[OpenAIEmulator]:
    """Batches stay in progress for 3 polls; the emulator enforces LIMIT."""
    with OpenAIEmulator(
        processing="stepwise", in_progress_polls=3, enqueued_token_limit=LIMIT, seed=3
    ) as emu:
        yield emu


def _runner(tmp_path: Path, emu: OpenAIEmulator, **config: Any) -> BatchRunner:
    return BatchRunner(
        storage=SQLiteStorage(tmp_path / "runs.sqlite3"),
        artifacts=LocalArtifactStore(tmp_path / "artifacts"),
        provider=OpenAIProviderConfig(api_key="sk-test", base_url=emu.base_url, **config),
        transient_backoff_seconds=0.0,
        token_limit_backoff_seconds=0.0,
        create_grace_seconds=0.0,
    )


def _job(**kwargs: Any) -> BatchJob:
    return BatchJob(
        model=MODEL,
        build_prompt=lambda item: f"summarise item {item.item_id} " + "words " * 20,
        **kwargs,
    )


def _items(n: int, prefix: str = "i") -> list[BatchItem]:
    return [BatchItem(item_id=f"{prefix}{i}") for i in range(n)]


def _batch_tokens(emu: OpenAIEmulator, batch: dict[str, Any]) -> int:
    """The emulator's own count of a batch's enqueued tokens (input bytes / 4)."""
    return len(emu.file_content(batch["input_file_id"])) // 4


def _rejected(emu: OpenAIEmulator) -> list[dict[str, Any]]:
    return [
        b
        for b in emu.batches()
        if b["status"] == "failed"
        and any(e["code"] == "token_limit_exceeded" for e in b["errors"]["data"])
    ]


def _wait(run: Any, seen: list[RunSummary] | None = None) -> RunSummary:
    return run.wait(  # type: ignore[no-any-return]
        timeout=120, poll_interval=0.01, on_progress=seen.append if seen is not None else None
    )


def test_a_run_several_times_the_limit_completes_in_waves(
    tmp_path: Path, stepwise: OpenAIEmulator
) -> None:
    limits = {MODEL: EnqueueLimit(tokens=LIMIT)}
    with _runner(tmp_path, stepwise, enqueue_limits=limits) as runner:
        seen: list[RunSummary] = []
        run = runner.start(_job(), items=_items(80), run_id="waves")
        summary = _wait(run, seen)
    assert summary.status is RunStatus.COMPLETED and summary.completed_items == 80
    batches = stepwise.batches()
    total = sum(_batch_tokens(stepwise, b) for b in batches)
    assert total > 4 * LIMIT  # the run is several times the limit...
    assert all(_batch_tokens(stepwise, b) <= LIMIT for b in batches)  # ...packed to fit it
    assert len(batches) >= math.ceil(total / LIMIT)
    # The emulator would have failed any batch that did not fit with those in progress.
    assert _rejected(stepwise) == []
    waits = [s.waiting_reason for s in seen if s.waiting_reason]
    assert waits and "waiting for enqueued-token budget" in waits[0]
    assert summary.waiting_reason is None


def test_the_budget_is_the_job_s_when_it_sets_one(tmp_path: Path, stepwise: OpenAIEmulator) -> None:
    with _runner(tmp_path, stepwise) as runner:
        run = runner.start(
            _job(enqueue_limit=EnqueueLimit(tokens=LIMIT)), items=_items(40), run_id="job-limit"
        )
        summary = _wait(run)
    assert summary.status is RunStatus.COMPLETED
    assert _rejected(stepwise) == []
    assert len(stepwise.batches()) >= 3


def test_without_a_limit_the_emulator_rejects_what_the_budget_prevents(
    tmp_path: Path, stepwise: OpenAIEmulator
) -> None:
    # The control: the same run with no EnqueueLimit hits token_limit_exceeded, so the
    # tests above can fail.
    with _runner(tmp_path, stepwise) as runner:
        run = runner.start(_job(), items=_items(80), run_id="no-limit")
        run.refresh()
        run.refresh()
    assert _rejected(stepwise)


def test_a_request_larger_than_the_limit_fails_with_a_clear_error(
    tmp_path: Path, stepwise: OpenAIEmulator
) -> None:
    big = BatchItem(item_id="huge", payload={"text": "x" * (LIMIT * 8)})
    job = BatchJob(
        model=MODEL,
        build_prompt=lambda item: str(item.payload.get("text") or item.item_id),
        enqueue_limit=EnqueueLimit(tokens=LIMIT),
    )
    with _runner(tmp_path, stepwise) as runner:
        run = runner.start(job, items=[big, *_items(3)], run_id="huge")
        summary = _wait(run)
        huge = run.item("huge")
    assert summary.status is RunStatus.COMPLETED and summary.completed_items == 3
    assert huge is not None and huge.status is ItemStatus.FAILED
    assert huge.error is not None and huge.error.code == "request_too_large"
    assert "enqueued-token limit" in huge.error.message


# --------------------------------------------------------------------------- shared budget


@pytest.mark.parametrize("kind", ["sqlite", postgres_param()])
def test_two_runs_in_two_processes_share_the_budget(
    kind: str, tmp_path: Path, stepwise: OpenAIEmulator
) -> None:
    store = str(tmp_path / "shared.sqlite3") if kind == "sqlite" else str(POSTGRES_URL)
    tag = uuid.uuid4().hex[:10]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.budget_worker",
                store,
                str(tmp_path / "artifacts"),
                stepwise.base_url,
                f"{kind}-{tag}-{n}",
                str(LIMIT),
                "40",
                f"model-{tag}",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    outs = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err[-3000:]
        assert out.split() == ["completed", "40"]
    batches = stepwise.batches()
    runs = {b["metadata"]["batchor_run_id"] for b in batches}
    assert len(runs) == 2  # both runs really submitted to the same emulator
    assert _rejected(stepwise) == []  # and together never exceeded the limit
    assert sum(_batch_tokens(stepwise, b) for b in batches) > 2 * LIMIT


def test_a_run_waiting_on_a_run_no_process_advances_names_it(
    tmp_path: Path, stepwise: OpenAIEmulator
) -> None:
    # Run A's batch holds the budget until A collects it. When A's process is gone (or A
    # was paused and nothing waits on it), the batch may be long finished at the
    # provider while B waits for up to 25 h: B's reason must say who holds the budget
    # and what releases it, or the wait is silent.
    limits = {MODEL: EnqueueLimit(tokens=LIMIT)}
    with _runner(tmp_path, stepwise, enqueue_limits=limits) as gone:
        gone.start(_job(), items=_items(8, "a"), run_id="holder")
    # A run whose lease lapsed longer than this is not being advanced. Long enough that
    # the holder, stepped just before this runner starts, is not flagged yet on a loaded
    # machine (0.3 s was not: starting the waiter alone can take longer).
    ttl = 2.0
    with BatchRunner(
        storage=SQLiteStorage(tmp_path / "runs.sqlite3"),
        artifacts=LocalArtifactStore(tmp_path / "artifacts"),
        provider=OpenAIProviderConfig(
            api_key="sk-test", base_url=stepwise.base_url, enqueue_limits=limits
        ),
        create_grace_seconds=0.0,
        lease_ttl_seconds=ttl,
    ) as runner:
        waiter = runner.start(_job(), items=_items(8, "b"), run_id="waiter")
        reason = waiter.refresh().waiting_reason
        assert reason is not None and "waiting for enqueued-token budget" in reason
        assert "run 'holder': ~" in reason and "running" in reason
        # Just stepped (as between the polls of a live wait()): not flagged.
        assert "no process is advancing it" not in reason
        time.sleep(ttl * 2)
        reason = waiter.refresh().waiting_reason
        assert reason is not None and "no process is advancing it" in reason
        assert "waited on or resumed" in reason
        runner.get_run("holder").pause()
        reason = waiter.refresh().waiting_reason
        assert reason is not None and "run 'holder'" in reason and "paused" in reason
        # Doing what the reason says releases the budget (a paused run's batches in
        # flight are still collected; here that finishes its only items).
        held = runner.get_run("holder").wait(timeout=60, poll_interval=0.01)
        assert held.batches_in_flight == 0
        summary = _wait(waiter)
    assert summary.status is RunStatus.COMPLETED and summary.waiting_reason is None
    assert _rejected(stepwise) == []


def test_batches_packed_for_a_higher_limit_are_repacked_when_it_is_lowered(
    tmp_path: Path, stepwise: OpenAIEmulator
) -> None:
    # What the pause after repeated token_limit_exceeded tells users to do: lower
    # EnqueueLimit, then resume. Batches already packed for the old limit can never fit
    # the new one; they must not wait for budget forever.
    with _runner(tmp_path, stepwise, enqueue_limits={MODEL: EnqueueLimit(tokens=LIMIT)}) as old:
        run = old.start(_job(), items=_items(24), run_id="lowered")
        packed = [c for c in old.storage.list_chunks("lowered") if c.batch_id is None]
        assert packed and max(c.est_tokens for c in packed) > LIMIT // 2
    lower = {MODEL: EnqueueLimit(tokens=LIMIT // 2)}
    with _runner(tmp_path, stepwise, enqueue_limits=lower) as runner:
        run = runner.get_run("lowered")
        summary = run.wait(timeout=30, poll_interval=0.01)
        assert summary.status is RunStatus.COMPLETED and summary.completed_items == 24
        # No attempt was spent on the repacking.
        assert all(r.attempts == 1 for r in run.results())
    created_later = stepwise.batches()[1:]
    assert created_later and all(_batch_tokens(stepwise, b) <= LIMIT // 2 for b in created_later)
    assert _rejected(stepwise) == []


def test_a_request_over_a_lowered_limit_fails_instead_of_being_repacked_forever(
    tmp_path: Path, stepwise: OpenAIEmulator
) -> None:
    with _runner(tmp_path, stepwise, enqueue_limits={MODEL: EnqueueLimit(tokens=LIMIT)}) as old:
        old.start(_job(), items=_items(24), run_id="too-low")
    one_request = 50  # each request line is about 70 tokens
    lower = {MODEL: EnqueueLimit(tokens=one_request)}
    with _runner(tmp_path, stepwise, enqueue_limits=lower) as runner:
        run = runner.get_run("too-low")
        summary = run.wait(timeout=30, poll_interval=0.01)
        assert summary.status is RunStatus.COMPLETED
        failed = [r for r in run.results() if r.status is ItemStatus.FAILED]
    assert summary.completed_items + summary.failed_items == 24 and failed
    assert all(r.error is not None and r.error.code == "request_too_large" for r in failed)
    assert len(stepwise.batches()) <= 1 + summary.completed_items  # no loop of batches


def test_runs_of_different_models_in_one_store_do_not_share_a_budget(
    tmp_path: Path, stepwise: OpenAIEmulator
) -> None:
    # OpenAI's enqueued-token limit is per model; so is batchor's budget, and so must be
    # the emulator's (it counted every model's batches against one limit).
    other = "gpt-4.1-mini"
    limits = {MODEL: EnqueueLimit(tokens=LIMIT), other: EnqueueLimit(tokens=LIMIT)}
    with _runner(tmp_path, stepwise, enqueue_limits=limits) as runner:
        first = runner.start(_job(), items=_items(8, "a"), run_id="mini")
        second = runner.start(
            BatchJob(
                model=other,
                build_prompt=lambda item: f"summarise item {item.item_id} " + "words " * 20,
            ),
            items=_items(8, "b"),
            run_id="other",
        )
        assert first.summary().batches_in_flight == 1
        assert second.refresh().batches_in_flight == 1  # not held back by the other model
        assert second.summary().waiting_reason is None
        done = [_wait(first), _wait(second)]
    assert all(s.status is RunStatus.COMPLETED for s in done)
    assert _rejected(stepwise) == []


# --------------------------------------------------------------------------- rejections


def test_a_forced_token_limit_rejection_is_recovered_from_with_smaller_batches(
    tmp_path: Path, stepwise: OpenAIEmulator
) -> None:
    stepwise.faults.fail_batch(code="token_limit_exceeded")
    limits = {MODEL: EnqueueLimit(tokens=LIMIT)}
    with _runner(tmp_path, stepwise, enqueue_limits=limits) as runner:
        run = runner.start(_job(), items=_items(30), run_id="forced")
        summary = _wait(run)
    assert summary.status is RunStatus.COMPLETED and summary.completed_items == 30
    batches = stepwise.batches()
    assert len(_rejected(stepwise)) == 1
    rejected = batches[0]
    assert rejected["status"] == "failed"
    # Its items came back in batches of at most half the limit (the shrunk budget).
    retried = {
        json.loads(line)["custom_id"].partition("s")[0]
        for line in stepwise.file_content(rejected["input_file_id"]).splitlines()
    }
    later = [
        b
        for b in batches[1:]
        if {
            json.loads(line)["custom_id"].partition("s")[0]
            for line in stepwise.file_content(b["input_file_id"]).splitlines()
        }
        & retried
    ]
    assert later and all(_batch_tokens(stepwise, b) <= LIMIT // 2 for b in later)


def test_repeated_token_limit_rejections_pause_the_run_then_resume_finishes(
    tmp_path: Path, stepwise: OpenAIEmulator
) -> None:
    stepwise.faults.fail_batch(code="token_limit_exceeded", count=50)
    limits = {MODEL: EnqueueLimit(tokens=LIMIT)}
    with _runner(tmp_path, stepwise, enqueue_limits=limits) as runner:
        run = runner.start(_job(), items=_items(10), run_id="bounded")
        summary = _wait(run)
        assert summary.status is RunStatus.PAUSED
        assert summary.status_reason is not None
        assert "4 batches in a row with token_limit_exceeded" in summary.status_reason
        assert stepwise.batch_create_count == 4  # bounded: no loop against the limit
        stepwise.faults.clear()
        run.resume()
        summary = _wait(run)
    assert summary.status is RunStatus.COMPLETED and summary.completed_items == 10


# --------------------------------------------------------------------------- usage + cost


def _emulator_usage(emu: OpenAIEmulator, endpoint: str) -> Usage:
    """Usage totals read straight from the emulator's output files."""
    totals = [0, 0, 0, 0]
    for batch in emu.batches():
        if not batch.get("output_file_id"):
            continue
        for line in emu.file_content(batch["output_file_id"]).splitlines():
            usage = json.loads(line)["response"]["body"]["usage"]
            if endpoint.endswith("chat/completions"):
                totals[0] += usage["prompt_tokens"]
                totals[1] += usage["completion_tokens"]
                totals[2] += usage["prompt_tokens_details"]["cached_tokens"]
                totals[3] += usage["completion_tokens_details"]["reasoning_tokens"]
            else:
                totals[0] += usage["input_tokens"]
                totals[1] += usage["output_tokens"]
                totals[2] += usage["input_tokens_details"]["cached_tokens"]
                totals[3] += usage["output_tokens_details"]["reasoning_tokens"]
    return Usage(*totals)


@pytest.mark.parametrize("endpoint", ["/v1/chat/completions", "/v1/responses"])
def test_usage_totals_match_the_emulator_exactly(
    endpoint: str, make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.line_fault(contains="item i7 ", kind="length", times=1)
    job = _job(endpoint=endpoint, chunk_policy=ChunkPolicy(max_requests=8))
    run = make_runner().start(job, items=_items(30), run_id=f"usage-{endpoint[4:8]}")
    summary = run.wait(timeout=60, poll_interval=0.02)
    assert summary.status is RunStatus.COMPLETED
    expected = _emulator_usage(emulator, endpoint)
    assert expected.cached_input_tokens > 0 and expected.reasoning_tokens > 0
    assert summary.usage == expected
    per_item = [r.usage for r in run.results() if r.usage is not None]
    assert len(per_item) == 30
    retried = run.item("i7")
    assert retried is not None and retried.attempts == 2  # one attempt's usage is not on it
    assert sum(u.output_tokens for u in per_item) < expected.output_tokens
    assert any(u.cached_input_tokens for u in per_item)
    assert any(u.reasoning_tokens for u in per_item)
    cached = expected.cached_input_tokens
    # gpt-4o-mini in the price table: 0.15 / 0.075 cached / 0.60 per 1M, half for batches.
    dollars = (
        (expected.input_tokens - cached) * 0.15 + cached * 0.075 + expected.output_tokens * 0.60
    ) / 2e6
    assert summary.cost == pytest.approx(dollars)


def test_the_cost_cap_pauses_before_the_batch_that_would_exceed_it_and_resume_finishes(
    tmp_path: Path, emulator: Any
) -> None:
    price = Price(input=1000.0, output=1000.0)  # 0.5 USD per 1000 tokens at batch rates
    config = OpenAIProviderConfig(
        api_key="sk-test", base_url=emulator.base_url, prices={MODEL: price}
    )
    runner = BatchRunner(
        storage=SQLiteStorage(tmp_path / "runs.sqlite3"),
        artifacts=LocalArtifactStore(tmp_path / "artifacts"),
        provider=config,
        transient_backoff_seconds=0.0,
        create_grace_seconds=0.0,
    )
    estimate = runner.estimate(_job(), _items(20))
    assert estimate.cost_usd is not None and estimate.requests == 20
    cap = estimate.cost_usd / 2  # about half the run
    job = _job(chunk_policy=ChunkPolicy(max_requests=4, max_inflight_batches=1), max_cost_usd=cap)
    with runner:
        run = runner.start(job, items=_items(20), run_id="capped")
        summary = run.wait(timeout=60, poll_interval=0.02)
        assert summary.status is RunStatus.PAUSED
        assert summary.status_reason is not None and "max_cost_usd" in summary.status_reason
        assert summary.cost is not None and 0 < summary.cost <= cap
        assert 0 < summary.completed_items < 20
        # The right point: the next batch's estimate (its tokens at 4 bytes each, output
        # at the run's average so far) would have crossed the cap.
        nxt = next(c for c in runner.storage.list_chunks("capped") if c.batch_id is None)
        lines = (
            (tmp_path / "artifacts" / "runs" / "capped" / "requests")
            .joinpath(f"{nxt.chunk_id}.jsonl")
            .read_bytes()
            .splitlines(keepends=True)
        )
        tokens_in = sum(-(-len(line) // 4) for line in lines)
        per_item_out = -(-summary.usage.output_tokens // summary.completed_items)
        nxt_cost = price.cost(Usage(tokens_in, per_item_out * len(lines)))
        assert summary.cost + nxt_cost > cap
        assert summary.max_cost_usd == pytest.approx(cap)
        summary = runner.resume("capped", max_cost_usd=cap * 10)
        summary = run.wait(timeout=60, poll_interval=0.02)
    assert summary.status is RunStatus.COMPLETED and summary.completed_items == 20
    assert summary.cost is not None and summary.cost > cap
    assert summary.cost == pytest.approx(price.cost(_emulator_usage(emulator, "chat/completions")))


def test_an_unknown_model_has_no_cost_and_a_cap_on_it_pauses_with_the_reason(
    tmp_path: Path, emulator: Any
) -> None:
    job = BatchJob(model="my-finetune", build_prompt=lambda item: item.item_id, max_cost_usd=1.0)
    runner = _runner(tmp_path, emulator)
    with runner:
        estimate = runner.estimate(job, _items(3))
        assert estimate.cost_usd is None and "no price known" in estimate.cost_note
        run = runner.start(job, items=_items(3), run_id="unknown")
        summary = run.summary()
    assert summary.cost is None and summary.cost_note and "my-finetune" in summary.cost_note
    assert summary.status is RunStatus.PAUSED
    assert summary.status_reason and "cost cannot be computed" in summary.status_reason
    assert summary.batches_in_flight == 0


def test_an_estimate_counts_the_items_a_run_would_fail_and_reads_sources(
    tmp_path: Path,
) -> None:
    from batchor_core import InvalidItemError
    from batchor_core.sources import JsonlSource

    runner = BatchRunner(
        storage=SQLiteStorage(tmp_path / "runs.sqlite3"),
        artifacts=LocalArtifactStore(tmp_path / "artifacts"),
        provider=OpenAIProviderConfig(api_key="sk-test", base_url="http://127.0.0.1:9"),
    )
    job = BatchJob(model=MODEL, build_prompt=lambda item: item.payload["text"])
    with runner:
        good = runner.estimate(job, [BatchItem(f"g{i}", {"text": "hello"}) for i in range(4)])
        assert (good.requests, good.rejected, good.first_rejection) == (4, 0, None)
        assert good.cost_usd is not None and good.cost_usd > 0
        # A builder that raises, and a payload that is not a JSON object, as a run fails them.
        mixed = [
            *[BatchItem(f"g{i}", {"text": "hello"}) for i in range(4)],
            BatchItem("typo", {"txt": "hello"}),
            BatchItem("text", "hello"),  # type: ignore[arg-type]
            BatchItem("", {"text": "hello"}),
            BatchItem("x" * 513, {"text": "hello"}),
        ]
        estimate = runner.estimate(job, mixed)
        assert (estimate.requests, estimate.rejected) == (4, 4)
        assert estimate.input_tokens == good.input_tokens
        assert estimate.first_rejection is not None and "'typo'" in estimate.first_rejection
        assert "KeyError('text')" in estimate.first_rejection
        # A file source, as start() takes it: its unreadable rows are rejections too.
        data = tmp_path / "in.jsonl"
        data.write_text('{"id": "a", "text": "hi"}\n{not json\n{"id": "b", "text": "yo"}\n')
        from_file = runner.estimate(job, JsonlSource(data, id_field="id"))
        assert (from_file.requests, from_file.rejected) == (2, 1)
        assert from_file.first_rejection is not None and "in.jsonl" in from_file.first_rejection
        # Anything but BatchItem objects is refused, not estimated as nothing.
        with pytest.raises(InvalidItemError, match="BatchItem"):
            runner.estimate(job, [{"item_id": "x", "payload": {"text": "t"}}])  # type: ignore[list-item]
