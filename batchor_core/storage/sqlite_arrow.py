"""Result pages of a SQLite store read straight into Arrow with ADBC (optional fast path).

The Python ``sqlite3`` driver builds one tuple per row, which is most of ``to_arrow()``'s
time on a large run. The ADBC SQLite driver (``pip install 'batchor[fast]'``) fills Arrow
columns in C instead. It runs the same page query as
:meth:`~batchor_core.storage.results_sql.ResultOps.read_result_columns` on its own
read-only connection, so a page holds the same rows either way.

ADBC infers each column's type from the values of a batch (an all-NULL column comes back
as int64). Every page is one batch, so a page never changes type midway; each column is
then cast to its declared type, and a page whose values do not fit (which a batchor store
never holds) is read through the ordinary driver instead: never a different answer.

:func:`prefetch_pages` reads the pages on a worker thread, one page ahead of the caller:
SQLite and ADBC run in C without the GIL, so the next page is fetched while the caller
parses the last one (the two halves of ``to_arrow()`` take about as long each).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Generator
from typing import TYPE_CHECKING, Any, TypeAlias

from batchor_core.storage.read_ahead import read_ahead
from batchor_core.storage.results_sql import result_columns_query

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]

    from batchor_core.ports import StateStore

__all__ = [
    "ADBC_ENV",
    "TEXT_COLUMNS",
    "ArrowPage",
    "SQLiteArrowReader",
    "open_arrow_reader",
    "page_sql",
    "prefetch_pages",
]

ArrowPage: TypeAlias = "tuple[dict[str, pa.Array], int]"
"""A page's ``{stored column: array}`` and its last row's ``seq``."""

# Stored columns whose values are text; the rest are integers.
TEXT_COLUMNS = frozenset(
    {"item_id", "status", "output_json", "error_code", "error_message", "metadata_json"}
    | {"payload_json"}
)


ADBC_ENV = "BATCHOR_SQLITE_ADBC"
"""``1``: read a SQLite store's result pages through ADBC in this process (see
:func:`open_arrow_reader`), only where nothing else in the process uses the file; ``0``:
never through ADBC; unset: large results through ADBC in a child process (see
:mod:`batchor_core.storage.arrow_child`)."""


def open_arrow_reader(storage: StateStore) -> SQLiteArrowReader | None:
    """A reader for ``storage`` if it is a SQLite file store, ADBC's SQLite driver is
    installed and :data:`ADBC_ENV` is ``1``; otherwise None (read pages with
    ``read_result_columns``).

    Opt-in because the ADBC driver carries its own copy of SQLite, and two copies of
    SQLite must not open one file in one process: POSIX locks are the process's, so
    neither copy sees the other's (the driver's reader took the WAL index for its own
    while the store's writer used it: ``database disk image is malformed`` and ``no
    such table`` for an ingest running beside ``to_arrow()``), and closing either
    copy's file releases the other's locks, which other processes then rely on.
    """
    from batchor_core.storage.sql import SQLiteStorage

    if not isinstance(storage, SQLiteStorage) or os.environ.get(ADBC_ENV) != "1":
        return None
    try:
        import adbc_driver_manager
        import adbc_driver_sqlite
    except ImportError:
        return None
    try:
        return SQLiteArrowReader(storage, adbc_driver_sqlite, adbc_driver_manager)
    except Exception:  # the driver cannot open the file (locked, say): the driver path
        return None


class SQLiteArrowReader:
    """Reads result pages of one SQLite store as Arrow arrays; close it when done.

    Uses ADBC's low-level API: its DB-API module imports ``pyarrow.dataset`` and pandas,
    a third of a second before the first page for a caller who wants neither.
    """

    def __init__(self, storage: Any, driver: Any, manager: Any) -> None:
        from batchor_core.storage.arrow_child import open_adbc

        self._database, self._conn, self._stmt = open_adbc(storage.path, driver, manager)

    def read_page(
        self,
        run_id: str,
        *,
        after_seq: int,
        limit: int,
        status: str | None,
        finished_after: int,
        fields: Collection[str] | None,
        json_lines: bool = False,
    ) -> ArrowPage | None:
        """One page as ``{stored column: array}`` (text as ``string``, integers as
        ``int64``) and the last row's ``seq`` (``after_seq`` for an empty page).

        With ``json_lines``, ``output_json`` holds each output followed by a newline
        (``{}`` for none), built by SQLite: the array's text buffer is then the page's
        outputs as JSON lines, ready for Arrow's JSON reader with no copy.

        Returns None when ADBC cannot give the page in those types; read it the
        ordinary way then.
        """
        from batchor_core.storage.arrow_child import fetch_page

        sql, names = page_sql(
            run_id,
            after_seq=after_seq,
            limit=limit,
            status=status,
            finished_after=finished_after,
            fields=fields,
            json_lines=json_lines,
        )
        return fetch_page(self._stmt, sql, names, TEXT_COLUMNS, limit=limit, after_seq=after_seq)

    def close(self) -> None:
        """Close the statement, connection and database handles."""
        for name in ("_stmt", "_conn", "_database"):
            handle = getattr(self, name, None)
            if handle is not None:
                handle.close()


def page_sql(
    run_id: str,
    *,
    after_seq: int,
    limit: int,
    status: str | None,
    finished_after: int,
    fields: Collection[str] | None,
    json_lines: bool = False,
) -> tuple[str, list[str]]:
    """The page query as SQL text, values inline, and its columns' names (``seq``
    first)."""
    query, wanted = result_columns_query(
        run_id,
        after_seq=after_seq,
        limit=limit,
        status=status,
        finished_after=finished_after,
        fields=fields,
    )
    if json_lines and "output_json" in wanted:
        query = query.with_only_columns(
            *(_as_json_line(c) if c.name == "output_json" else c for c in query.selected_columns),
            maintain_column_froms=True,
        )
    # Values inline (SQLAlchemy quotes them): binding them would take Arrow arrays
    # built from Python values, and building one imports pandas (pyarrow checks for
    # pandas objects), a third of a second for a caller who may not want it.
    from sqlalchemy.dialects import sqlite

    sql = str(query.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    return sql, ["seq", *wanted]


def _as_json_line(column: Any) -> Any:
    from sqlalchemy import func, literal

    return (func.coalesce(column, "{}") + literal("\n")).label(column.name)


def prefetch_pages(
    reader: SQLiteArrowReader,
    run_id: str,
    *,
    after_seq: int,
    limit: int,
    status: str | None,
    finished_after: int,
    fields: Collection[str] | None,
    json_lines: bool = False,
) -> Generator[ArrowPage | None, None, None]:
    """The pages :meth:`SQLiteArrowReader.read_page` gives from ``after_seq`` on, read on
    a worker thread one page ahead (see :func:`~batchor_core.storage.read_ahead.read_ahead`);
    ends after the first empty page.

    A page ADBC cannot give comes as None and ends the pages: read the rest the
    ordinary way, after the last page's ``seq``. The reader belongs to the worker from
    here on (it is closed when the pages end, or when the caller closes this iterator).
    """

    def read(after: int) -> ArrowPage | None:
        return reader.read_page(
            run_id,
            after_seq=after,
            limit=limit,
            status=status,
            finished_after=finished_after,
            fields=fields,
            json_lines=json_lines,
        )

    return read_ahead(
        read,
        after_seq=after_seq,
        is_last=lambda columns: not columns,
        close=reader.close,
        name="batchor-arrow-pages",
    )
