"""The enqueued-token reservation and run budgets, written once, run on every store."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from datetime import UTC, datetime

import pytest

from batchor_core import ItemStatus, Usage
from batchor_core.ports import ChunkRecord, ChunkState, ItemOutcome
from batchor_core.storage import SQLStateStore
from tests.contract.test_store_contract import _chunk, _run, _seed


def _uploaded(
    store: SQLStateStore, run_id: str, chunk_id: str, tokens: int, model: str
) -> ChunkRecord:
    chunk = dataclasses.replace(
        _chunk(run_id, chunk_id, count=1),
        state=ChunkState.UPLOADED,
        est_tokens=tokens,
        model=model,
        file_id=f"file-{chunk_id}",
    )
    store.save_chunk(chunk, expected=None)
    return chunk


def _now() -> datetime:
    return datetime.now(UTC)


def _submitting(chunk: ChunkRecord) -> ChunkRecord:
    return dataclasses.replace(chunk, state=ChunkState.SUBMITTING)


def test_the_budget_spans_runs_and_frees_on_collection(store: SQLStateStore, run_id: str) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"  # the Postgres database is shared between tests
    other = run_id + "-b"
    for rid in (run_id, other):
        store.create_run(_run(rid))
    a = _uploaded(store, run_id, "c00000", 60, model)
    b = _uploaded(store, other, "c00000", 50, model)
    c = _uploaded(store, other, "c00001", 40, model)
    first = store.reserve_submit(_submitting(a), expected=ChunkState.UPLOADED, limit=100)
    assert first.granted and first.in_flight_tokens == 0
    assert store.in_flight_tokens(model) == 60
    # Another run's chunk: 60 + 50 > 100, refused, and left as it was.
    refused = store.reserve_submit(_submitting(b), expected=ChunkState.UPLOADED, limit=100)
    assert not refused.granted and refused.in_flight_tokens == 60
    assert store.list_chunks(other)[0].state is ChunkState.UPLOADED
    assert store.reserve_submit(_submitting(c), expected=ChunkState.UPLOADED, limit=100).granted
    assert store.in_flight_tokens(model) == 100
    assert store.in_flight_tokens(model + "-other") == 0  # per model
    # Collected chunks no longer count.
    done = dataclasses.replace(_submitting(a), state=ChunkState.SUBMITTED)
    store.save_chunk(done, expected=ChunkState.SUBMITTING)
    store.save_chunk(
        dataclasses.replace(done, state=ChunkState.COLLECTED), expected=ChunkState.SUBMITTED
    )
    assert store.in_flight_tokens(model) == 40
    assert store.reserve_submit(_submitting(b), expected=ChunkState.UPLOADED, limit=100).granted
    # Who holds the budget: per run, most tokens first, with its status, and no lease.
    holders = store.budget_holders(model)
    assert [(h.run_id, h.tokens, h.batches, h.advancing) for h in holders] == [
        (other, 90, 2, False)
    ]
    # Never leased: free since it was created.
    assert holders[0].status == "ingesting" and not holders[0].advancing
    created = store.load_run(other)
    assert created is not None and holders[0].last_advanced == created.created_at
    # A lease held: advancing; given up: when it was, so a reader can tell how long ago.
    assert store.acquire_lease(other, "me", now=_now(), ttl_seconds=60).token is not None
    assert store.budget_holders(model)[0].advancing
    store.release_lease(other, "me")
    (released,) = store.budget_holders(model)
    assert not released.advancing and released.last_advanced is not None
    assert store.budget_holders(model + "-other") == []


def test_a_chunk_alone_may_use_the_full_limit_when_the_effective_one_shrank(
    store: SQLStateStore, run_id: str
) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    store.create_run(_run(run_id))
    chunk = _uploaded(store, run_id, "c00000", 80, model)
    shrunk = store.reserve_submit(
        _submitting(chunk), expected=ChunkState.UPLOADED, limit=50, full_limit=100
    )
    assert shrunk.granted  # nothing else in flight: no deadlock below one chunk's size


def test_a_reservation_of_a_chunk_that_moved_is_not_granted(
    store: SQLStateStore, run_id: str
) -> None:
    model = f"m-{uuid.uuid4().hex[:8]}"
    store.create_run(_run(run_id))
    chunk = _uploaded(store, run_id, "c00000", 10, model)
    answer = store.reserve_submit(_submitting(chunk), expected=ChunkState.SEALED, limit=100)
    assert not answer.granted and answer.in_flight_tokens == 0


def test_concurrent_reservations_never_exceed_the_limit(store: SQLStateStore, run_id: str) -> None:
    if "Memory" in type(store).__name__:
        pytest.skip("the memory store is one connection, not for concurrent threads")
    model = f"m-{uuid.uuid4().hex[:8]}"
    store.create_run(_run(run_id))
    chunks = [_uploaded(store, run_id, f"c{n:05d}", 30, model) for n in range(12)]
    granted: list[bool] = []
    lock = threading.Lock()

    def reserve(chunk: ChunkRecord) -> None:
        answer = store.reserve_submit(_submitting(chunk), expected=ChunkState.UPLOADED, limit=100)
        with lock:
            granted.append(answer.granted)

    threads = [threading.Thread(target=reserve, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert granted.count(True) == 3  # 3 x 30 <= 100 < 4 x 30, whatever the interleaving
    assert store.in_flight_tokens(model) == 90


def test_detailed_usage_is_kept_per_item_and_summed_per_run(
    store: SQLStateStore, run_id: str
) -> None:
    chunk = _seed(store, run_id, n=2)
    submitted = dataclasses.replace(chunk, state=ChunkState.SUBMITTED)
    store.save_chunk(
        dataclasses.replace(chunk, state=ChunkState.SEALED), expected=ChunkState.BUILDING
    )
    for state in (
        ChunkState.UPLOADING,
        ChunkState.UPLOADED,
        ChunkState.SUBMITTING,
        ChunkState.SUBMITTED,
    ):
        previous = store.list_chunks(run_id)[0].state
        store.save_chunk(dataclasses.replace(chunk, state=state), expected=previous)
    outcomes = [
        ItemOutcome(0, 1, ItemStatus.COMPLETED, output_json='"a"', usage=Usage(10, 5, 4, 2)),
        ItemOutcome(1, 1, ItemStatus.COMPLETED, output_json='"b"', usage=Usage(20, 7, 0, 3)),
    ]
    store.record_outcomes(
        run_id, dataclasses.replace(submitted, state=ChunkState.COLLECTED), outcomes
    )
    run = store.load_run(run_id)
    assert run is not None and run.usage == Usage(30, 12, 4, 5)
    rows = store.read_results(run_id, after=0, limit=10)
    tokens = [
        (r.input_tokens, r.output_tokens, r.cached_input_tokens, r.reasoning_tokens) for r in rows
    ]
    assert tokens == [(10, 5, 4, 2), (20, 7, 0, 3)]


def test_run_budgets_round_trip(store: SQLStateStore, run_id: str) -> None:
    store.create_run(dataclasses.replace(_run(run_id), limits={"max_cost_usd": 2.5}))
    store.set_waiting(run_id, "waiting for enqueued-token budget")
    store.set_token_limit_strikes(run_id, 2)
    run = store.load_run(run_id)
    assert run is not None
    assert run.limits == {"max_cost_usd": 2.5}
    assert run.waiting_reason == "waiting for enqueued-token budget"
    assert run.token_limit_strikes == 2
    store.set_limits(run_id, {"max_cost_usd": 10.0})
    store.set_waiting(run_id, None)
    run = store.load_run(run_id)
    assert run is not None and run.limits == {"max_cost_usd": 10.0} and run.waiting_reason is None
