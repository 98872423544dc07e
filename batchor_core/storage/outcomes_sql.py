"""Outcome updates of the SQL store: the statements and each outcome's row of values.

One :class:`~batchor_core.storage.dialects.RowUpdate` per kind of outcome, bound as one
tuple per item in its columns' order: one statement per recorded part on Postgres,
executemany elsewhere. Each changes an item only while it is still queued with the same
submission, so a replayed collection changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, and_, bindparam, update

from batchor_core.ports import ItemOutcome
from batchor_core.storage.base import QUEUED, RETRY
from batchor_core.storage.dialects import RowUpdate
from batchor_core.storage.schema import items

__all__ = ["DONE", "RETRY_UPDATE", "done_row", "retry_row"]


def _live_row(v: Mapping[str, Any]) -> Any:
    """The item a row of outcome values is for, while still queued in that submission."""
    return and_(
        items.c.run_key == bindparam("b_run"),
        items.c.seq == v["seq"],
        items.c.status == QUEUED,
        items.c.submissions == v["sub"],
    )


DONE = RowUpdate(
    {
        "seq": BigInteger(),
        "sub": Integer(),
        "status": String(),
        "output": Text(),
        "code": String(),
        "message": Text(),
        "in": Integer(),
        "out": Integer(),
        "cached": Integer(),
        "reasoning": Integer(),
        "spent": Integer(),
        "finished": BigInteger(),
    },
    lambda v: (
        update(items)
        .where(_live_row(v))
        .values(
            status=v["status"],
            output_json=v["output"],
            error_code=v["code"],
            error_message=v["message"],
            input_tokens=v["in"],
            output_tokens=v["out"],
            cached_input_tokens=v["cached"],
            reasoning_tokens=v["reasoning"],
            attempts=items.c.attempts + v["spent"],
            finished_seq=v["finished"],
        )
    ),
    key=items.c.seq,
)
RETRY_UPDATE = RowUpdate(
    {
        "seq": BigInteger(),
        "sub": Integer(),
        "code": String(),
        "message": Text(),
        "spent": Integer(),
        "not_before": DateTime(timezone=True),
    },
    lambda v: (
        update(items)
        .where(_live_row(v))
        .values(
            status=RETRY,
            error_code=v["code"],
            error_message=v["message"],
            attempts=items.c.attempts + v["spent"],
            free_resubmits=items.c.free_resubmits + (1 - v["spent"]),
            not_before=v["not_before"],
        )
    ),
    key=items.c.seq,
)


def done_row(o: ItemOutcome, finished: int) -> tuple[Any, ...]:
    """A terminal outcome's values for :data:`DONE` (this runs once per item)."""
    error, usage = o.error, o.usage
    if usage is None:
        return (
            o.seq,
            o.submission,
            o.status.value,
            o.output_json,
            error.code if error else None,
            error.message if error else None,
            None,
            None,
            None,
            None,
            1 if o.spend_attempt else 0,
            finished,
        )
    return (
        o.seq,
        o.submission,
        o.status.value,
        o.output_json,
        error.code if error else None,
        error.message if error else None,
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.reasoning_tokens,
        1 if o.spend_attempt else 0,
        finished,
    )


def retry_row(o: ItemOutcome) -> tuple[Any, ...]:
    """An outcome to retry: its values for :data:`RETRY_UPDATE`."""
    error = o.error
    return (
        o.seq,
        o.submission,
        error.code if error else None,
        error.message if error else None,
        1 if o.spend_attempt else 0,
        o.retry_not_before,
    )
