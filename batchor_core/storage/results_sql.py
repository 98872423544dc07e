"""Result reads of the SQL store: row pages for ``results()``, column pages for Arrow.

Both are bulk reads, so they go through the driver's own cursor (see
:func:`batchor_core.storage.dialects.fetch_tuples`) and select only the columns they use.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import partial
from operator import itemgetter
from typing import Any

from sqlalchemy import Select, bindparam, select

from batchor_core.ports import ResultColumns, ResultRow
from batchor_core.storage.base import StoreBase, public_status
from batchor_core.storage.dialects import PreparedSelect, fetch_tuples
from batchor_core.storage.schema import items, run_key_of

__all__ = ["ResultOps", "result_columns_query"]


class ResultOps(StoreBase):
    """Terminal-item reads, mixed into :class:`SQLStateStore` through ``ItemOps``."""

    def read_results(self, run_id: str, *, after: int, limit: int) -> list[ResultRow]:
        """Terminal items after the cursor, in finishing order.

        The hot read-back path: only the needed columns, and the driver's tuples taken
        as they are (finished rows hold a terminal status, which is its public value).
        """
        with self._read() as conn:
            rows = _RESULTS_PAGE.fetch(conn, run_id=run_id, after=after, limit=limit)
        return list(map(_as_result_row, rows))

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
        with self._read() as conn:
            rows = fetch_tuples(conn, query)
        got: dict[str, Any] = dict.fromkeys(_RESULT_FIELDS)
        for i, name in enumerate(wanted, start=1):  # column by column, in C (zip(*rows) is slower)
            got[name] = list(map(itemgetter(i), rows))
        return ResultColumns(**got, last_seq=int(rows[-1][0]) if rows else after_seq)

    def item_status(self, run_id: str, item_id: str) -> ResultRow | None:
        """One item by id (an internal state reads as ``pending``, with cursor 0)."""
        with self._read() as conn:
            row = conn.execute(
                select(*_RESULT_ROW_COLUMNS).where(
                    items.c.run_key == run_key_of(run_id), items.c.item_id == item_id
                )
            ).first()
        if row is None:
            return None
        got = ResultRow._make(row)
        return got._replace(
            status=public_status(got.status).value, finished_seq=got.finished_seq or 0
        )


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
        items.c.run_key == run_key_of(run_id),
        items.c.seq > after_seq,
        items.c.finished_seq.is_not(None),
    )
    if finished_after:
        query = query.where(items.c.finished_seq > finished_after)
    if status is not None:
        query = query.where(items.c.status == status)
    return query.order_by(items.c.seq).limit(limit), wanted


_RESULT_ROW_COLUMNS = (
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
_RESULTS_PAGE = PreparedSelect(
    select(*_RESULT_ROW_COLUMNS)
    .where(
        items.c.run_key == run_key_of(bindparam("run_id")),
        items.c.finished_seq.is_not(None),
        items.c.finished_seq > bindparam("after"),
    )
    .order_by(items.c.finished_seq)
    .limit(bindparam("limit"))
)
# A driver tuple of _RESULT_ROW_COLUMNS as a ResultRow, in C (no Python call per row).
_as_result_row = partial(tuple.__new__, ResultRow)
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
