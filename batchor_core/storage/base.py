"""Shared pieces of the SQL store: connection handling, row conversion, constants."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    insert,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from batchor_core.errors import (
    StorageError,
)
from batchor_core.models import ItemStatus, JSONObject, RunStatus
from batchor_core.ports import (
    ChunkRecord,
    ChunkState,
    RunRecord,
)
from batchor_core.storage.dialects import ReadOnlyTransaction, make_engine
from batchor_core.storage.migrate import ensure_current
from batchor_core.storage.schema import chunks

__all__ = [
    "BULK",
    "COUNTERS",
    "QUEUED",
    "RETRY",
    "ReadTransaction",
    "StoreBase",
    "Transaction",
    "aware_utc",
    "dump_json",
    "load_json",
    "public_status",
    "utc_now",
]

QUEUED = "queued"
BULK = 5_000  # rows per executemany: bounded memory, still few round trips
RETRY = "retry"
COUNTERS = {
    ItemStatus.COMPLETED: "completed_items",
    ItemStatus.FAILED: "failed_items",
    ItemStatus.CANCELLED: "cancelled_items",
}


def aware_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def utc_now() -> datetime:
    return datetime.now(UTC)


def dump_json(value: JSONObject | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_json(value: str | None) -> JSONObject | None:
    if value is None:
        return None
    loaded: JSONObject = json.loads(value)
    return loaded


def public_status(stored: str) -> ItemStatus:
    return ItemStatus.PENDING if stored in (QUEUED, RETRY) else ItemStatus(stored)


class StoreBase:
    """Control-plane store on any SQLAlchemy URL.

    Opening a store brings its schema to the current revision (creating it in a new
    database; see :mod:`batchor_core.storage.migrate`).

    Args:
        url: SQLAlchemy database URL.
        create_tables: Create or upgrade the schema on open (False: use it as it is).

    Attributes:
        schema_revision: The schema revision the store is at (None if not checked).
    """

    schema_revision: str | None = None

    def __init__(self, url: str, *, create_tables: bool = True) -> None:
        self.url = url
        # The connection of this thread's open read() block, if any.
        self._reading = threading.local()
        try:
            self._engine: Engine = make_engine(url)
        except SQLAlchemyError as exc:
            raise StorageError(
                f"cannot open the batchor store at {self._safe_url()}: {exc}"
            ) from exc
        try:
            if create_tables:
                self.schema_revision = ensure_current(self._engine, where=self._safe_url())
        except BaseException as exc:
            self._engine.dispose()  # a refused store keeps no connection open
            if isinstance(exc, SQLAlchemyError):
                raise StorageError(
                    f"cannot open the batchor store at {self._safe_url()}: {exc}"
                ) from exc
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._safe_url()!r})"

    def _safe_url(self) -> str:
        try:
            from sqlalchemy.engine import make_url

            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:
            return "<invalid url>"

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
            "first_error_at": chunk.first_error_at,
            "est_tokens": chunk.est_tokens,
            "model": chunk.model,
            "updated_at": utc_now(),
        }

    def close(self) -> None:
        """Dispose of the connection pool."""
        self._engine.dispose()

    # ------------------------------------------------------------------ helpers

    @contextmanager
    def read(self) -> Iterator[None]:
        """Read from one snapshot, without waiting for writers: ``with store.read(): ...``.

        The store's reads made by this thread inside the block share one read-only
        transaction, so they agree with each other (a run's counters and its batches,
        say) and see the state last committed when the first of them ran. On SQLite it
        takes no write lock: a collection committing meanwhile neither waits for it nor
        makes it wait. Blocks nest (the outermost one holds the transaction). A write
        to the store inside the block raises :class:`StorageError`: the block is for
        reading only. Do not keep a block open across a ``yield``: the caller's code
        would run inside it.

        Raises:
            StorageError: The store cannot be reached, or a write was attempted inside.
        """
        if _read_block(self._reading) is not None:
            yield
            return
        with ReadTransaction(self._engine, self._reading) as conn:
            try:  # set inside: whatever interrupts the block, the thread leaves it
                self._reading.conn = conn
                yield
            finally:
                self._reading.conn = None

    def _read(self) -> ReadTransaction:
        """A transaction for work that never writes: this thread's open :meth:`read`
        block, else a read-only transaction of its own."""
        return ReadTransaction(self._engine, self._reading)

    def _tx(self) -> Any:
        if _read_block(self._reading) is not None:
            raise StorageError(
                "cannot write to the batchor store inside its read() block: the block "
                "is one read-only snapshot; write after it ends"
            )
        return Transaction(self._engine)

    @staticmethod
    def _run_from_row(m: Any) -> RunRecord:
        return RunRecord(
            run_id=m["run_id"],
            status=RunStatus(m["status"]),
            status_reason=m["status_reason"],
            job_spec=load_json(m["job_spec"]) or {},
            job_fingerprint=m["job_fingerprint"],
            source_identity=load_json(m["source_identity"]),
            source_checkpoint=load_json(m["source_checkpoint"]),
            ingest_complete=bool(m["ingest_complete"]),
            total_items=int(m["total_items"]),
            completed_items=int(m["completed_items"]),
            failed_items=int(m["failed_items"]),
            cancelled_items=int(m["cancelled_items"]),
            input_tokens=int(m["input_tokens"]),
            output_tokens=int(m["output_tokens"]),
            owner=load_json(m["owner"]),
            retention=load_json(m["retention"]),
            created_at=aware_utc(m["created_at"]) or utc_now(),
            updated_at=aware_utc(m["updated_at"]) or utc_now(),
            collected_by=m.get("collected_by"),
            collected_at=aware_utc(m.get("collected_at")),
            cached_input_tokens=int(m["cached_input_tokens"] or 0),
            reasoning_tokens=int(m["reasoning_tokens"] or 0),
            limits=load_json(m["limits"]),
            waiting_reason=m["waiting_reason"],
            token_limit_strikes=int(m["token_limit_strikes"] or 0),
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
            not_before=aware_utc(m["not_before"]),
            last_error=m["last_error"],
            created_at=aware_utc(m["created_at"]) or utc_now(),
            updated_at=aware_utc(m["updated_at"]) or utc_now(),
            first_error_at=aware_utc(m["first_error_at"]),
            est_tokens=int(m["est_tokens"] or 0),
            model=m["model"],
        )


def _read_block(reading: threading.local) -> Connection | None:
    """The connection of this thread's open ``read()`` block, if any. One already closed
    belongs to a block that was interrupted on its way out (a KeyboardInterrupt before
    it let go of it): that block is over."""
    conn: Connection | None = getattr(reading, "conn", None)
    if conn is not None and conn.closed:
        reading.conn = conn = None
    return conn


class Transaction:
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


class ReadTransaction:
    """A read-only transaction (see :class:`~batchor_core.storage.dialects.ReadOnlyTransaction`),
    or the one of this thread's open ``read()`` block; SQLAlchemy errors become
    StorageError at this edge (a write attempted in it among them)."""

    def __init__(self, engine: Engine, reading: threading.local) -> None:
        self._engine = engine
        self._reading = reading
        self._own: ReadOnlyTransaction | None = None

    def __enter__(self) -> Connection:
        bound = _read_block(self._reading)
        if bound is not None:
            return bound
        self._own = ReadOnlyTransaction(self._engine)
        try:
            return self._own.__enter__()
        except SQLAlchemyError as exc:
            raise StorageError(f"cannot reach the batchor store: {exc}") from exc

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._own is not None:
            try:
                self._own.__exit__(exc_type, exc, tb)
            except SQLAlchemyError as err:
                if err is not exc:
                    raise StorageError(f"batchor store read failed: {err}") from err
        if isinstance(exc, SQLAlchemyError):
            raise StorageError(f"batchor store read failed: {exc}") from exc
