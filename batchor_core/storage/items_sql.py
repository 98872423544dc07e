"""Item operations of the SQL store: ingest inserts, outcomes, retries, results.

Hot paths use the driver's executemany in bounded batches; every update names the state
it expects, so replays change nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    bindparam,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from batchor_core.errors import (
    InvalidItemError,
    RunLeasedError,
    RunNotFoundError,
)
from batchor_core.models import ItemStatus, JSONObject
from batchor_core.ports import (
    ChunkRecord,
    ChunkState,
    ItemOutcome,
    NewItem,
    QueuedItem,
    RetryCandidate,
)
from batchor_core.storage.dialects import executemany, insert_rows, values_in
from batchor_core.storage.outcomes_sql import DONE, RETRY_UPDATE, done_row, retry_row
from batchor_core.storage.results_sql import ResultOps
from batchor_core.storage.schema import chunks, items, run_key_of, runs

__all__ = ["ItemOps"]

from batchor_core.storage.base import (
    BULK,
    COUNTERS,
    QUEUED,
    RETRY,
    aware_utc,
    dump_json,
    utc_now,
)


class ItemOps(ResultOps):
    """Item-level transitions, mixed into :class:`SQLStateStore` (reads: ResultOps)."""

    # ------------------------------------------------------------------ ingest

    def append_items(
        self,
        run_id: str,
        new_items: Sequence[NewItem],
        *,
        chunks: Sequence[ChunkRecord],
        checkpoint: JSONObject | None,
        lease_owner: str | None = None,
    ) -> None:
        """Insert items + touched chunks' progress + checkpoint in one transaction.

        With ``lease_owner``, the transaction is fenced: it rolls back with
        :class:`RunLeasedError` unless that owner still holds the run's lease.
        """
        now = utc_now()
        # Rows rejected at ingest are few: pick them out once, and insert the pending rows
        # as they are (a NewItem's leading fields are the bound columns, in order).
        rejected = [it for it in new_items if it.status is not ItemStatus.PENDING]
        pending = (
            new_items
            if not rejected
            else [it for it in new_items if it.status is ItemStatus.PENDING]
        )
        failed = [it.seq for it in rejected if it.status is ItemStatus.FAILED]
        try:
            with self._tx() as conn:
                key = _run_key(conn, run_id)
                if pending:
                    insert_rows(
                        conn,
                        items,
                        _NEW_ITEM_COLUMNS,
                        pending,
                        constants={"run_key": key, **_QUEUED_ITEM},
                    )
                if rejected:
                    insert_rows(
                        conn,
                        items,
                        (*_NEW_ITEM_COLUMNS, "status", "error_code", "error_message"),
                        [
                            (
                                *it[: len(_NEW_ITEM_COLUMNS)],
                                it.status.value,
                                it.error.code if it.error else None,
                                it.error.message if it.error else None,
                            )
                            for it in rejected
                        ],
                        constants={"run_key": key, **_REJECTED_ITEM},
                    )
                if failed:
                    self._assign_finished_seqs(conn, run_id, key, failed)
                for chunk in chunks:
                    self._upsert_chunk(conn, chunk)
                values: dict[str, Any] = {
                    "total_items": runs.c.total_items + len(new_items),
                    "failed_items": runs.c.failed_items + len(failed),
                    "updated_at": now,
                }
                if checkpoint is not None:
                    values["source_checkpoint"] = dump_json(checkpoint)
                fenced = update(runs).where(runs.c.run_id == run_id)
                if lease_owner is not None:
                    fenced = fenced.where(runs.c.lease_owner == lease_owner)
                if conn.execute(fenced.values(**values)).rowcount == 0:
                    raise RunLeasedError(
                        f"run {run_id!r} is no longer leased by this process; another "
                        "process took it over, so this ingest slice was not committed",
                        run_id=run_id,
                    )
        except IntegrityError as exc:
            raise self._duplicate_error(run_id, new_items) from exc

    def _duplicate_error(self, run_id: str, new_items: Sequence[NewItem]) -> InvalidItemError:
        ids = [it.item_id for it in new_items]
        seen: set[str] = set()
        for item_id in ids:
            if item_id in seen:
                return InvalidItemError(
                    f"duplicate item id {item_id!r} within one ingest slice",
                    run_id=run_id,
                    item_id=item_id,
                )
            seen.add(item_id)
        with self._read() as conn:
            clash = conn.execute(
                select(items.c.item_id)
                .where(items.c.run_key == run_key_of(run_id), items.c.item_id.in_(ids[:30000]))
                .limit(1)
            ).scalar()
        return InvalidItemError(
            f"duplicate item id {clash!r}: it is already in run {run_id!r}",
            run_id=run_id,
            item_id=clash,
        )

    def existing_item_ids(self, run_id: str, item_ids: Sequence[str]) -> set[str]:
        """Which of ``item_ids`` the run already has."""
        found: set[str] = set()
        with self._read() as conn:
            for start in range(0, len(item_ids), 20000):
                part = item_ids[start : start + 20000]
                found.update(
                    conn.execute(
                        select(items.c.item_id).where(
                            items.c.run_key == run_key_of(run_id),
                            values_in(conn, items.c.item_id, part),
                        )
                    ).scalars()
                )
        return found

    def max_item_seq(self, run_id: str) -> int:
        """Highest item seq of the run, or -1."""
        with self._read() as conn:
            value = conn.execute(
                select(func.max(items.c.seq)).where(items.c.run_key == run_key_of(run_id))
            ).scalar()
        return -1 if value is None else int(value)

    # ------------------------------------------------------------------ results

    def record_outcomes(
        self,
        run_id: str,
        chunk: ChunkRecord,
        outcomes: Sequence[ItemOutcome],
        *,
        expected: ChunkState = ChunkState.SUBMITTED,
        final: bool = True,
        lease_owner: str | None = None,
    ) -> int:
        """Apply outcomes of a submitted chunk in one transaction; ``final`` also marks
        it collected.

        Only items still queued in this chunk with the same submission number change,
        so a replay after a crash (or a second collector) is a no-op. ``expected`` is
        the chunk's state before (``sealed``/``uploaded`` for a chunk given up unsent).
        A chunk collected in several parts stays submitted until its last part, so an
        interrupted collection is done again and changes only what it had not changed
        yet. With ``lease_owner`` the transaction rolls back with :class:`RunLeasedError`
        unless that owner still holds the run's lease.
        """
        with self._tx() as conn:
            # Claim the chunk first: only one collection of a submitted chunk can commit.
            # (SQLite serialises writers; on Postgres the row lock makes a concurrent
            # collector wait here and then find the chunk already collected.) A part
            # before the last only touches the chunk, which takes the same lock.
            claimed = conn.execute(
                update(chunks)
                .where(
                    chunks.c.run_id == run_id,
                    chunks.c.chunk_id == chunk.chunk_id,
                    chunks.c.state == expected.value,
                )
                .values(**self._chunk_values(chunk) if final else {"updated_at": utc_now()})
            )
            if claimed.rowcount == 0:
                return 0
            key = _run_key(conn, run_id)
            # Rows still change only while queued with the same submission number.
            # Each row changes only while queued with the same submission number; the
            # driver's rowcount says how many did, so counters never drift.
            if len({o.seq for o in outcomes}) < len(outcomes):
                # An item twice in one call: its first outcome counts, once (the others
                # would find the row changed already, but must not count tokens twice).
                first: dict[int, ItemOutcome] = {}
                for o in outcomes:
                    first.setdefault(o.seq, o)
                outcomes = list(first.values())
            done = sorted((o for o in outcomes if o.status.is_terminal), key=lambda o: o.seq)
            retry = [o for o in outcomes if not o.status.is_terminal]
            counters: dict[str, Any] = {}
            totals = [0, 0, 0, 0]  # input, output, cached input, reasoning
            changed = 0
            start = self._reserve_finished_seqs(conn, run_id, len(done)) if done else 0
            for status, column in COUNTERS.items():
                group = [(i, o) for i, o in enumerate(done) if o.status is status]
                if not group:
                    continue
                n = 0
                for part in range(0, len(group), BULK):  # bounded parameter lists
                    n += DONE.execute(
                        conn,
                        [done_row(o, start + i) for i, o in group[part : part + BULK]],
                        b_run=key,
                    )
                changed += n
                counters[column] = runs.c[column] + n
                if n < len(group):
                    # Some outcomes were stale: count tokens only for rows that changed,
                    # recognisable by the result cursor this transaction gave them.
                    applied = set(
                        conn.execute(
                            select(items.c.seq).where(
                                items.c.run_key == key,
                                items.c.finished_seq >= start,
                                items.c.finished_seq < start + len(done),
                            )
                        ).scalars()
                    )
                    group = [(i, o) for i, o in group if o.seq in applied]
                _add_usage(totals, (o for _, o in group))
            if retry:
                n = sum(
                    RETRY_UPDATE.execute(
                        conn, [retry_row(o) for o in retry[part : part + BULK]], b_run=key
                    )
                    for part in range(0, len(retry), BULK)
                )
                changed += n
                if n == len(retry):
                    _add_usage(totals, retry)
            fenced = update(runs).where(runs.c.run_id == run_id)
            if lease_owner is not None:
                fenced = fenced.where(runs.c.lease_owner == lease_owner)
            applied_run = conn.execute(
                fenced.values(
                    input_tokens=runs.c.input_tokens + totals[0],
                    output_tokens=runs.c.output_tokens + totals[1],
                    cached_input_tokens=runs.c.cached_input_tokens + totals[2],
                    reasoning_tokens=runs.c.reasoning_tokens + totals[3],
                    updated_at=utc_now(),
                    **counters,
                )
            )
            if applied_run.rowcount == 0:
                raise RunLeasedError(
                    f"run {run_id!r} is no longer leased by this process; another process "
                    f"took it over, so outcomes of chunk {chunk.chunk_id} were not recorded",
                    run_id=run_id,
                )
        return changed

    @staticmethod
    def _reserve_finished_seqs(conn: Connection, run_id: str, count: int) -> int:
        """Reserve ``count`` result cursor positions; return the first."""
        end = conn.execute(
            update(runs)
            .where(runs.c.run_id == run_id)
            .values(next_finished_seq=runs.c.next_finished_seq + count)
            .returning(runs.c.next_finished_seq)
        ).scalar_one()
        return int(end) - count

    def _assign_finished_seqs(
        self, conn: Connection, run_id: str, key: int, seqs: Sequence[int]
    ) -> None:
        start = self._reserve_finished_seqs(conn, run_id, len(seqs))
        executemany(
            conn,
            update(items)
            .where(and_(items.c.run_key == key, items.c.seq == _bind("b_seq")))
            .values(finished_seq=_bind("b_finished")),
            [{"b_seq": s, "b_finished": start + i} for i, s in enumerate(sorted(seqs))],
        )

    def item_attempts(self, run_id: str, seqs: Sequence[int]) -> dict[int, tuple[int, int]]:
        """seq -> (attempts spent, free resubmits used), for the given items."""
        out: dict[int, tuple[int, int]] = {}
        with self._read() as conn:
            for start in range(0, len(seqs), 5000):
                part = list(seqs[start : start + 5000])
                for row in conn.execute(
                    select(items.c.seq, items.c.attempts, items.c.free_resubmits).where(
                        items.c.run_key == run_key_of(run_id), items.c.seq.in_(part)
                    )
                ):
                    out[int(row[0])] = (int(row[1]), int(row[2]))
        return out

    def queued_items(self, run_id: str, chunk_id: str) -> list[QueuedItem]:
        """Items still queued in ``chunk_id``, with their attempt bookkeeping."""
        with self._read() as conn:
            rows = conn.execute(
                select(
                    items.c.seq, items.c.submissions, items.c.attempts, items.c.free_resubmits
                ).where(
                    items.c.run_key == run_key_of(run_id),
                    items.c.chunk_id == chunk_id,
                    items.c.status == QUEUED,
                )
            ).all()
        return [QueuedItem(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def retry_candidates(
        self, run_id: str, *, now: datetime, limit: int, after_seq: int = -1
    ) -> list[RetryCandidate]:
        """Items waiting for a retry whose backoff has passed, in seq order."""
        with self._read() as conn:
            rows = conn.execute(
                select(items.c.seq, items.c.chunk_id, items.c.submissions, items.c.not_before)
                .where(
                    items.c.run_key == run_key_of(run_id),
                    items.c.chunk_id.in_(_collected_chunks(run_id)),
                    items.c.status == RETRY,
                    items.c.seq > after_seq,
                    # In SQL, before the LIMIT: ready items must not hide behind earlier
                    # items still backing off.
                    or_(items.c.not_before.is_(None), items.c.not_before <= now),
                )
                .order_by(items.c.seq)
                .limit(limit)
            ).all()
        return [
            RetryCandidate(seq=int(r.seq), chunk_id=str(r.chunk_id), submission=int(r.submissions))
            for r in rows
        ]

    def next_retry_time(self, run_id: str) -> datetime | None:
        """Earliest backoff end among items waiting for a retry."""
        with self._read() as conn:
            value = conn.execute(
                select(func.min(items.c.not_before)).where(
                    items.c.run_key == run_key_of(run_id),
                    items.c.chunk_id.in_(_collected_chunks(run_id)),
                    items.c.status == RETRY,
                )
            ).scalar()
        return aware_utc(value)

    def count_retry(self, run_id: str) -> int:
        """How many items wait for a retry."""
        with self._read() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(items)
                    .where(
                        items.c.run_key == run_key_of(run_id),
                        items.c.chunk_id.in_(_collected_chunks(run_id)),
                        items.c.status == RETRY,
                    )
                ).scalar_one()
            )

    def assign_retries(
        self, run_id: str, rows: Sequence[tuple[int, int]], *, chunk: ChunkRecord
    ) -> None:
        """Put retrying items into ``chunk`` with their new submission number."""
        with self._tx() as conn:
            if rows:
                key = _run_key(conn, run_id)
                executemany(
                    conn,
                    update(items)
                    .where(
                        and_(
                            items.c.run_key == key,
                            items.c.seq == _bind("b_seq"),
                            items.c.status == RETRY,
                        )
                    )
                    .values(
                        status=QUEUED,
                        chunk_id=chunk.chunk_id,
                        submissions=_bind("b_sub"),
                        not_before=None,
                    ),
                    [{"b_seq": seq, "b_sub": sub} for seq, sub in rows],
                )
            self._upsert_chunk(conn, chunk)

    def cancel_pending(self, run_id: str, *, reason: str) -> int:
        """Cancel every pending item; return how many."""
        with self._tx() as conn:
            key = _run_key(conn, run_id)
            seqs = list(
                conn.execute(
                    select(items.c.seq).where(
                        items.c.run_key == key, items.c.status.in_([QUEUED, RETRY])
                    )
                ).scalars()
            )
            if not seqs:
                return 0
            conn.execute(
                update(items)
                .where(items.c.run_key == key, items.c.status.in_([QUEUED, RETRY]))
                .values(
                    status=ItemStatus.CANCELLED.value,
                    error_code="cancelled",
                    error_message=reason,
                )
            )
            self._assign_finished_seqs(conn, run_id, key, seqs)
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(cancelled_items=runs.c.cancelled_items + len(seqs), updated_at=utc_now())
            )
        return len(seqs)


def _add_usage(totals: list[int], outcomes: Iterable[ItemOutcome]) -> None:
    """Add the usage of ``outcomes`` to ``[input, output, cached input, reasoning]``."""
    for o in outcomes:
        usage = o.usage
        if usage is not None:
            totals[0] += usage.input_tokens
            totals[1] += usage.output_tokens
            totals[2] += usage.cached_input_tokens
            totals[3] += usage.reasoning_tokens


def _run_key(conn: Connection, run_id: str) -> int:
    """The run's key, read in the caller's transaction (never cached: one indexed read
    per transaction, against a stale key naming another run's items).

    Raises:
        RunNotFoundError: No run has this id.
    """
    key = conn.execute(select(runs.c.run_key).where(runs.c.run_id == run_id)).scalar()
    if key is None:
        raise RunNotFoundError(f"no run {run_id!r} in this store", run_id=run_id)
    return int(key)


def _collected_chunks(run_id: str) -> Any:
    """Subquery: ids of the run's collected chunks (items waiting for a retry sit in one)."""
    return select(chunks.c.chunk_id).where(
        chunks.c.run_id == run_id, chunks.c.state == ChunkState.COLLECTED.value
    )


def _bind(name: str) -> Any:
    return bindparam(name)


# What append_items inserts: the leading fields of a NewItem, then constants per kind of
# row (a pending item is queued in its chunk, its first submission prepared; a rejected
# one is finished, having spent its one attempt).
_NEW_ITEM_COLUMNS = ("seq", "item_id", "payload_json", "metadata_json", "chunk_id")
_QUEUED_ITEM = {"status": QUEUED, "attempts": 0, "submissions": 1, "free_resubmits": 0}
_REJECTED_ITEM = {"attempts": 1, "submissions": 0, "free_resubmits": 0}
