"""Budget operations of the SQL store: the enqueued-token reservation and run budgets.

The reservation is the one place where runs meet: every run in the store that submits
batches of the same model draws on one budget. Its check (sum of in-flight estimates)
and its write (the chunk moves to ``submitting``) happen in one transaction that is
serialised per model: SQLite takes the database write lock at ``BEGIN IMMEDIATE``, and
Postgres takes a transaction-scoped advisory lock keyed by the model, so two processes
(or two machines) can never both see room for the last slot.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, select, text, update

from batchor_core.models import JSONObject
from batchor_core.ports import BudgetHolder, ChunkRecord, ChunkState, Reservation
from batchor_core.storage.base import aware_utc, dump_json, utc_now
from batchor_core.storage.schema import chunks, runs

__all__ = ["BudgetOps"]

_IN_FLIGHT = (ChunkState.SUBMITTING.value, ChunkState.SUBMITTED.value)
# A batch ends at the provider within its completion window (24 h, then it expires), so a
# chunk not touched for longer no longer holds budget even if its run was abandoned and
# never collected it (its run would otherwise block the model's budget for good).
_HELD_FOR = timedelta(hours=25)
# Distinguishes batchor's advisory keys from the lease keys (liveness.py uses one-arg locks).
_LOCK_CLASS = 0x6261_7463  # "batc"


def _lock_key(model: str) -> int:
    """A stable signed 32-bit key for ``model`` (the second half of a two-int lock)."""
    return int.from_bytes(hashlib.sha256(model.encode()).digest()[:4], "big", signed=True)


class BudgetOps:
    """Mixed into :class:`SQLStateStore` (needs ``_tx``, ``_read`` and ``_swap_chunk``)."""

    _tx: Any
    _read: Any
    _swap_chunk: Any

    def in_flight_tokens(self, model: str) -> int:
        """Estimated tokens of the model's chunks in flight, over every run."""
        with self._read() as conn:
            return _in_flight(conn, model)

    def budget_holders(self, model: str) -> list[BudgetHolder]:
        """The runs whose chunks make up :meth:`in_flight_tokens` of ``model``, most
        tokens first."""
        tokens = func.coalesce(func.sum(chunks.c.est_tokens), 0)
        now = utc_now()
        query = (
            select(
                runs.c.run_id,
                runs.c.status,
                runs.c.lease_owner,
                runs.c.lease_expires_at,
                tokens.label("tokens"),
                func.count().label("batches"),
            )
            .join(runs, runs.c.run_id == chunks.c.run_id)
            .where(*_held(model, now))
            .group_by(runs.c.run_id, runs.c.status, runs.c.lease_owner, runs.c.lease_expires_at)
            .order_by(tokens.desc(), runs.c.run_id)
        )
        with self._read() as conn:
            rows = conn.execute(query).mappings().all()
        holders = []
        for row in rows:
            until = aware_utc(row["lease_expires_at"])
            advancing = row["lease_owner"] is not None and until is not None and until > now
            holders.append(
                BudgetHolder(
                    run_id=row["run_id"],
                    status=row["status"],
                    tokens=int(row["tokens"]),
                    batches=int(row["batches"]),
                    advancing=advancing,
                    last_advanced=None if advancing else until,
                )
            )
        return holders

    def reserve_submit(
        self,
        chunk: ChunkRecord,
        *,
        expected: ChunkState,
        limit: int | None,
        full_limit: int | None = None,
    ) -> Reservation:
        """Move ``chunk`` to its new state if it fits the model's budget (one transaction)."""
        model = chunk.model or ""
        with self._tx() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:a, :b)"),
                    {"a": _LOCK_CLASS, "b": _lock_key(model)},
                )
            in_flight = _in_flight(conn, model) if limit is not None else 0
            if limit is not None:
                fits = in_flight + chunk.est_tokens <= limit
                alone = in_flight == 0 and chunk.est_tokens <= (full_limit or limit)
                if not (fits or alone):
                    return Reservation(False, in_flight)
            return Reservation(self._swap_chunk(conn, chunk, expected), in_flight)

    def set_waiting(self, run_id: str, reason: str | None) -> None:
        """Record (or clear) why the running run is not submitting."""
        with self._tx() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(waiting_reason=None if reason is None else reason[:2000])
            )

    def set_token_limit_strikes(self, run_id: str, strikes: int) -> None:
        """Record the run's count of token-limit rejections in a row."""
        with self._tx() as conn:
            conn.execute(
                update(runs).where(runs.c.run_id == run_id).values(token_limit_strikes=strikes)
            )

    def set_limits(self, run_id: str, limits: JSONObject) -> None:
        """Replace the run's budgets."""
        with self._tx() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(limits=dump_json(limits), updated_at=utc_now())
            )


def _held(model: str, now: datetime) -> tuple[ColumnElement[bool], ...]:
    """The chunks that hold ``model``'s budget."""
    return (
        chunks.c.model == model,
        chunks.c.state.in_(_IN_FLIGHT),
        chunks.c.updated_at > now - _HELD_FOR,
    )


def _in_flight(conn: Connection, model: str) -> int:
    total = conn.execute(
        select(func.coalesce(func.sum(chunks.c.est_tokens), 0)).where(*_held(model, utc_now()))
    ).scalar_one()
    return int(total)
