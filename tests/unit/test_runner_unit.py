"""The runner end to end on the memory store, a fake clock and the in-memory fake provider.

No sockets, no threads, no sleeping: time moves only when a test advances the FakeClock
(or ``run.wait()`` sleeps on it).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    FakeClock,
    ItemError,
    ItemStatus,
    LocalArtifactStore,
    MemoryStateStore,
    ProviderError,
    RateLimitedError,
    RetryPolicy,
    RunLeasedError,
    RunStatus,
    RunTimeoutError,
)
from batchor_core.ports import BatchProvider, StateStore
from batchor_core.testing import FakeBatchProvider
from batchor_core.testing.fakes import echo_responder


class Review(BaseModel):
    sentiment: str
    score: int


def _typed_answer(body: dict[str, Any]) -> str:
    text = body["messages"][-1]["content"]  # "t<n>"
    return json.dumps({"sentiment": f"about {text}", "score": int(text[1:])})


def _items(n: int) -> list[BatchItem]:
    return [BatchItem(item_id=f"r{i}", payload={"text": f"t{i}"}) for i in range(n)]


def _job(**overrides: Any) -> BatchJob:
    kwargs: dict[str, Any] = {"model": "m", "build_prompt": lambda item: item.payload["text"]}
    kwargs.update(overrides)
    return BatchJob(**kwargs)


def _sent_by_seq(provider: FakeBatchProvider) -> Counter[int]:
    """How many times each item (by seq) was sent, whatever its submission number."""
    counts = Counter[int]()
    for cid, n in provider.requests_sent().items():
        counts[int(cid[1:].partition("s")[0])] += n
    return counts


Factory = Callable[..., BatchRunner]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> Iterator[MemoryStateStore]:
    made = MemoryStateStore()
    yield made
    made.close()


@pytest.fixture
def make_runner(tmp_path: Path, store: StateStore, clock: FakeClock) -> Factory:
    """Runners sharing one store, artifact directory and clock (like processes sharing a DB)."""

    def factory(provider: FakeBatchProvider, **overrides: Any) -> BatchRunner:
        kwargs: dict[str, Any] = {
            "storage": store,
            "artifacts": LocalArtifactStore(tmp_path, fsync=False),
            "provider": provider,
            "clock": clock,
            "transient_backoff_seconds": 60.0,
            "token_limit_backoff_seconds": 600.0,
            "lease_ttl_seconds": 120.0,
        }
        kwargs.update(overrides)
        return BatchRunner(**kwargs)

    return factory


def test_fake_satisfies_the_port() -> None:
    provider: BatchProvider = FakeBatchProvider()  # mypy checks this line against the Protocol
    assert provider.find_batches({}) == []


def test_typed_run_maps_reversed_output_lines_back_to_items(make_runner: Factory) -> None:
    provider = FakeBatchProvider(_typed_answer)
    runner = make_runner(provider)
    run = runner.start(_job(output_model=Review), items=_items(5), run_id="typed")
    summary = run.refresh()

    assert summary.status is RunStatus.COMPLETED
    assert (summary.completed_items, summary.failed_items, summary.batches_total) == (5, 0, 1)
    assert summary.usage.input_tokens == 5
    (batch,) = provider.created_batches
    assert batch.metadata["batchor_run_id"] == "typed"
    output_id = provider.get_batch(batch.batch_id).output_file_id
    assert output_id is not None
    lines = provider.files[output_id][1].splitlines()
    assert [json.loads(x)["custom_id"] for x in lines] == [f"i{i}s1" for i in range(4, -1, -1)]
    results = {r.item_id: r for r in run.results()}
    assert set(results) == {f"r{i}" for i in range(5)}
    for i in range(5):
        assert results[f"r{i}"].output == Review(sentiment=f"about t{i}", score=i)
        assert results[f"r{i}"].attempts == 1
    assert provider.requests_sent() == Counter({f"i{i}s1": 1 for i in range(5)})


def test_text_run_returns_the_model_text(make_runner: Factory) -> None:
    provider = FakeBatchProvider()
    run = make_runner(provider).start(_job(), items=_items(3), run_id="text")
    run.refresh()

    outputs = {r.item_id: r.output for r in run.results()}
    assert outputs == {f"r{i}": json.dumps({"echo": f"t{i}"}) for i in range(3)}
    assert echo_responder({"input": "x"}) == '{"echo": "x"}'


def test_failed_item_waits_for_retry_backoff(make_runner: Factory, clock: FakeClock) -> None:
    failing = {"t1"}

    def flaky(body: dict[str, Any]) -> str | ItemError:
        text = body["messages"][-1]["content"]
        if text in failing:
            failing.discard(text)
            return ItemError("server_error", "try again")
        return _typed_answer(body)

    provider = FakeBatchProvider(flaky)
    job = _job(output_model=Review, retry_policy=RetryPolicy(max_attempts=2, backoff_seconds=300))
    run = make_runner(provider).start(job, items=_items(3), run_id="retry")
    summary = run.refresh()
    assert (summary.completed_items, summary.pending_items) == (2, 1)
    assert _sent_by_seq(provider) == Counter({0: 1, 1: 1, 2: 1})

    clock.advance(299)
    run.refresh()
    assert _sent_by_seq(provider) == Counter({0: 1, 1: 1, 2: 1})
    assert len(provider.created_batches) == 1

    clock.advance(2)
    run.refresh()
    summary = run.refresh()
    assert summary.status is RunStatus.COMPLETED
    assert provider.requests_sent() == Counter({"i0s1": 1, "i1s1": 1, "i2s1": 1, "i1s2": 1})
    item = run.item("r1")
    assert item is not None and item.status is ItemStatus.COMPLETED and item.attempts == 2


def test_transient_create_error_backs_off(make_runner: Factory, clock: FakeClock) -> None:
    provider = FakeBatchProvider()
    provider.fail_next_create(ProviderError("boom", retryable=True))
    run = make_runner(provider, transient_backoff_seconds=60).start(
        _job(), items=_items(2), run_id="transient"
    )
    assert provider.calls.count("create_batch") == 1
    assert provider.created_batches == []

    clock.advance(59)
    run.refresh()
    assert provider.calls.count("create_batch") == 1

    clock.advance(2)
    run.refresh()
    summary = run.refresh()
    assert provider.calls.count("create_batch") == 2
    assert len(provider.created_batches) == 1
    assert summary.status is RunStatus.COMPLETED
    assert provider.requests_sent() == Counter({"i0s1": 1, "i1s1": 1})


def test_ambiguous_create_adopts_the_existing_batch(make_runner: Factory, clock: FakeClock) -> None:
    provider = FakeBatchProvider()
    provider.fail_next_create(ProviderError("connection dropped", retryable=True), commit=True)
    job = _job(chunk_policy=ChunkPolicy(max_requests=2))
    run = make_runner(provider).start(job, items=_items(4), run_id="ambiguous")
    # The failed create is followed by a lookup by metadata, never by a second create.
    assert provider.calls[:3] == ["upload_file", "create_batch", "find_batches"]
    assert provider.calls.count("create_batch") == 2
    chunks = [b.metadata["batchor_chunk"] for b in provider.created_batches]
    assert len(chunks) == 2 and len(set(chunks)) == 2

    run.refresh()
    clock.advance(61)  # the adopted chunk may be deferred by the transient backoff
    summary = run.refresh()
    assert summary.status is RunStatus.COMPLETED and summary.completed_items == 4
    assert provider.calls.count("create_batch") == 2
    assert provider.requests_sent() == Counter({f"i{i}s1": 1 for i in range(4)})


def test_rate_limit_defers_by_retry_after(
    make_runner: Factory, store: StateStore, clock: FakeClock
) -> None:
    provider = FakeBatchProvider()
    provider.fail_next_create(RateLimitedError("slow down", retry_after_seconds=120))
    started = clock.now()
    run = make_runner(provider, transient_backoff_seconds=5).start(
        _job(), items=_items(2), run_id="rate"
    )
    (chunk,) = store.list_chunks("rate")
    assert chunk.not_before is not None
    assert (chunk.not_before - started).total_seconds() == 120

    clock.advance(119)
    run.refresh()
    assert provider.calls.count("create_batch") == 1

    clock.advance(2)
    run.refresh()
    assert provider.calls.count("create_batch") == 2
    assert run.refresh().status is RunStatus.COMPLETED


def test_lease_takeover_after_ttl(make_runner: Factory, clock: FakeClock) -> None:
    provider = FakeBatchProvider()
    provider.hold(True)
    runner_a = make_runner(provider, owner_id="A")
    runner_b = make_runner(provider, owner_id="B")
    run = runner_b.start(_job(), items=_items(2), run_id="lease")
    runner_a.stepper.lease.acquire("lease")  # A takes the lease, then its process dies
    provider.hold(False)
    calls = len(provider.calls)

    with pytest.raises(RunLeasedError):
        run.refresh()
    assert len(provider.calls) == calls  # B did nothing at all

    clock.advance(121)
    assert run.refresh().status is RunStatus.COMPLETED
    assert len(provider.created_batches) == 1

    runner_b.stepper.lease.acquire("lease")  # B (alive) holds it again
    with pytest.raises(RunLeasedError):
        runner_a.stepper.lease.renew("lease")
    runner_b.stepper.lease.release("lease")


def test_upload_and_poll_faults_are_retried(make_runner: Factory, clock: FakeClock) -> None:
    provider = FakeBatchProvider()
    provider.fail_next_upload(ProviderError("503 on upload", retryable=True))
    run = make_runner(provider).start(_job(), items=_items(2), run_id="faults")
    assert provider.calls == ["upload_file"] and provider.files == {}

    clock.advance(61)
    provider.fail_next_get(ProviderError("503 on poll", retryable=True))
    run.refresh()  # uploads and creates
    summary = run.refresh()  # the poll fails: deferred
    assert summary.batches_in_flight == 1
    assert provider.calls.count("get_batch") == 1

    clock.advance(61)
    assert run.refresh().status is RunStatus.COMPLETED
    assert provider.calls.count("upload_file") == 2 and len(provider.created_batches) == 1
    assert provider.requests_sent() == Counter({"i0s1": 1, "i1s1": 1})


def test_cancel_cancels_the_batch_in_flight(make_runner: Factory) -> None:
    provider = FakeBatchProvider()
    provider.hold(True)
    run = make_runner(provider).start(_job(), items=_items(3), run_id="cancel")
    summary = run.cancel("changed my mind")
    assert "cancel_batch" in provider.calls
    assert summary.status is RunStatus.CANCELLED and summary.cancelled_items == 3
    assert {r.status for r in run.results()} == {ItemStatus.CANCELLED}


def test_max_inflight_batches_is_respected(make_runner: Factory) -> None:
    provider = FakeBatchProvider()
    provider.hold(True)
    job = _job(chunk_policy=ChunkPolicy(max_requests=2, max_inflight_batches=1))
    run = make_runner(provider).start(job, items=_items(6), run_id="inflight")
    for _ in range(3):
        assert run.refresh().batches_in_flight == 1
    assert len(provider.created_batches) == 1

    provider.hold(False)
    created = [len(provider.created_batches)]
    for _ in range(10):
        summary = run.refresh()
        assert summary.batches_in_flight <= 1
        created.append(len(provider.created_batches))
        if summary.status is RunStatus.COMPLETED:
            break
    assert summary.status is RunStatus.COMPLETED and summary.completed_items == 6
    assert created == [1, 2, 3, 3]
    assert provider.requests_sent() == Counter({f"i{i}s1": 1 for i in range(6)})


def test_expired_batch_keeps_finished_rows(make_runner: Factory) -> None:
    provider = FakeBatchProvider()
    provider.finish_next("expired", completed_fraction=0.5)
    run = make_runner(provider).start(_job(), items=_items(4), run_id="expired")
    summary = run.refresh()  # collects the expired batch and resubmits the two that never ran
    assert {r.item_id: r.attempts for r in run.results()} == {"r0": 1, "r1": 1}
    assert (summary.completed_items, summary.batches_in_flight) == (2, 1)
    assert len(provider.created_batches) == 2

    summary = run.refresh()
    assert summary.status is RunStatus.COMPLETED and summary.completed_items == 4
    assert {r.item_id: r.attempts for r in run.results()} == {f"r{i}": 1 for i in range(4)}
    assert provider.requests_sent() == Counter(
        {"i0s1": 1, "i1s1": 1, "i2s1": 1, "i3s1": 1, "i2s2": 1, "i3s2": 1}
    )


def test_token_limit_waits_then_resubmits_free(make_runner: Factory, clock: FakeClock) -> None:
    provider = FakeBatchProvider()
    limit = ItemError("token_limit_exceeded", "enqueued token limit reached")
    provider.finish_next("failed", errors=(limit,))
    run = make_runner(provider, token_limit_backoff_seconds=600).start(
        _job(), items=_items(3), run_id="tokens"
    )
    summary = run.refresh()  # collects the failed batch: nothing ran
    assert (summary.pending_items, summary.batches_in_flight) == (3, 0)
    assert len(provider.created_batches) == 1

    clock.advance(599)
    run.refresh()
    assert len(provider.created_batches) == 1

    clock.advance(2)
    run.refresh()
    summary = run.refresh()
    assert summary.status is RunStatus.COMPLETED
    assert len(provider.created_batches) == 2
    assert {r.item_id: r.attempts for r in run.results()} == {f"r{i}": 1 for i in range(3)}


class _BoundedClock(FakeClock):
    """A FakeClock that fails the test instead of letting a wait loop spin forever."""

    def sleep(self, seconds: float) -> None:
        if len(self.slept) >= 1000:
            raise AssertionError("wait() keeps sleeping: is its timeout measured on the clock?")
        super().sleep(seconds)


def test_wait_times_out_on_the_fake_clock(tmp_path: Path) -> None:
    clock = _BoundedClock()
    provider = FakeBatchProvider()
    provider.hold(True)
    runner = BatchRunner(
        storage=MemoryStateStore(),
        artifacts=LocalArtifactStore(tmp_path, fsync=False),
        provider=provider,
        clock=clock,
    )
    run = runner.start(_job(), items=_items(2), run_id="held")
    before = len(provider.calls)
    with pytest.raises(RunTimeoutError):
        run.wait(timeout=600, poll_interval=120)
    assert sum(clock.slept) == 600 and len(clock.slept) == 5
    assert set(provider.calls[before:]) == {"get_batch"}
    assert run.summary().batches_in_flight == 1
    runner.close()


def test_refresh_on_held_batches_changes_nothing(make_runner: Factory, clock: FakeClock) -> None:
    provider = FakeBatchProvider()
    provider.hold(True)
    run = make_runner(provider).start(_job(), items=_items(2), run_id="held2")
    first = run.refresh()
    calls = len(provider.calls)
    clock.advance(3600)
    again = run.refresh()
    assert provider.calls[calls:] == ["get_batch"]
    assert (again.pending_items, again.batches_in_flight, again.status) == (
        first.pending_items,
        first.batches_in_flight,
        first.status,
    )
    assert again.pending_items == 2


def test_a_429_holds_back_every_later_chunk_until_retry_after(
    make_runner: Factory, clock: FakeClock
) -> None:
    provider = FakeBatchProvider()
    provider.fail_next_create(RateLimitedError("slow down", retry_after_seconds=300))
    runner = make_runner(provider, ingest_slice_size=1)
    run = runner.start(
        _job(chunk_policy=ChunkPolicy(max_requests=1)), items=_items(4), run_id="r429"
    )
    # Chunks sealed during ingest after the 429 wait behind it instead of hammering on.
    assert provider.calls.count("create_batch") == 1
    for _ in range(3):
        run.refresh()
    assert provider.calls.count("create_batch") == 1
    clock.advance(301)
    assert run.wait(timeout=60, poll_interval=1).status is RunStatus.COMPLETED
    assert provider.calls.count("create_batch") == 5  # 1 refused + 4 created
    assert len(provider.created_batches) == 4


def test_an_adopted_batch_is_not_left_deferred(
    make_runner: Factory, store: StateStore, clock: FakeClock
) -> None:
    provider = FakeBatchProvider()
    provider.hold(True)
    provider.fail_next_create(ProviderError("connection dropped", retryable=True), commit=True)
    make_runner(provider).start(_job(), items=_items(2), run_id="adopted")
    (chunk,) = store.list_chunks("adopted")
    assert chunk.state.value == "submitted" and chunk.batch_id is not None
    assert chunk.not_before is None and chunk.last_error is None


def test_a_process_that_lost_its_lease_cannot_quietly_take_it_back(
    make_runner: Factory, clock: FakeClock
) -> None:
    provider = FakeBatchProvider()
    runner_a = make_runner(provider, owner_id="A")
    runner_b = make_runner(provider, owner_id="B")
    runner_a.start(_job(), items=_items(1), run_id="fenced")
    runner_a.stepper.lease.acquire("fenced")  # A holds it... and stalls past the TTL
    clock.advance(121)
    runner_b.stepper.lease.acquire("fenced")  # B takes over, then finishes and lets go
    runner_b.stepper.lease.release("fenced")
    with pytest.raises(RunLeasedError, match="lost the lease"):
        runner_a.stepper.lease.renew("fenced")  # the lease is free, but A must not resume
    runner_a.stepper.lease.release("fenced")


def test_an_ambiguous_upload_leaves_no_orphan_file(make_runner: Factory, clock: FakeClock) -> None:
    provider = FakeBatchProvider()
    provider.fail_next_upload(ProviderError("connection dropped", retryable=True), commit=True)
    run = make_runner(provider).start(_job(), items=_items(3), run_id="orphan")
    assert len(provider.files) == 1  # the orphan: stored, id never recorded
    clock.advance(61)
    assert run.wait(timeout=600, poll_interval=1).status is RunStatus.COMPLETED
    inputs = {fid for fid, (name, _) in provider.files.items() if name.startswith("batchor-")}
    assert inputs == {provider.created_batches[0].input_file_id}


def test_cancel_while_another_process_holds_the_lease(make_runner: Factory) -> None:
    provider = FakeBatchProvider()
    provider.hold(True)
    runner_a = make_runner(provider, owner_id="A")
    runner_b = make_runner(provider, owner_id="B")
    runner_a.start(_job(), items=_items(3), run_id="busy")
    runner_a.stepper.lease.acquire("busy")  # A is mid-step
    summary = runner_b.cancel("busy", reason="stop")
    assert summary.status is RunStatus.CANCELLING  # recorded at once...
    assert "cancel_batch" not in provider.calls  # ...and left to the lease holder
    runner_a.stepper.lease.release("busy")
    summary = runner_a.get_run("busy").refresh()
    assert "cancel_batch" in provider.calls
    assert summary.status is RunStatus.CANCELLED and summary.cancelled_items == 3


def test_a_long_download_keeps_renewing_the_lease(
    make_runner: Factory, store: StateStore, clock: FakeClock
) -> None:
    from batchor_core.lease import LeaseKeeper

    holder = LeaseKeeper(store, clock, "A", ttl_seconds=120.0, handle_sigterm=False)
    other = LeaseKeeper(store, clock, "B", ttl_seconds=120.0, handle_sigterm=False)
    make_runner(FakeBatchProvider()).start(_job(), items=_items(1), run_id="long")

    def slow_download() -> Iterator[bytes]:
        for _ in range(10):  # 10 x 50 s: far longer than the 120 s lease
            clock.advance(50)
            yield b"x" * 10

    with holder.held("long"):
        assert sum(map(len, holder.renewing("long", slow_download()))) == 100
        with pytest.raises(RunLeasedError):
            other.acquire("long")  # still held: renewed during the download
