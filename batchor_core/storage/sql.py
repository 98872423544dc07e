"""The SQL control-plane store (SQLAlchemy Core), for SQLite files, Postgres and memory.

Every state change is one transaction whose ``WHERE`` clause names the state it expects,
so replaying a step after a crash changes nothing. Item operations live in
:mod:`batchor_core.storage.items_sql`, shared plumbing in :mod:`batchor_core.storage.base`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Collection
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    and_,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError

from batchor_core.errors import (
    ConfigurationError,
    StorageError,
)
from batchor_core.models import JSONObject, RunStatus
from batchor_core.ports import (
    ChunkRecord,
    ChunkState,
    ChunkStats,
    LeaseGrant,
    RunRecord,
)
from batchor_core.storage.schema import chunks, collections, items, run_key_of, runs

__all__ = [
    "MemoryStateStore",
    "PostgresStorage",
    "SQLStateStore",
    "SQLiteStorage",
    "upgrade",
]

from batchor_core.storage.base import QUEUED, RETRY, aware_utc, dump_json, utc_now
from batchor_core.storage.budget_sql import BudgetOps
from batchor_core.storage.items_sql import ItemOps
from batchor_core.storage.liveness import FileLiveness, Liveness, PostgresLiveness

# A new run's key: one more than the largest so far. SQLite serialises writers, so the
# read and the insert cannot interleave there; two Postgres transactions can read the same
# largest key, and the unique index lets one of them commit (the other retries).
_NEXT_RUN_KEY = select(func.coalesce(func.max(runs.c.run_key), 0) + 1).scalar_subquery()
_RUN_KEY_ATTEMPTS = 100


def _new_run(record: RunRecord) -> dict[str, Any]:
    """The columns of a new run's row (all but its key)."""
    return {
        "run_id": record.run_id,
        "status": record.status.value,
        "status_reason": record.status_reason,
        "job_spec": dump_json(record.job_spec),
        "job_fingerprint": record.job_fingerprint,
        "source_identity": dump_json(record.source_identity),
        "source_checkpoint": dump_json(record.source_checkpoint),
        "ingest_complete": record.ingest_complete,
        "total_items": 0,
        "completed_items": 0,
        "failed_items": 0,
        "cancelled_items": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cached_input_tokens": 0,
        "reasoning_tokens": 0,
        "token_limit_strikes": 0,
        "limits": dump_json(record.limits),
        "next_finished_seq": 1,
        "owner": dump_json(record.owner),
        "lease_token": 0,
        # Free, as if just released (a NULL expiry marks a broken lease).
        "lease_expires_at": record.created_at,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    }


def _host_of(owner: str) -> str:
    return owner.split(":", 1)[0]


class SQLStateStore(BudgetOps, ItemOps):
    """Control-plane store on any SQLAlchemy URL.

    Args:
        url: SQLAlchemy database URL.
        create_tables: Create missing tables on first use.
    """

    # ------------------------------------------------------------------ runs

    def create_run(self, record: RunRecord) -> RunRecord:
        """Insert the run unless it exists; return the stored run.

        Two processes may create the same run id at once (on Postgres both can miss it
        in a select): the primary key lets one insert win, and the other reads the
        winner's row, so it sees the stored job (and a job mismatch) like any later
        caller instead of a constraint violation.
        """
        existing = self.load_run(record.run_id)
        if existing is not None:
            return existing
        for _ in range(_RUN_KEY_ATTEMPTS):
            try:
                with self._tx() as conn:
                    conn.execute(insert(runs).values(run_key=_NEXT_RUN_KEY, **_new_run(record)))
                return record
            except IntegrityError as exc:
                winner = self.load_run(record.run_id)
                if winner is not None:
                    return winner
                # Not this run id: another run took the same key (two Postgres
                # transactions read the same largest key). Read it again and retry.
                error = exc
        raise StorageError(
            f"cannot create run {record.run_id!r}: {error.orig}", run_id=record.run_id
        ) from error

    def load_run(self, run_id: str) -> RunRecord | None:
        """The run, or None."""
        with self._read() as conn:
            row = conn.execute(_RUNS_WITH_MARKER.where(runs.c.run_id == run_id)).first()
        return None if row is None else self._run_from_row(row._mapping)

    def list_run_ids(self) -> list[str]:
        """Every run id, oldest first."""
        with self._read() as conn:
            return list(conn.execute(select(runs.c.run_id).order_by(runs.c.created_at)).scalars())

    def list_runs(
        self,
        *,
        statuses: Collection[RunStatus] | None = None,
        collected: bool | None = None,
        run_ids: Collection[str] | None = None,
        collected_after: datetime | None = None,
    ) -> list[RunRecord]:
        """Runs oldest first, filtered in SQL by status, collection marker and id."""
        stmt = _RUNS_WITH_MARKER
        if collected_after is not None:
            stmt = stmt.where(collections.c.collected_at >= collected_after)
        if statuses is not None:
            stmt = stmt.where(runs.c.status.in_([s.value for s in statuses]))
        if collected is True:
            stmt = stmt.where(collections.c.run_id.is_not(None))
        elif collected is False:
            stmt = stmt.where(collections.c.run_id.is_(None))
        if run_ids is not None:
            stmt = stmt.where(runs.c.run_id.in_(list(run_ids)))
        with self._read() as conn:
            rows = conn.execute(stmt.order_by(runs.c.created_at, runs.c.run_id)).all()
        return [self._run_from_row(r._mapping) for r in rows]

    def chunk_stats(self, run_ids: Collection[str]) -> dict[str, ChunkStats]:
        """Batch counts, batch ids and stalls per run, one query per 500 runs."""
        wanted = list(run_ids)
        totals: dict[str, list[int]] = {r: [0, 0, 0, 0, 0, 0] for r in wanted}
        batch_ids: dict[str, list[str]] = {r: [] for r in wanted}
        # The latest error of a chunk currently stalled: (updated_at, last_error).
        latest: dict[str, tuple[datetime, str | None]] = {}
        submitted = ChunkState.SUBMITTED.value
        collected = ChunkState.COLLECTED.value
        with self._read() as conn:
            for start in range(0, len(wanted), 500):
                rows = conn.execute(
                    select(
                        chunks.c.run_id,
                        chunks.c.state,
                        chunks.c.request_count,
                        chunks.c.batch_id,
                        chunks.c.first_error_at,
                        chunks.c.last_error,
                        chunks.c.updated_at,
                        chunks.c.est_tokens,
                    )
                    .where(chunks.c.run_id.in_(wanted[start : start + 500]))
                    .order_by(chunks.c.run_id, chunks.c.seq)
                ).all()
                for run_id, state, request_count, batch_id, stalled, error, updated, est in rows:
                    acc = totals[run_id]
                    if state != collected:
                        acc[4] += int(est or 0)
                        acc[5] += int(request_count)
                    if request_count > 0:
                        acc[0] += 1
                    if state == submitted:
                        acc[1] += 1
                        acc[2] += int(request_count)
                    if batch_id:
                        batch_ids[run_id].append(str(batch_id))
                    if stalled is not None and state != collected:
                        acc[3] += 1
                        when = aware_utc(updated) or utc_now()
                        if run_id not in latest or when >= latest[run_id][0]:
                            latest[run_id] = (when, error)
        return {
            r: ChunkStats(
                t[0],
                t[1],
                t[2],
                tuple(batch_ids[r]),
                stalled_chunks=t[3],
                last_error=latest[r][1] if r in latest else None,
                open_est_tokens=t[4],
                open_requests=t[5],
            )
            for r, t in totals.items()
        }

    def mark_collected(
        self, run_id: str, by: str, *, now: datetime, replace: str | None = None
    ) -> str:
        """Insert the run's collection marker once; the primary key picks one winner."""
        try:
            with self._tx() as conn:
                conn.execute(
                    insert(collections).values(run_id=run_id, collected_by=by, collected_at=now)
                )
            return by
        except IntegrityError:
            pass  # someone already holds it (or the run does not exist)
        with self._tx() as conn:
            if replace is not None and replace != by:
                conn.execute(
                    update(collections)
                    .where(collections.c.run_id == run_id, collections.c.collected_by == replace)
                    .values(collected_by=by, collected_at=now)
                )
            holder = conn.execute(
                select(collections.c.collected_by).where(collections.c.run_id == run_id)
            ).scalar()
        return str(holder) if holder is not None else ""

    def release_collected(self, run_id: str, by: str) -> bool:
        """Delete the marker if ``by`` holds it (a collector that failed before finishing)."""
        with self._tx() as conn:
            result = conn.execute(
                delete(collections).where(
                    collections.c.run_id == run_id, collections.c.collected_by == by
                )
            )
        return bool(result.rowcount > 0)

    def error_counts(self, run_id: str) -> dict[str, int]:
        """Error codes of failed and cancelled items, with how many items carry each."""
        with self._read() as conn:
            rows = conn.execute(
                select(items.c.error_code, func.count())
                .where(
                    items.c.run_key == run_key_of(run_id),
                    items.c.status.in_(["failed", "cancelled"]),
                    items.c.error_code.is_not(None),
                )
                .group_by(items.c.error_code)
            ).all()
        return {str(code): int(n) for code, n in sorted(rows, key=lambda r: (-r[1], r[0]))}

    def set_source(self, run_id: str, identity: JSONObject) -> None:
        """Record the source identity if none is recorded yet."""
        with self._tx() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id, runs.c.source_identity.is_(None))
                .values(source_identity=dump_json(identity), updated_at=utc_now())
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
                stmt.values(status=status.value, status_reason=reason, updated_at=utc_now())
            )
        return bool(result.rowcount > 0)

    _liveness: Liveness | None = None

    def acquire_lease(
        self, run_id: str, owner: str, *, now: datetime, ttl_seconds: float
    ) -> LeaseGrant:
        """Take or renew the run's lease; the grant has the fencing token, or the holder.

        The lease is free when nobody holds it, when ``owner`` already holds it, when the
        holder's lease has expired, or when its holder is dead: its liveness lock (see
        :mod:`batchor_core.storage.liveness`) is free, so a restart after a crash takes
        over at once. The token changes whenever the lease changes hands (including
        after a release), which fences out a holder that was only presumed dead.
        """
        expires = now + timedelta(seconds=ttl_seconds)
        liveness = self._liveness
        had_lock = False
        alive_check: bool | None = None
        if liveness is not None:
            had_lock = liveness.holds(run_id, owner)
            alive_check = liveness.try_hold(run_id, owner)
        free: list[Any] = [runs.c.lease_owner == owner]
        if alive_check is False:
            # Another live process holds the run's lock, so it is taking the lease or
            # giving it up right now (the lock is held a moment longer than the row on
            # both ends): a row that looks free is not. Only a holder whose TTL ran out
            # (hung, or unseen on another host) is taken over, and one an operator broke
            # (``break_lease`` leaves no expiry).
            free += [
                and_(runs.c.lease_owner.is_not(None), runs.c.lease_expires_at < now),
                and_(runs.c.lease_owner.is_(None), runs.c.lease_expires_at.is_(None)),
            ]
        else:
            free += [runs.c.lease_owner.is_(None), runs.c.lease_expires_at < now]
        if alive_check is True and not had_lock and liveness is not None:
            # Nobody else held the liveness lock, so the row's holder is dead; with a
            # per-host lock that is only known for holders on this host.
            if liveness.across_hosts:
                free.append(runs.c.lease_owner.is_not(None))
            else:
                free.append(runs.c.lease_owner.startswith(_host_of(owner) + ":", autoescape=True))
        grant = self._grant(run_id, owner, expires, now, free)
        if grant.token is None and liveness is not None and alive_check is True:
            # Hold the lock only while holding the lease (also when the lease was lost
            # to a TTL takeover: keeping the lock would make the new holder look dead).
            liveness.drop(run_id, owner)
        return grant

    def _grant(
        self, run_id: str, owner: str, expires: datetime, now: datetime, free: list[Any]
    ) -> LeaseGrant:
        with self._tx() as conn:
            result = conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id, or_(*free))
                .values(
                    lease_owner=owner,
                    lease_expires_at=expires,
                    lease_token=case(
                        (runs.c.lease_owner == owner, runs.c.lease_token),
                        else_=runs.c.lease_token + 1,
                    ),
                )
                .returning(runs.c.lease_token)
            )
            token = result.scalar()
            if token is not None:
                return LeaseGrant(token=int(token))
            holder = conn.execute(
                select(runs.c.lease_owner, runs.c.lease_expires_at).where(runs.c.run_id == run_id)
            ).first()
        if holder is None:
            return LeaseGrant(token=None, holder="<no such run>")
        return LeaseGrant(token=None, holder=f"{holder[0]} (until {aware_utc(holder[1])})")

    def release_lease(self, run_id: str, owner: str) -> None:
        """Give the lease up if ``owner`` holds it (the row first, then the lock).

        A free lease keeps the time it was given up in ``lease_expires_at``: when a
        process last advanced the run (the budget's waiting reason tells a run no process
        advances any more from one stepped between polls).
        """
        try:
            with self._tx() as conn:
                conn.execute(
                    update(runs)
                    .where(runs.c.run_id == run_id, runs.c.lease_owner == owner)
                    .values(lease_owner=None, lease_expires_at=utc_now())
                )
        finally:
            if self._liveness is not None:
                self._liveness.drop(run_id, owner)

    def break_lease(self, run_id: str) -> str | None:
        """Clear the run's lease whoever holds it; return the holder it had, if any.

        The fencing token moves on, so a holder that is in fact alive fails its next
        renewal and stops before its next side effect.
        """
        with self._tx() as conn:
            holder = conn.execute(
                select(runs.c.lease_owner).where(runs.c.run_id == run_id)
            ).scalar()
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(lease_owner=None, lease_expires_at=None, lease_token=runs.c.lease_token + 1)
            )
        return None if holder is None else str(holder)

    def set_retention(self, run_id: str, retention: JSONObject) -> None:
        """Record what was exported and pruned."""
        with self._tx() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(retention=dump_json(retention), updated_at=utc_now())
            )

    def chunks_with_pending_items(self, run_id: str) -> set[str]:
        """Chunks still holding the request line of a queued or retrying item."""
        with self._read() as conn:
            return {
                str(c)
                for c in conn.execute(
                    select(items.c.chunk_id)
                    .where(
                        items.c.run_key == run_key_of(run_id), items.c.status.in_([QUEUED, RETRY])
                    )
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
                .values(ingest_complete=True, updated_at=utc_now())
            )

    # ------------------------------------------------------------------ chunks

    def save_chunk(self, chunk: ChunkRecord, *, expected: ChunkState | None) -> bool:
        """Insert (expected None) or conditionally update a chunk."""
        with self._tx() as conn:
            if expected is None:
                self._upsert_chunk(conn, chunk)
                return True
            return self._swap_chunk(conn, chunk, expected)

    def _swap_chunk(self, conn: Connection, chunk: ChunkRecord, expected: ChunkState) -> bool:
        """Save ``chunk`` if it is still in state ``expected`` (compare and set)."""
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
        with self._read() as conn:
            rows = conn.execute(stmt.order_by(chunks.c.seq)).all()
        return [self._chunk_from_row(r._mapping) for r in rows]


_RUNS_WITH_MARKER = select(
    runs, collections.c.collected_by, collections.c.collected_at
).select_from(runs.outerjoin(collections, collections.c.run_id == runs.c.run_id))


class SQLiteStorage(SQLStateStore):
    """Control-plane store in a SQLite file (WAL mode).

    Lease holders also hold a file lock in ``<file>.leases/`` (one small file per run),
    so a holder that dies on this host is taken over at once.

    Args:
        path: Database file; parent directories are created (0700).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).resolve()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StorageError(f"cannot create directory for {self.path}: {exc}") from exc
        _prepare_sqlite_file(self.path)
        # Quoted: in a plain f"sqlite:///{path}" a "?" starts the URL's query and "%41"
        # is decoded, so another file would be opened.
        super().__init__(URL.create("sqlite", database=str(self.path)).render_as_string())
        self._liveness = FileLiveness(self.path.with_name(self.path.name + ".leases"))

    def _safe_url(self) -> str:
        # For people: the path as it is, not as the URL quotes it.
        return f"sqlite:///{self.path}"


def _prepare_sqlite_file(path: Path) -> None:
    """Create a new store file 0600, or check that an existing file is a batchor store.

    SQLite gives the ``-wal`` and ``-shm`` files (which hold payloads too) the database
    file's permissions, so creating the file 0600 before SQLite opens it makes all three
    private. An existing file keeps the permissions its owner gave it, and a SQLite file
    that belongs to something else is refused before it is touched (opening it would
    switch it to WAL mode and add our tables).
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return
    except FileExistsError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot create the batchor store {path}: {exc}") from exc
    if path.stat().st_size == 0:
        return  # created by a process that is creating the store right now
    try:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            tables = {
                str(r[0])
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigurationError(
            f"{path} is not a batchor store (not a SQLite database: {exc}); "
            "give batchor a new file name"
        ) from exc
    if tables and "batchor_meta" not in tables:
        shown = ", ".join(sorted(tables)[:5])
        raise ConfigurationError(
            f"{path} is a SQLite database of something else (tables: {shown}), not a "
            "batchor store; batchor left it untouched. Give batchor a new file name."
        )


def upgrade(url: str) -> str:
    """Upgrade the store at ``url`` to this batchor's schema; return the revision.

    Opening a store does the same automatically; this is the explicit form for operators
    (and a later ``batchor db upgrade``). SQLite URLs get the same file checks as
    :class:`SQLiteStorage`.

    Raises:
        ConfigurationError: The store was written by a newer batchor, or the file is not a
            batchor store.
        StorageError: The database cannot be reached.
    """
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    store: SQLStateStore
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        store = SQLiteStorage(parsed.database)
    else:
        store = SQLStateStore(url)
    try:
        return store.schema_revision or ""
    finally:
        store.close()


class PostgresStorage(SQLStateStore):
    """Control-plane store in Postgres (``pip install 'batchor[postgres]'``).

    Lease holders also hold a session advisory lock on one dedicated connection, so a
    holder that dies (on any host) is taken over as soon as the server drops it.

    Args:
        url: ``postgresql://user:pass@host/db`` (the psycopg 3 driver is used).
    """

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._pg_liveness = PostgresLiveness(self._engine)
        self._liveness = self._pg_liveness

    def close(self) -> None:
        """Release the liveness connection, then the pool."""
        self._pg_liveness.close()
        super().close()


class MemoryStateStore(SQLStateStore):
    """In-memory store for tests: gone when the process ends.

    It is the same SQL store on an in-memory SQLite database, so it behaves exactly like
    the durable stores.
    """

    def __init__(self) -> None:
        super().__init__("sqlite://")
