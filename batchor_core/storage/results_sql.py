"""Result reads of the SQL store: row pages for ``results()``, column pages for Arrow.

Both are bulk reads, so they go through the driver's own cursor (see
:func:`batchor_core.storage.dialects.fetch_tuples`) and select only the columns they use.
"""

from __future__ import annotations

from collections.abc import Collection
from operator import itemgetter
from typing import Any

from sqlalchemy import Select, select

from batchor_core.models import ItemError, ItemStatus, Usage
from batchor_core.ports import ResultColumns, ResultRow
from batchor_core.storage.base import StoreBase, public_status
from batchor_core.storage.dialects import fetch_tuples
from batchor_core.storage.schema import items

__all__ = ["ResultOps", "result_columns_query"]


class ResultOps(StoreBase):
    """Terminal-item reads, mixed into :class:`SQLStateStore` through ``ItemOps``."""

    def read_results(self, run_id: str, *, after: int, limit: int) -> list[ResultRow]:
        """Terminal items after the cursor, in finishing order.

        The hot read-back path: only the needed columns, plain driver tuples, and no
        per-row enum or usage lookups beyond what each row holds.
        """
        query = (
            select(*_RESULT_ROW_COLUMNS)
            .where(
                items.c.run_id == run_id,
                items.c.finished_seq.is_not(None),
                items.c.finished_seq > after,
            )
            .order_by(items.c.finished_seq)
            .limit(limit)
        )
        with self._tx() as conn:
            rows = fetch_tuples(conn, query)
        statuses = _TERMINAL
        out = []
        for (
            seq,
            item_id,
            status,
            output,
            code,
            message,
            attempts,
            tin,
            tout,
            tcached,
            treason,
            meta,
            fin,
        ) in rows:
            out.append(
                ResultRow(
                    seq=seq,
                    item_id=item_id,
                    status=statuses.get(status) or public_status(status),
                    output_json=output,
                    error=ItemError(code, message or "") if code else None,
                    attempts=attempts,
                    usage=(
                        None
                        if tin is None and tout is None
                        else Usage(int(tin or 0), int(tout or 0), tcached or 0, treason or 0)
                    ),
                    metadata_json=meta,
                    finished_seq=fin,
                )
            )
        return out

    def read_result_columns(
        self,
        run_id: str,
        *,
        after_seq: int,
        limit: int,
        status: str | None = None,
        finished_after: int = 0,
        fields: Collection[str] | None = None,
    ) -> ResultColumns:
        """Terminal items after ``after_seq`` as columns, in ``seq`` order.

        Walks the primary key rather than the finished-order index: a scan in key order
        reads pages sequentially, where the index costs a random lookup per row. Only the
        asked-for columns are read, transposed straight from the driver's tuples.
        """
        query, wanted = result_columns_query(
            run_id,
            after_seq=after_seq,
            limit=limit,
            status=status,
            finished_after=finished_after,
            fields=fields,
        )
        with self._tx() as conn:
            rows = fetch_tuples(conn, query)
        got: dict[str, Any] = dict.fromkeys(_RESULT_FIELDS)
        for i, name in enumerate(wanted, start=1):  # column by column, in C (zip(*rows) is slower)
            got[name] = list(map(itemgetter(i), rows))
        return ResultColumns(**got, last_seq=int(rows[-1][0]) if rows else after_seq)

    def item_status(self, run_id: str, item_id: str) -> ResultRow | None:
        """One item by id."""
        with self._tx() as conn:
            row = conn.execute(
                select(items).where(items.c.run_id == run_id, items.c.item_id == item_id)
            ).first()
        return None if row is None else self._result_from_row(row._mapping)


def result_columns_query(
    run_id: str,
    *,
    after_seq: int,
    limit: int,
    status: str | None,
    finished_after: int,
    fields: Collection[str] | None,
) -> tuple[Select[Any], list[str]]:
    """The page query of :meth:`ResultOps.read_result_columns` (``seq`` first, then the
    returned field names' columns), shared with the SQLite Arrow reader."""
    wanted = ["item_id"] + [
        f
        for f in _RESULT_FIELDS
        if f != "item_id" and (f in fields if fields else f != "payload_json")
    ]
    query = select(items.c.seq, *(items.c[f] for f in wanted)).where(
        items.c.run_id == run_id,
        items.c.seq > after_seq,
        items.c.finished_seq.is_not(None),
    )
    if finished_after:
        query = query.where(items.c.finished_seq > finished_after)
    if status is not None:
        query = query.where(items.c.status == status)
    return query.order_by(items.c.seq).limit(limit), wanted


_RESULT_ROW_COLUMNS = (
    items.c.seq,
    items.c.item_id,
    items.c.status,
    items.c.output_json,
    items.c.error_code,
    items.c.error_message,
    items.c.attempts,
    items.c.input_tokens,
    items.c.output_tokens,
    items.c.cached_input_tokens,
    items.c.reasoning_tokens,
    items.c.metadata_json,
    items.c.finished_seq,
)
# Rows with a finished_seq hold one of these (never the internal queued/retry states).
_TERMINAL = {s.value: s for s in (ItemStatus.COMPLETED, ItemStatus.FAILED, ItemStatus.CANCELLED)}
# ResultColumns' fields, which are also the items table's column names.
_RESULT_FIELDS = (
    "item_id",
    "status",
    "output_json",
    "error_code",
    "error_message",
    "attempts",
    "input_tokens",
    "output_tokens",
    "metadata_json",
    "finished_seq",
    "payload_json",
)
