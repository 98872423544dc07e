"""The SQL control-plane store (SQLAlchemy Core), for SQLite files, Postgres and memory.

Every state change is one transaction whose ``WHERE`` clause names the state it expects,
so replaying a step after a crash changes nothing. Bulk writes use executemany.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    DateTime,
    Engine,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from batchor_core.errors import (
    ConfigurationError,
    InvalidItemError,
    RunLeasedError,
    StorageError,
)
from batchor_core.models import ItemError, ItemStatus, JSONObject, RunStatus, Usage
from batchor_core.ports import (
    ChunkRecord,
    ChunkState,
    ItemOutcome,
    NewItem,
    QueuedItem,
    ResultRow,
    RetryCandidate,
    RunRecord,
)
from batchor_core.storage import schema
from batchor_core.storage.dialects import executemany, make_engine, values_in
from batchor_core.storage.schema import chunks, items, runs

__all__ = ["MemoryStateStore", "PostgresStorage", "SQLStateStore", "SQLiteStorage"]

QUEUED = "queued"
_BULK = 5_000  # rows per executemany: bounded memory, still few round trips
RETRY = "retry"
_TERMINAL = (ItemStatus.COMPLETED.value, ItemStatus.FAILED.value, ItemStatus.CANCELLED.value)
_COUNTER = {
    ItemStatus.COMPLETED: "completed_items",
    ItemStatus.FAILED: "failed_items",
    ItemStatus.CANCELLED: "cancelled_items",
}


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _dumps(value: JSONObject | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _loads(value: str | None) -> JSONObject | None:
    if value is None:
        return None
    loaded: JSONObject = json.loads(value)
    return loaded


def _public_status(stored: str) -> ItemStatus:
    return ItemStatus.PENDING if stored in (QUEUED, RETRY) else ItemStatus(stored)


class SQLStateStore:
    """Control-plane store on any SQLAlchemy URL.

    Args:
        url: SQLAlchemy database URL.
        create_tables: Create missing tables on first use.
    """

    def __init__(self, url: str, *, create_tables: bool = True) -> None:
        self.url = url
        try:
            self._engine: Engine = make_engine(url)
            if create_tables:
                schema.metadata.create_all(self._engine)
                self._check_version()
        except SQLAlchemyError as exc:
            raise StorageError(
                f"cannot open the batchor store at {self._safe_url()}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._safe_url()!r})"

    def _safe_url(self) -> str:
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:
            return "<invalid url>"

    def _check_version(self) -> None:
        with self._engine.begin() as conn:
            row = conn.execute(
                select(schema.meta.c.value).where(schema.meta.c.key == "schema_version")
            ).first()
            if row is None:
                conn.execute(
                    insert(schema.meta).values(
                        key="schema_version", value=str(schema.SCHEMA_VERSION)
                    )
                )
            elif int(row[0]) != schema.SCHEMA_VERSION:
                raise ConfigurationError(
                    f"the store at {self._safe_url()} has schema version {row[0]}, this batchor "
                    f"expects {schema.SCHEMA_VERSION}; use a matching batchor version"
                )

    # ------------------------------------------------------------------ runs

    def create_run(self, record: RunRecord) -> RunRecord:
        """Insert the run unless it exists; return the stored run."""
        with self._tx() as conn:
            existing = conn.execute(select(runs).where(runs.c.run_id == record.run_id)).first()
            if existing is None:
                conn.execute(
                    insert(runs).values(
                        run_id=record.run_id,
                        status=record.status.value,
                        status_reason=record.status_reason,
                        job_spec=_dumps(record.job_spec),
                        job_fingerprint=record.job_fingerprint,
                        source_identity=_dumps(record.source_identity),
                        source_checkpoint=_dumps(record.source_checkpoint),
                        ingest_complete=record.ingest_complete,
                        total_items=0,
                        completed_items=0,
                        failed_items=0,
                        cancelled_items=0,
                        input_tokens=0,
                        output_tokens=0,
                        next_finished_seq=1,
                        owner=_dumps(record.owner),
                        lease_token=0,
                        created_at=record.created_at,
                        updated_at=record.updated_at,
                    )
                )
                return record
            return self._run_from_row(existing._mapping)

    def load_run(self, run_id: str) -> RunRecord | None:
        """The run, or None."""
        with self._tx() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).first()
        return None if row is None else self._run_from_row(row._mapping)

    def list_run_ids(self) -> list[str]:
        """Every run id, oldest first."""
        with self._tx() as conn:
            return list(conn.execute(select(runs.c.run_id).order_by(runs.c.created_at)).scalars())

    def set_source(self, run_id: str, identity: JSONObject) -> None:
        """Record the source identity if none is recorded yet."""
        with self._tx() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id, runs.c.source_identity.is_(None))
                .values(source_identity=_dumps(identity), updated_at=_now())
            )

    def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        reason: str | None = None,
        expected: Collection[RunStatus] | None = None,
    ) -> bool:
        """Change the run's status if it is currently one of ``expected``."""
        stmt = update(runs).where(runs.c.run_id == run_id)
        if expected is not None:
            stmt = stmt.where(runs.c.status.in_([s.value for s in expected]))
        with self._tx() as conn:
            result = conn.execute(
                stmt.values(status=status.value, status_reason=reason, updated_at=_now())
            )
        return bool(result.rowcount > 0)

    def acquire_lease(
        self, run_id: str, owner: str, *, now: datetime, ttl_seconds: float
    ) -> str | None:
        """Take or renew the run's lease; return None on success, else the current holder.

        The lease is free when nobody holds it, when ``owner`` already holds it, or when
        the holder's lease has expired (a crashed process).
        """
        expires = now + timedelta(seconds=ttl_seconds)
        with self._tx() as conn:
            result = conn.execute(
                update(runs)
                .where(
                    runs.c.run_id == run_id,
                    or_(
                        runs.c.lease_owner.is_(None),
                        runs.c.lease_owner == owner,
                        runs.c.lease_expires_at < now,
                    ),
                )
                .values(
                    lease_owner=owner,
                    lease_expires_at=expires,
                    lease_token=case(
                        (runs.c.lease_owner == owner, runs.c.lease_token),
                        else_=runs.c.lease_token + 1,
                    ),
                )
            )
            if result.rowcount > 0:
                return None
            holder = conn.execute(
                select(runs.c.lease_owner, runs.c.lease_expires_at).where(runs.c.run_id == run_id)
            ).first()
        if holder is None:
            return "<no such run>"
        return f"{holder[0]} (until {_aware(holder[1])})"

    def release_lease(self, run_id: str, owner: str) -> None:
        """Give the lease up if ``owner`` holds it."""
        with self._tx() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id, runs.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    def set_retention(self, run_id: str, retention: JSONObject) -> None:
        """Record what was exported and pruned."""
        with self._tx() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(retention=_dumps(retention), updated_at=_now())
            )

    def chunks_with_pending_items(self, run_id: str) -> set[str]:
        """Chunks still holding the request line of a queued or retrying item."""
        with self._tx() as conn:
            return {
                str(c)
                for c in conn.execute(
                    select(items.c.chunk_id)
                    .where(items.c.run_id == run_id, items.c.status.in_([QUEUED, RETRY]))
                    .distinct()
                ).scalars()
                if c is not None
            }

    def finish_ingest(self, run_id: str) -> None:
        """Mark the source fully read."""
        with self._tx() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(ingest_complete=True, updated_at=_now())
            )

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
        now = _now()
        rows = [
            {
                "run_id": run_id,
                "seq": it.seq,
                "item_id": it.item_id,
                "payload_json": it.payload_json,
                "metadata_json": it.metadata_json,
                "status": QUEUED if it.status is ItemStatus.PENDING else it.status.value,
                "chunk_id": it.chunk_id,
                "attempts": 0 if it.status is ItemStatus.PENDING else 1,
                "submissions": 1 if it.status is ItemStatus.PENDING else 0,
                "free_resubmits": 0,
                "error_code": it.error.code if it.error else None,
                "error_message": it.error.message if it.error else None,
            }
            for it in new_items
        ]
        rejected = sum(1 for it in new_items if it.status is ItemStatus.FAILED)
        try:
            with self._tx() as conn:
                if rows:
                    executemany(conn, _ITEM_INSERT, rows)
                if rejected:
                    self._assign_finished_seqs(
                        conn, run_id, [it.seq for it in new_items if it.status is ItemStatus.FAILED]
                    )
                for chunk in chunks:
                    self._upsert_chunk(conn, chunk)
                values: dict[str, Any] = {
                    "total_items": runs.c.total_items + len(rows),
                    "failed_items": runs.c.failed_items + rejected,
                    "updated_at": now,
                }
                if checkpoint is not None:
                    values["source_checkpoint"] = _dumps(checkpoint)
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
        with self._tx() as conn:
            clash = conn.execute(
                select(items.c.item_id)
                .where(items.c.run_id == run_id, items.c.item_id.in_(ids[:30000]))
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
        with self._tx() as conn:
            for start in range(0, len(item_ids), 20000):
                part = item_ids[start : start + 20000]
                found.update(
                    conn.execute(
                        select(items.c.item_id).where(
                            items.c.run_id == run_id, values_in(conn, items.c.item_id, part)
                        )
                    ).scalars()
                )
        return found

    def max_item_seq(self, run_id: str) -> int:
        """Highest item seq of the run, or -1."""
        with self._tx() as conn:
            value = conn.execute(
                select(func.max(items.c.seq)).where(items.c.run_id == run_id)
            ).scalar()
        return -1 if value is None else int(value)

    # ------------------------------------------------------------------ chunks

    def save_chunk(self, chunk: ChunkRecord, *, expected: ChunkState | None) -> bool:
        """Insert (expected None) or conditionally update a chunk."""
        with self._tx() as conn:
            if expected is None:
                self._upsert_chunk(conn, chunk)
                return True
            result = conn.execute(
                update(chunks)
                .where(
                    chunks.c.run_id == chunk.run_id,
                    chunks.c.chunk_id == chunk.chunk_id,
                    chunks.c.state == expected.value,
                )
                .values(**self._chunk_values(chunk))
            )
            return bool(result.rowcount > 0)

    def list_chunks(
        self, run_id: str, states: Collection[ChunkState] | None = None
    ) -> list[ChunkRecord]:
        """Chunks of the run in seq order."""
        stmt = select(chunks).where(chunks.c.run_id == run_id)
        if states is not None:
            stmt = stmt.where(chunks.c.state.in_([s.value for s in states]))
        with self._tx() as conn:
            rows = conn.execute(stmt.order_by(chunks.c.seq)).all()
        return [self._chunk_from_row(r._mapping) for r in rows]

    def _upsert_chunk(self, conn: Connection, chunk: ChunkRecord) -> None:
        result = conn.execute(
            update(chunks)
            .where(chunks.c.run_id == chunk.run_id, chunks.c.chunk_id == chunk.chunk_id)
            .values(**self._chunk_values(chunk))
        )
        if result.rowcount == 0:
            conn.execute(
                insert(chunks).values(
                    run_id=chunk.run_id,
                    chunk_id=chunk.chunk_id,
                    created_at=chunk.created_at,
                    **self._chunk_values(chunk),
                )
            )

    @staticmethod
    def _chunk_values(chunk: ChunkRecord) -> dict[str, Any]:
        return {
            "seq": chunk.seq,
            "state": chunk.state.value,
            "request_count": chunk.request_count,
            "byte_count": chunk.byte_count,
            "sha256": chunk.sha256,
            "file_id": chunk.file_id,
            "batch_id": chunk.batch_id,
            "provider_status": chunk.provider_status,
            "not_before": chunk.not_before,
            "last_error": chunk.last_error,
            "updated_at": _now(),
        }

    # ------------------------------------------------------------------ results

    def record_outcomes(
        self, run_id: str, chunk: ChunkRecord, outcomes: Sequence[ItemOutcome]
    ) -> int:
        """Apply a collected chunk's outcomes and mark it collected, in one transaction.

        Only items still queued in this chunk with the same submission number change,
        so a replay after a crash (or a second collector) is a no-op.
        """
        with self._tx() as conn:
            # Claim the chunk first: only one collection of a submitted chunk can commit.
            # (SQLite serialises writers; on Postgres the row lock makes a concurrent
            # collector wait here and then find the chunk already collected.)
            claimed = conn.execute(
                update(chunks)
                .where(
                    chunks.c.run_id == run_id,
                    chunks.c.chunk_id == chunk.chunk_id,
                    chunks.c.state == ChunkState.SUBMITTED.value,
                )
                .values(**self._chunk_values(chunk))
            )
            if claimed.rowcount == 0:
                return 0
            # Rows still change only while queued with the same submission number.
            # Each row changes only while queued with the same submission number; the
            # driver's rowcount says how many did, so counters never drift.
            done = sorted((o for o in outcomes if o.status.is_terminal), key=lambda o: o.seq)
            retry = [o for o in outcomes if not o.status.is_terminal]
            counters: dict[str, Any] = {}
            tokens_in = tokens_out = changed = 0
            start = self._reserve_finished_seqs(conn, run_id, len(done)) if done else 0
            for status, column in _COUNTER.items():
                group = [(i, o) for i, o in enumerate(done) if o.status is status]
                if not group:
                    continue
                n = 0
                for part in range(0, len(group), _BULK):  # bounded parameter lists
                    n += executemany(
                        conn,
                        _DONE_UPDATE,
                        [
                            {**_outcome_params(run_id, o), "b_finished": start + i}
                            for i, o in group[part : part + _BULK]
                        ],
                    )
                changed += n
                counters[column] = runs.c[column] + n
                if n < len(group):
                    # Some outcomes were stale: count tokens only for rows that changed,
                    # recognisable by the result cursor this transaction gave them.
                    applied = set(
                        conn.execute(
                            select(items.c.seq).where(
                                items.c.run_id == run_id,
                                items.c.finished_seq >= start,
                                items.c.finished_seq < start + len(done),
                            )
                        ).scalars()
                    )
                    group = [(i, o) for i, o in group if o.seq in applied]
                tokens_in += sum(o.usage.input_tokens for _, o in group if o.usage)
                tokens_out += sum(o.usage.output_tokens for _, o in group if o.usage)
            if retry:
                n = sum(
                    executemany(
                        conn,
                        _RETRY_UPDATE,
                        [_outcome_params(run_id, o) for o in retry[part : part + _BULK]],
                    )
                    for part in range(0, len(retry), _BULK)
                )
                changed += n
                if n == len(retry):
                    tokens_in += sum(o.usage.input_tokens for o in retry if o.usage)
                    tokens_out += sum(o.usage.output_tokens for o in retry if o.usage)
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(
                    input_tokens=runs.c.input_tokens + tokens_in,
                    output_tokens=runs.c.output_tokens + tokens_out,
                    updated_at=_now(),
                    **counters,
                )
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

    def _assign_finished_seqs(self, conn: Connection, run_id: str, seqs: Sequence[int]) -> None:
        start = self._reserve_finished_seqs(conn, run_id, len(seqs))
        executemany(
            conn,
            update(items)
            .where(and_(items.c.run_id == run_id, items.c.seq == _bind("b_seq")))
            .values(finished_seq=_bind("b_finished")),
            [{"b_seq": s, "b_finished": start + i} for i, s in enumerate(sorted(seqs))],
        )

    def queued_items(self, run_id: str, chunk_id: str) -> list[QueuedItem]:
        """Items still queued in ``chunk_id``, with their attempt bookkeeping."""
        with self._tx() as conn:
            rows = conn.execute(
                select(
                    items.c.seq, items.c.submissions, items.c.attempts, items.c.free_resubmits
                ).where(
                    items.c.run_id == run_id,
                    items.c.chunk_id == chunk_id,
                    items.c.status == QUEUED,
                )
            ).all()
        return [QueuedItem(int(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def retry_candidates(
        self, run_id: str, *, now: datetime, limit: int, after_seq: int = -1
    ) -> list[RetryCandidate]:
        """Items waiting for a retry whose backoff has passed, in seq order."""
        with self._tx() as conn:
            rows = conn.execute(
                select(items.c.seq, items.c.chunk_id, items.c.submissions, items.c.not_before)
                .where(
                    items.c.run_id == run_id,
                    items.c.chunk_id.in_(_collected_chunks(run_id)),
                    items.c.status == RETRY,
                    items.c.seq > after_seq,
                )
                .order_by(items.c.seq)
                .limit(limit)
            ).all()
        return [
            RetryCandidate(seq=int(r.seq), chunk_id=str(r.chunk_id), submission=int(r.submissions))
            for r in rows
            if r.not_before is None or _aware(r.not_before) <= now  # type: ignore[operator]
        ]

    def next_retry_time(self, run_id: str) -> datetime | None:
        """Earliest backoff end among items waiting for a retry."""
        with self._tx() as conn:
            value = conn.execute(
                select(func.min(items.c.not_before)).where(
                    items.c.run_id == run_id,
                    items.c.chunk_id.in_(_collected_chunks(run_id)),
                    items.c.status == RETRY,
                )
            ).scalar()
        return _aware(value)

    def count_retry(self, run_id: str) -> int:
        """How many items wait for a retry."""
        with self._tx() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(items)
                    .where(
                        items.c.run_id == run_id,
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
                executemany(
                    conn,
                    update(items)
                    .where(
                        and_(
                            items.c.run_id == run_id,
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
            seqs = list(
                conn.execute(
                    select(items.c.seq).where(
                        items.c.run_id == run_id, items.c.status.in_([QUEUED, RETRY])
                    )
                ).scalars()
            )
            if not seqs:
                return 0
            conn.execute(
                update(items)
                .where(items.c.run_id == run_id, items.c.status.in_([QUEUED, RETRY]))
                .values(
                    status=ItemStatus.CANCELLED.value,
                    error_code="cancelled",
                    error_message=reason,
                )
            )
            self._assign_finished_seqs(conn, run_id, seqs)
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(cancelled_items=runs.c.cancelled_items + len(seqs), updated_at=_now())
            )
        return len(seqs)

    def read_results(self, run_id: str, *, after: int, limit: int) -> list[ResultRow]:
        """Terminal items after the cursor, in finishing order."""
        with self._tx() as conn:
            rows = conn.execute(
                select(items)
                .where(
                    items.c.run_id == run_id,
                    items.c.finished_seq.is_not(None),
                    items.c.finished_seq > after,
                )
                .order_by(items.c.finished_seq)
                .limit(limit)
            ).all()
        return [self._result_from_row(r._mapping) for r in rows]

    def item_status(self, run_id: str, item_id: str) -> ResultRow | None:
        """One item by id."""
        with self._tx() as conn:
            row = conn.execute(
                select(items).where(items.c.run_id == run_id, items.c.item_id == item_id)
            ).first()
        return None if row is None else self._result_from_row(row._mapping)

    def close(self) -> None:
        """Dispose of the connection pool."""
        self._engine.dispose()

    # ------------------------------------------------------------------ helpers

    def _tx(self) -> Any:
        return _Tx(self._engine)

    @staticmethod
    def _run_from_row(m: Any) -> RunRecord:
        return RunRecord(
            run_id=m["run_id"],
            status=RunStatus(m["status"]),
            status_reason=m["status_reason"],
            job_spec=_loads(m["job_spec"]) or {},
            job_fingerprint=m["job_fingerprint"],
            source_identity=_loads(m["source_identity"]),
            source_checkpoint=_loads(m["source_checkpoint"]),
            ingest_complete=bool(m["ingest_complete"]),
            total_items=int(m["total_items"]),
            completed_items=int(m["completed_items"]),
            failed_items=int(m["failed_items"]),
            cancelled_items=int(m["cancelled_items"]),
            input_tokens=int(m["input_tokens"]),
            output_tokens=int(m["output_tokens"]),
            owner=_loads(m["owner"]),
            retention=_loads(m["retention"]),
            created_at=_aware(m["created_at"]) or _now(),
            updated_at=_aware(m["updated_at"]) or _now(),
        )

    @staticmethod
    def _chunk_from_row(m: Any) -> ChunkRecord:
        return ChunkRecord(
            run_id=m["run_id"],
            chunk_id=m["chunk_id"],
            seq=int(m["seq"]),
            state=ChunkState(m["state"]),
            request_count=int(m["request_count"]),
            byte_count=int(m["byte_count"]),
            sha256=m["sha256"],
            file_id=m["file_id"],
            batch_id=m["batch_id"],
            provider_status=m["provider_status"],
            not_before=_aware(m["not_before"]),
            last_error=m["last_error"],
            created_at=_aware(m["created_at"]) or _now(),
            updated_at=_aware(m["updated_at"]) or _now(),
        )

    @staticmethod
    def _result_from_row(m: Any) -> ResultRow:
        error = ItemError(m["error_code"], m["error_message"] or "") if m["error_code"] else None
        usage = (
            Usage(int(m["input_tokens"] or 0), int(m["output_tokens"] or 0))
            if m["input_tokens"] is not None or m["output_tokens"] is not None
            else None
        )
        return ResultRow(
            seq=int(m["seq"]),
            item_id=m["item_id"],
            status=_public_status(m["status"]),
            output_json=m["output_json"],
            error=error,
            attempts=int(m["attempts"]),
            usage=usage,
            metadata_json=m["metadata_json"],
            finished_seq=int(m["finished_seq"] or 0),
        )


def _collected_chunks(run_id: str) -> Any:
    """Subquery: ids of the run's collected chunks (items waiting for a retry sit in one)."""
    return select(chunks.c.chunk_id).where(
        chunks.c.run_id == run_id, chunks.c.state == ChunkState.COLLECTED.value
    )


def _bind(name: str) -> Any:
    return bindparam(name)


_LIVE_ROW = and_(
    items.c.run_id == bindparam("b_run"),
    items.c.seq == bindparam("b_seq"),
    items.c.status == QUEUED,
    items.c.submissions == bindparam("b_sub"),
)
_DONE_UPDATE = (
    update(items)
    .where(_LIVE_ROW)
    .values(
        status=bindparam("b_status"),
        output_json=bindparam("b_output"),
        error_code=bindparam("b_code"),
        error_message=bindparam("b_message"),
        input_tokens=bindparam("b_in"),
        output_tokens=bindparam("b_out"),
        attempts=items.c.attempts + bindparam("b_spent"),
        finished_seq=bindparam("b_finished"),
    )
)
_RETRY_UPDATE = (
    update(items)
    .where(_LIVE_ROW)
    .values(
        status=RETRY,
        error_code=bindparam("b_code"),
        error_message=bindparam("b_message"),
        attempts=items.c.attempts + bindparam("b_spent"),
        free_resubmits=items.c.free_resubmits + (1 - bindparam("b_spent")),
        not_before=bindparam("b_not_before", type_=DateTime(timezone=True)),
    )
)

_ITEM_INSERT = insert(items).values(
    {
        name: bindparam(name, type_=items.c[name].type)
        for name in (
            "run_id",
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
    }
)


def _outcome_params(run_id: str, o: ItemOutcome) -> dict[str, Any]:
    return {
        "b_run": run_id,
        "b_seq": o.seq,
        "b_sub": o.submission,
        "b_status": o.status.value,
        "b_output": o.output_json,
        "b_code": o.error.code if o.error else None,
        "b_message": o.error.message if o.error else None,
        "b_in": o.usage.input_tokens if o.usage else None,
        "b_out": o.usage.output_tokens if o.usage else None,
        "b_spent": 1 if o.spend_attempt else 0,
        "b_not_before": o.retry_not_before,
    }


class _Tx:
    """One transaction; SQLAlchemy errors become StorageError at this edge."""

    def __init__(self, engine: Engine) -> None:
        self._cm = engine.begin()

    def __enter__(self) -> Connection:
        try:
            return self._cm.__enter__()
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot reach the batchor store: {exc}") from exc

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            self._cm.__exit__(exc_type, exc, tb)
        except IntegrityError:
            raise
        except SQLAlchemyError as err:
            raise StorageError(f"batchor store transaction failed: {err}") from err
        if isinstance(exc, SQLAlchemyError) and not isinstance(exc, IntegrityError):
            raise StorageError(f"batchor store operation failed: {exc}") from exc


class SQLiteStorage(SQLStateStore):
    """Control-plane store in a SQLite file (WAL mode).

    Args:
        path: Database file; parent directories are created (0700).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageError(f"cannot create directory for {self.path}: {exc}") from exc
        super().__init__(f"sqlite:///{self.path}")
        if self.path.exists():
            os.chmod(self.path, 0o600)


class PostgresStorage(SQLStateStore):
    """Control-plane store in Postgres (``pip install 'batchor[postgres]'``).

    Args:
        url: ``postgresql://user:pass@host/db`` (the psycopg 3 driver is used).
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)


class MemoryStateStore(SQLStateStore):
    """In-memory store for tests: gone when the process ends.

    It is the same SQL store on an in-memory SQLite database, so it behaves exactly like
    the durable stores.
    """

    def __init__(self) -> None:
        super().__init__("sqlite://")
