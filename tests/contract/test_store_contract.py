"""One behaviour, written once, run against every store (memory, SQLite file, Postgres)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from batchor_core import (
    InvalidItemError,
    ItemError,
    ItemStatus,
    RunLeasedError,
    RunStatus,
    Usage,
)
from batchor_core.ports import ChunkRecord, ChunkState, ItemOutcome, NewItem, RunRecord
from batchor_core.storage import SQLStateStore
from batchor_core.storage.schema import runs

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _run(run_id: str) -> RunRecord:
    return RunRecord(
        run_id=run_id,
        status=RunStatus.INGESTING,
        status_reason=None,
        job_spec={"model": "m", "endpoint": "/v1/chat/completions"},
        job_fingerprint="f" * 64,
        source_identity=None,
        source_checkpoint=None,
        ingest_complete=False,
        total_items=0,
        completed_items=0,
        failed_items=0,
        cancelled_items=0,
        input_tokens=0,
        output_tokens=0,
        owner={"asset": "reviews", "partition": "2026-01-01"},
        created_at=NOW,
        updated_at=NOW,
    )


def _chunk(run_id: str, chunk_id: str = "c00000", count: int = 0) -> ChunkRecord:
    return ChunkRecord(
        run_id=run_id,
        chunk_id=chunk_id,
        seq=int(chunk_id[1:]),
        state=ChunkState.BUILDING,
        request_count=count,
        byte_count=count * 10,
        sha256=None,
        file_id=None,
        batch_id=None,
        provider_status=None,
        not_before=None,
        last_error=None,
        created_at=NOW,
        updated_at=NOW,
    )


def _items(n: int, start: int = 0, chunk_id: str = "c00000") -> list[NewItem]:
    return [
        NewItem(i, f"item-{i}", f'{{"i": {i}}}', None, chunk_id) for i in range(start, start + n)
    ]


def _seed(store: SQLStateStore, run_id: str, n: int = 5) -> ChunkRecord:
    store.create_run(_run(run_id))
    chunk = _chunk(run_id, count=n)
    store.append_items(run_id, _items(n), chunks=[chunk], checkpoint={"consumed": n})
    return chunk


def test_create_run_is_idempotent_and_round_trips(store: SQLStateStore, run_id: str) -> None:
    first = store.create_run(_run(run_id))
    again = store.create_run(dataclasses.replace(_run(run_id), job_fingerprint="other"))
    assert again.job_fingerprint == first.job_fingerprint == "f" * 64
    loaded = store.load_run(run_id)
    assert loaded is not None
    assert loaded.owner == {"asset": "reviews", "partition": "2026-01-01"}
    assert loaded.created_at == NOW and loaded.created_at.tzinfo is not None
    assert store.load_run(run_id + "-missing") is None
    assert run_id in store.list_run_ids()


def test_append_commits_items_chunk_and_checkpoint_together(
    store: SQLStateStore, run_id: str
) -> None:
    _seed(store, run_id, 5)
    run = store.load_run(run_id)
    assert run is not None
    assert run.total_items == 5
    assert run.source_checkpoint == {"consumed": 5}
    (chunk,) = store.list_chunks(run_id)
    assert chunk.request_count == 5 and chunk.state is ChunkState.BUILDING
    assert store.max_item_seq(run_id) == 4
    assert store.existing_item_ids(run_id, ["item-1", "nope"]) == {"item-1"}


def test_duplicate_ids_roll_back_the_whole_slice(store: SQLStateStore, run_id: str) -> None:
    _seed(store, run_id, 3)
    clash = [
        NewItem(10, "fresh", "{}", None, "c00000"),
        NewItem(11, "item-1", "{}", None, "c00000"),
    ]
    with pytest.raises(InvalidItemError, match="item-1"):
        store.append_items(
            run_id, clash, chunks=[_chunk(run_id, count=5)], checkpoint={"consumed": 5}
        )
    run = store.load_run(run_id)
    assert run is not None
    assert run.total_items == 3 and run.source_checkpoint == {"consumed": 3}
    assert store.existing_item_ids(run_id, ["fresh"]) == set()
    assert store.list_chunks(run_id)[0].request_count == 3


def test_chunk_transitions_are_conditional(store: SQLStateStore, run_id: str) -> None:
    chunk = _seed(store, run_id)
    sealed = dataclasses.replace(chunk, state=ChunkState.SEALED, sha256="ab" * 32)
    assert store.save_chunk(sealed, expected=ChunkState.BUILDING)
    # Replaying the same transition finds the chunk no longer building: refused.
    assert not store.save_chunk(sealed, expected=ChunkState.BUILDING)
    assert store.list_chunks(run_id, [ChunkState.SEALED])[0].sha256 == "ab" * 32
    assert store.list_chunks(run_id, [ChunkState.SUBMITTED]) == []


def test_outcomes_apply_once_and_feed_counters_and_cursor(
    store: SQLStateStore, run_id: str
) -> None:
    chunk = _seed(store, run_id, 4)
    outcomes = [
        ItemOutcome(2, 1, ItemStatus.COMPLETED, output_json='"b"', usage=Usage(10, 3)),
        ItemOutcome(0, 1, ItemStatus.COMPLETED, output_json='"a"', usage=Usage(5, 1)),
        ItemOutcome(1, 1, ItemStatus.FAILED, error=ItemError("refusal", "no")),
        ItemOutcome(
            3,
            1,
            ItemStatus.PENDING,
            error=ItemError("invalid_json", "x"),
            retry_not_before=NOW + timedelta(seconds=30),
        ),
        ItemOutcome(3, 7, ItemStatus.COMPLETED, output_json='"stale"'),  # wrong submission
    ]
    done = dataclasses.replace(chunk, state=ChunkState.COLLECTED)
    # Only a submitted chunk can be collected...
    assert store.record_outcomes(run_id, done, outcomes) == 0
    assert store.read_results(run_id, after=0, limit=10) == []
    submitted = dataclasses.replace(chunk, state=ChunkState.SUBMITTED, batch_id="b1")
    assert store.save_chunk(submitted, expected=ChunkState.BUILDING)
    # ...once: the stale submission (3, 7) changes nothing, a replay changes nothing.
    assert store.record_outcomes(run_id, done, outcomes) == 4
    assert store.record_outcomes(run_id, done, outcomes) == 0
    run = store.load_run(run_id)
    assert run is not None
    assert (run.completed_items, run.failed_items, run.input_tokens, run.output_tokens) == (
        2,
        1,
        15,
        4,
    )
    rows = store.read_results(run_id, after=0, limit=10)
    assert [r.item_id for r in rows] == ["item-0", "item-1", "item-2"]
    assert [r.finished_seq for r in rows] == [1, 2, 3]
    assert (rows[1].status, rows[1].error_code, rows[1].error_message) == (
        "failed",
        "refusal",
        "no",
    )
    assert rows[1].attempts == 1 and rows[0].status == "completed"
    assert store.read_results(run_id, after=rows[1].finished_seq, limit=10)[0].item_id == "item-2"
    pending = store.item_status(run_id, "item-3")
    assert pending is not None and (pending.status, pending.finished_seq) == ("pending", 0)


def test_an_item_repeated_in_one_part_is_recorded_once_for_its_first_outcome(
    store: SQLStateStore, run_id: str
) -> None:
    # Postgres applies a part in one statement, the other stores row by row: both keep
    # the first outcome of an item and count it once (tokens included).
    chunk = _seed(store, run_id, 3)
    submitted = dataclasses.replace(chunk, state=ChunkState.SUBMITTED, batch_id="b1")
    assert store.save_chunk(submitted, expected=ChunkState.BUILDING)
    outcomes = [
        ItemOutcome(1, 1, ItemStatus.COMPLETED, output_json='"first"', usage=Usage(4, 2)),
        ItemOutcome(0, 1, ItemStatus.COMPLETED, output_json='"a"', usage=Usage(1, 1)),
        ItemOutcome(1, 1, ItemStatus.COMPLETED, output_json='"second"', usage=Usage(40, 20)),
        ItemOutcome(2, 1, ItemStatus.PENDING, error=ItemError("http_500", "first")),
        ItemOutcome(2, 1, ItemStatus.PENDING, error=ItemError("http_502", "second")),
    ]
    done = dataclasses.replace(submitted, state=ChunkState.COLLECTED)
    assert store.record_outcomes(run_id, done, outcomes) == 3
    run = store.load_run(run_id)
    assert run is not None
    assert (run.completed_items, run.input_tokens, run.output_tokens) == (2, 5, 3)
    rows = store.read_results(run_id, after=0, limit=10)
    assert [(r.item_id, r.output_json) for r in rows] == [("item-0", '"a"'), ("item-1", '"first"')]
    assert [r.finished_seq for r in rows] == [1, 2]
    retried = store.item_status(run_id, "item-2")
    assert retried is not None
    assert (retried.error_code, retried.error_message) == ("http_500", "first")


def test_outcomes_recorded_in_parts_are_fenced_by_the_lease_and_replay_as_no_ops(
    store: SQLStateStore, run_id: str
) -> None:
    chunk = _seed(store, run_id, 4)
    submitted = dataclasses.replace(chunk, state=ChunkState.SUBMITTED, batch_id="b1")
    assert store.save_chunk(submitted, expected=ChunkState.BUILDING)
    assert store.acquire_lease(run_id, "me", now=NOW, ttl_seconds=60).token is not None
    first = [
        ItemOutcome(1, 1, ItemStatus.COMPLETED, output_json='"b"', usage=Usage(10, 3)),
        ItemOutcome(0, 1, ItemStatus.PENDING, error=ItemError("http_500", "x")),
    ]
    # A process that is not the lease holder commits nothing.
    with pytest.raises(RunLeasedError, match="no longer leased"):
        store.record_outcomes(run_id, submitted, first, final=False, lease_owner="other")
    assert store.read_results(run_id, after=0, limit=10) == []
    # A part before the last leaves the chunk submitted; its outcomes count at once.
    assert store.record_outcomes(run_id, submitted, first, final=False, lease_owner="me") == 2
    assert store.list_chunks(run_id)[0].state is ChunkState.SUBMITTED
    # An interrupted collection is done again from the start: the recorded part changes
    # nothing, the rest is recorded, and the last part marks the chunk collected.
    rest = [
        *first,
        ItemOutcome(2, 1, ItemStatus.COMPLETED, output_json='"c"', usage=Usage(1, 1)),
        ItemOutcome(3, 1, ItemStatus.FAILED, error=ItemError("refusal", "no")),
    ]
    done = dataclasses.replace(submitted, state=ChunkState.COLLECTED)
    assert store.record_outcomes(run_id, submitted, rest[:2], final=False, lease_owner="me") == 0
    assert store.record_outcomes(run_id, done, rest[2:], lease_owner="me") == 2
    assert store.list_chunks(run_id)[0].state is ChunkState.COLLECTED
    # Once collected, no part changes anything any more.
    late = [ItemOutcome(0, 1, ItemStatus.COMPLETED, output_json='"late"')]
    assert store.record_outcomes(run_id, submitted, late, final=False, lease_owner="me") == 0
    run = store.load_run(run_id)
    assert run is not None
    assert (run.completed_items, run.failed_items, run.input_tokens, run.output_tokens) == (
        2,
        1,
        11,
        4,
    )
    assert [r.item_id for r in store.read_results(run_id, after=0, limit=10)] == [
        "item-1",
        "item-2",
        "item-3",
    ]
    assert store.count_retry(run_id) == 1


def test_retry_candidates_respect_backoff_and_move_to_new_chunk(
    store: SQLStateStore, run_id: str
) -> None:
    chunk = _seed(store, run_id, 3)
    outcomes = [
        ItemOutcome(0, 1, ItemStatus.PENDING, error=ItemError("x", "y")),
        ItemOutcome(
            1,
            1,
            ItemStatus.PENDING,
            error=ItemError("batch_expired", "y"),
            spend_attempt=False,
            retry_not_before=NOW + timedelta(minutes=5),
        ),
        ItemOutcome(2, 1, ItemStatus.COMPLETED, output_json='"ok"'),
    ]
    store.save_chunk(
        dataclasses.replace(chunk, state=ChunkState.SUBMITTED), expected=ChunkState.BUILDING
    )
    store.record_outcomes(run_id, dataclasses.replace(chunk, state=ChunkState.COLLECTED), outcomes)
    assert [c.seq for c in store.retry_candidates(run_id, now=NOW, limit=10)] == [0]
    later = store.retry_candidates(run_id, now=NOW + timedelta(minutes=6), limit=10)
    assert [(c.seq, c.submission, c.chunk_id) for c in later] == [
        (0, 1, "c00000"),
        (1, 1, "c00000"),
    ]
    assert store.count_retry(run_id) == 2
    retry_chunk = _chunk(run_id, "c00001", count=2)
    store.assign_retries(run_id, [(0, 2), (1, 2)], chunk=retry_chunk)
    assert store.count_retry(run_id) == 0
    queued = sorted(store.queued_items(run_id, "c00001"), key=lambda q: q.seq)
    assert [(q.seq, q.submission, q.attempts, q.free_resubmits) for q in queued] == [
        (0, 2, 1, 0),
        (1, 2, 0, 1),
    ]


def test_cancel_pending_and_status_guards(store: SQLStateStore, run_id: str) -> None:
    _seed(store, run_id, 3)
    assert not store.set_status(run_id, RunStatus.RUNNING, expected=[RunStatus.PAUSED])
    assert store.set_status(run_id, RunStatus.RUNNING, expected=[RunStatus.INGESTING])
    assert store.cancel_pending(run_id, reason="operator") == 3
    run = store.load_run(run_id)
    assert run is not None and run.cancelled_items == 3
    rows = store.read_results(run_id, after=0, limit=10)
    assert {r.status for r in rows} == {"cancelled"}
    assert (rows[0].error_code, rows[0].error_message) == ("cancelled", "operator")


def test_rejected_rows_are_kept_as_failed_items(store: SQLStateStore, run_id: str) -> None:
    store.create_run(_run(run_id))
    bad = NewItem(
        0,
        "a.csv:3",
        '{"line": "x,y"}',
        None,
        None,
        ItemStatus.FAILED,
        ItemError("invalid_input", "a.csv:3: ragged row"),
    )
    store.append_items(run_id, [bad], chunks=[], checkpoint={"offset": 10})
    run = store.load_run(run_id)
    assert run is not None and (run.total_items, run.failed_items) == (1, 1)
    (row,) = store.read_results(run_id, after=0, limit=5)
    assert (row.status, row.error_code) == ("failed", "invalid_input")
    assert row.error_message == "a.csv:3: ragged row"


def test_a_free_row_is_not_taken_while_another_live_holder_has_the_runs_lock(
    store: SQLStateStore, run_id: str
) -> None:
    """The window between a holder's lock and its lease row, on both ends.

    A holder takes the liveness lock before the row and gives the row up before the lock.
    A process arriving in between used to take the free row without the lock; the next
    one then found the lock free, took the "dead" holder's lease and fenced out a live
    process mid-step (seen as "chunk changed under us" in the three-process test).
    """
    liveness = getattr(store, "_liveness", None)
    if liveness is None:
        pytest.skip("the memory store has no liveness lock")
    store.create_run(_run(run_id))
    now = datetime.now(UTC)
    assert liveness.try_hold(run_id, "thishost:1:a") is True  # a: lock taken, row next
    early = store.acquire_lease(run_id, "thishost:2:b", now=now, ttl_seconds=120)
    assert early.token is None
    first = store.acquire_lease(run_id, "thishost:1:a", now=now, ttl_seconds=120)
    assert first.token is not None
    # a gives the row up but still holds the lock for a moment.
    with store._tx() as conn:
        conn.execute(runs.update().where(runs.c.run_id == run_id).values(lease_owner=None))
    late = store.acquire_lease(run_id, "thishost:2:b", now=now, ttl_seconds=120)
    assert late.token is None
    liveness.drop(run_id, "thishost:1:a")
    taken = store.acquire_lease(run_id, "thishost:2:b", now=now, ttl_seconds=120)
    assert taken.token is not None and taken.token != first.token
    # A holder whose TTL ran out while it still holds the lock (hung) is taken over.
    assert liveness.holds(run_id, "thishost:2:b")
    later = now + timedelta(seconds=121)
    over = store.acquire_lease(run_id, "thishost:3:c", now=later, ttl_seconds=120)
    assert over.token is not None and over.token != taken.token
    # The hung holder, back, finds its lease gone and lets go of the lock.
    back = store.acquire_lease(run_id, "thishost:2:b", now=later, ttl_seconds=120)
    assert back.token is None and not liveness.holds(run_id, "thishost:2:b")
    store.release_lease(run_id, "thishost:3:c")


def test_a_lease_excludes_other_owners_even_through_the_same_store(
    store: SQLStateStore, run_id: str
) -> None:
    store.create_run(_run(run_id))
    now = datetime.now(UTC)
    first = store.acquire_lease(run_id, "thishost:1:a", now=now, ttl_seconds=120)
    assert first.token is not None
    # Another owner on this host sharing the store object (threads): the holder is alive.
    other = store.acquire_lease(run_id, "thishost:1:b", now=now, ttl_seconds=120)
    assert other.token is None and "thishost:1:a" in other.holder
    again = store.acquire_lease(run_id, "thishost:1:a", now=now, ttl_seconds=120)
    assert again.token == first.token  # renewal keeps the token
    store.release_lease(run_id, "thishost:1:a")
    taken = store.acquire_lease(run_id, "thishost:1:b", now=now, ttl_seconds=120)
    assert taken.token is not None and taken.token != first.token
    assert store.break_lease(run_id) == "thishost:1:b"
    assert store.break_lease(run_id) is None
    store.release_lease(run_id, "thishost:1:b")


def test_appended_rows_are_stored_column_for_column(store: SQLStateStore, run_id: str) -> None:
    """The insert binds a NewItem's leading fields and writes the rest as constants (the
    run id as an SQL literal on SQLite): every column lands where it belongs, NULLs stay
    NULL, and a run id with quotes or percent signs is stored as it is."""
    from sqlalchemy import select

    from batchor_core.storage.schema import items, run_key_of

    odd = f'{run_id} it\'s 100% "odd" \\ ?'
    store.create_run(_run(odd))
    store.create_run(_run(run_id))  # another run's rows must not be touched
    rows = [
        NewItem(0, "plain", '{"t": 0}', None, "c00000"),
        NewItem(1, "with-meta", '{"t": 1}', '{"m": "é"}', "c00000"),
        NewItem(
            2, "bad", "{}", '{"m": 2}', None, ItemStatus.FAILED, ItemError("invalid_input", "x")
        ),
        NewItem(3, "last", '{"t": 3}', None, "c00001"),
    ]
    chunks = [_chunk(odd, "c00000", 2), _chunk(odd, "c00001", 1)]
    store.append_items(odd, rows, chunks=chunks, checkpoint={"consumed": 4})
    store.append_items(run_id, _items(2), chunks=[_chunk(run_id, count=2)], checkpoint=None)
    columns = [
        items.c[name]
        for name in (
            "seq",
            "item_id",
            "payload_json",
            "metadata_json",
            "status",
            "chunk_id",
            "attempts",
            "submissions",
            "free_resubmits",
            "error_code",
            "error_message",
        )
    ]
    unset = (items.c.output_json, items.c.not_before, items.c.input_tokens)
    with store._tx() as conn:
        stored = conn.execute(
            select(*columns).where(items.c.run_key == run_key_of(odd)).order_by(items.c.seq)
        ).all()
        nulls = conn.execute(select(*unset).where(items.c.run_key == run_key_of(odd))).all()
        finished = conn.execute(
            select(items.c.seq).where(
                items.c.run_key == run_key_of(odd), items.c.finished_seq.is_not(None)
            )
        ).all()
    assert [tuple(r) for r in stored] == [
        (0, "plain", '{"t": 0}', None, "queued", "c00000", 0, 1, 0, None, None),
        (1, "with-meta", '{"t": 1}', '{"m": "é"}', "queued", "c00000", 0, 1, 0, None, None),
        (2, "bad", "{}", '{"m": 2}', "failed", None, 1, 0, 0, "invalid_input", "x"),
        (3, "last", '{"t": 3}', None, "queued", "c00001", 0, 1, 0, None, None),
    ]
    assert [tuple(r) for r in nulls] == [(None, None, None)] * 4
    assert [r.seq for r in finished] == [2]  # only the failed row is on the result cursor
    run = store.load_run(odd)
    assert run is not None and (run.total_items, run.failed_items) == (4, 1)
    assert [q.seq for q in store.queued_items(odd, "c00000")] == [0, 1]
    assert store.existing_item_ids(run_id, ["plain", "item-0"]) == {"item-0"}


def test_row_updates_apply_each_row_once_however_the_rows_are_split(
    store: SQLStateStore, run_id: str
) -> None:
    # Postgres sends a call's rows as JSON, halving them past max_json_bytes (a part of
    # large outputs); every store applies each row once, the first of a repeated key.
    from sqlalchemy import BigInteger, Integer, Text, and_, bindparam, select, update

    from batchor_core.storage.dialects import RowUpdate
    from batchor_core.storage.schema import items, run_key_of

    _seed(store, run_id, 6)
    outputs = RowUpdate(
        {"seq": BigInteger(), "sub": Integer(), "output": Text()},
        lambda v: (
            update(items)
            .where(
                and_(
                    items.c.run_key == run_key_of(bindparam("b_run")),
                    items.c.seq == v["seq"],
                    items.c.submissions == v["sub"],
                )
            )
            .values(output_json=v["output"])
        ),
        key=items.c.seq,
        max_json_bytes=60,
    )
    rows = [(seq, 1, f'"output {seq} {"x" * 20}"') for seq in range(6)]
    with store._tx() as conn:
        assert (
            outputs.execute(conn, [*rows, (2, 1, '"again"'), (5, 9, '"stale"')], b_run=run_id) == 6
        )
        stored = dict(
            conn.execute(
                select(items.c.seq, items.c.output_json).where(
                    items.c.run_key == run_key_of(run_id)
                )
            ).all()
        )
    assert stored == {seq: output for seq, _, output in rows}
