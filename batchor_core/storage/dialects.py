"""Every difference between SQL dialects lives here."""

from __future__ import annotations

import itertools
import json
import operator
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    String,
    Table,
    Text,
    any_,
    bindparam,
    cast,
    column,
    create_engine,
    event,
    func,
    insert,
    literal_column,
    select,
)
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Update, UpdateBase
from sqlalchemy.sql.selectable import Select
from sqlalchemy.types import TypeEngine

from batchor_core import jsoncodec

__all__ = [
    "PreparedSelect",
    "ReadOnlyTransaction",
    "RowUpdate",
    "executemany",
    "fetch_tuples",
    "insert_rows",
    "make_engine",
    "values_in",
]


def make_engine(url: str) -> Engine:
    """Create an engine with the settings batchor needs for ``url``'s dialect.

    SQLite: WAL, ``synchronous=NORMAL``, a busy timeout, and ``BEGIN IMMEDIATE`` for every
    transaction that may write, so two processes never deadlock upgrading read locks to
    write locks; a :class:`ReadOnlyTransaction` begins deferred instead and cannot write.
    An in-memory SQLite URL shares one connection (the memory store).
    Postgres: a pre-pinged pool; conditional updates give the serialisation we need.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        memory = parsed.database in (None, "", ":memory:")
        if memory:
            engine = create_engine(
                "sqlite://",
                poolclass=StaticPool,
                connect_args={"check_same_thread": False},
            )
        else:
            engine = create_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine, wal=not memory)
        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, future=True)
    return create_engine(url)


def _configure_sqlite(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so BEGIN IMMEDIATE is ours.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if wal:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA temp_store=MEMORY")
        # 4 MB of page cache per connection (SQLite's default is 2 MB). More did not make
        # a 100k run faster here but cost 12 MB of peak RSS; the OS caches the file too.
        cursor.execute("PRAGMA cache_size=-4000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get(_READ_ONLY):
            # Deferred: WAL gives the transaction a snapshot at its first read and never
            # makes it wait for the write lock, nor a writer for it. query_only makes a
            # write in it fail at once (upgrading a deferred read to a write is what
            # could deadlock two processes), until ReadOnlyTransaction turns it off.
            conn.exec_driver_sql("BEGIN")
            # Marked before it is set: the mark outlives whatever interrupts what follows.
            conn.connection.info[_QUERY_ONLY] = True
            conn.connection.dbapi_connection.execute("PRAGMA query_only=1")
        else:
            if conn.connection.info.get(_QUERY_ONLY):
                # A read ended before it could turn query_only off (a KeyboardInterrupt
                # between its last two statements): this write would fail on it.
                _query_only_off(conn)
            conn.exec_driver_sql("BEGIN IMMEDIATE")


# Connection execution option: the transaction only reads (see ReadOnlyTransaction).
_READ_ONLY = "batchor_read_only"
# Key of a pooled SQLite connection's info: query_only may still be on.
_QUERY_ONLY = "batchor_query_only"


class ReadOnlyTransaction:
    """A transaction that only reads, on a connection of its own: one snapshot.

    SQLite begins it deferred (``BEGIN``, not ``BEGIN IMMEDIATE``): in WAL mode it reads
    the last committed state without the write lock, so it neither waits behind a
    writer nor holds one up. ``PRAGMA query_only`` is on for its duration, so a write in
    it fails at once (``attempt to write a readonly database``) rather than trying to
    upgrade to the write lock. The busy timeout still bounds the rare waits a WAL
    reader has (the WAL index being rebuilt after a crash).
    Postgres: ``REPEATABLE READ READ ONLY``, so several statements see one snapshot
    too, and a write fails at once.

    Use it only for work that never writes, and not for a read that must be followed
    by a write on the state it read (fencing): that belongs in the write transaction.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __enter__(self) -> Connection:
        conn = self._engine.connect()
        try:
            # Everything up to the return may be interrupted (a KeyboardInterrupt): the
            # connection is closed then, never left checked out in a transaction.
            self._conn = conn
            name = conn.dialect.name
            if name == "postgresql":
                # Attributes of the driver's connection (no round trip), reset by the
                # pool when the connection goes back.
                conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            elif name == "sqlite":
                conn.execution_options(**{_READ_ONLY: True})
            self._tx = conn.begin()
            return conn
        except BaseException:
            conn.close()
            raise

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        conn = self._conn
        try:
            if exc_type is None:
                self._tx.commit()
            else:
                self._tx.rollback()
        finally:
            try:
                if conn.dialect.name == "sqlite" and not conn.invalidated:
                    _writable_again(conn)
            finally:
                conn.close()


def _writable_again(conn: Connection) -> None:
    """Turn ``query_only`` off, so the connection goes back to the pool writable; one
    that cannot be is discarded instead."""
    try:
        _query_only_off(conn)
    except Exception:
        conn.invalidate()
        raise


def _query_only_off(conn: Connection) -> None:
    # Straight to the driver: a statement through SQLAlchemy would begin another
    # transaction.
    conn.connection.dbapi_connection.execute("PRAGMA query_only=0")  # type: ignore[union-attr]
    conn.connection.info.pop(_QUERY_ONLY, None)


def executemany(conn: Connection, stmt: UpdateBase, rows: Iterable[Mapping[str, Any]]) -> int:
    """Run ``stmt`` once per row through the driver's own executemany.

    SQLAlchemy's generic executemany path builds parameters row by row in Python, which
    dominates bulk ingest and collection; here the statement is compiled once and the
    rows stream to the driver's cursor (as tuples for positional drivers such as
    sqlite3, picked out with a C-level itemgetter), so a generator of rows is never
    held as a list. Bind type processors are applied so values are stored exactly as
    SQLAlchemy would store them. Driver errors are raised as SQLAlchemy's
    ``DBAPIError`` subclasses (``IntegrityError``, ...), like any other statement's.
    Returns the rows changed.
    """
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        return 0
    dialect = conn.dialect
    compiled = stmt.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    extra = {k: v for k, v in compiled.params.items() if k not in first}
    processors = {}
    for name, bind in compiled.binds.items():
        proc = bind.type.bind_processor(dialect)
        if proc is not None:
            processors[name] = proc
    prepared: Iterator[Mapping[str, Any]] = itertools.chain((first,), iterator)
    if extra or processors:

        def merge(row: Mapping[str, Any]) -> Mapping[str, Any]:
            merged = {**extra, **row} if extra else dict(row)
            for name, proc in processors.items():
                if name in merged:
                    merged[name] = proc(merged[name])
            return merged

        prepared = map(merge, prepared)
    params: Iterator[Any]
    if compiled.positional:
        order = list(compiled.positiontup or [])
        getter = operator.itemgetter(*order)
        params = map(getter, prepared) if len(order) > 1 else ((getter(r),) for r in prepared)
    else:
        params = prepared
    return _driver_executemany(conn, compiled.string, params)


def _driver_executemany(conn: Connection, sql: str, params: Iterable[Any]) -> int:
    """``sql`` once per parameter row on the driver's own cursor; driver errors are raised
    as SQLAlchemy's ``DBAPIError`` subclasses. Returns the rows changed."""
    dialect = conn.dialect
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(sql, params)  # type: ignore[arg-type]  # any iterable
        return int(cursor.rowcount)
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dialect.loaded_dbapi.Error) from exc
    finally:
        cursor.close()


def insert_rows(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    constants: Mapping[str, Any] | None = None,
) -> int:
    """Insert ``rows`` into ``table``: ``COPY`` on Postgres, else the driver's executemany.

    Each row holds the values of ``columns``, in that order; values past them are ignored,
    so a record whose leading fields are the columns is passed as it is. ``constants``
    are the columns with one value for every row (a run id, an initial status): SQLite
    gets them as literals in the statement (rendered by the column's type, so quoting is
    SQLAlchemy's), so each row binds only its own values and no dict or tuple is built per
    row in Python. Postgres loads the rows with ``COPY ... FROM STDIN``, about three times
    faster than executemany for ingest slices. Driver errors (a duplicate key) are raised
    as SQLAlchemy's ``DBAPIError`` subclasses (``IntegrityError``) like any other
    statement's. Returns the rows inserted.
    """
    constants = constants or {}
    dialect = conn.dialect
    names = list(columns)
    if dialect.name == "postgresql":
        return _copy_rows(conn, table, names, rows, constants)
    binds = {n: bindparam(n, type_=table.c[n].type) for n in names}
    processors = [table.c[n].type.bind_processor(dialect) for n in names]
    if dialect.paramstyle != "qmark" or any(p is not None for p in processors):
        # Not the hot path of any supported store: name the values, bind the constants
        # and let executemany apply the type processors.
        named = insert(table).values(
            binds | {n: bindparam(f"k_{n}", v, type_=table.c[n].type) for n, v in constants.items()}
        )
        return executemany(conn, named, (dict(zip(names, row, strict=False)) for row in rows))
    literals: dict[str, Any] = {
        n: literal_column(_literal(table.c[n].type, dialect, v)) for n, v in constants.items()
    }
    stmt = insert(table).inline().values(binds | literals)  # inline: no RETURNING of keys
    compiled = stmt.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    # The driver takes the row tuples in the statement's bind order, picked out in C.
    order = operator.itemgetter(*[names.index(n) for n in compiled.positiontup or []])
    params = map(order, rows) if len(names) > 1 else ((row[0],) for row in rows)
    return _driver_executemany(conn, compiled.string, params)


def _literal(type_: Any, dialect: Any, value: Any) -> str:
    """``value`` as a SQL literal of ``type_`` (NULL for None)."""
    if value is None:
        return "NULL"
    render = type_.literal_processor(dialect)
    if render is None:
        raise TypeError(f"cannot render a {type_!r} literal")
    return str(render(value))


def _copy_rows(
    conn: Connection,
    table: Table,
    names: list[str],
    rows: Iterable[Sequence[Any]],
    constants: Mapping[str, Any],
) -> int:
    """Postgres: ``COPY`` the rows, each followed by the constants' values."""
    dialect = conn.dialect
    width = len(names)
    procs = [table.c[n].type.bind_processor(dialect) for n in names]
    fixed = _processed(
        list(constants.values()), [table.c[n].type.bind_processor(dialect) for n in constants]
    )
    plain = all(p is None for p in procs)
    quote = dialect.identifier_preparer.quote
    columns = ", ".join(quote(n) for n in [*names, *constants])
    sql = f"COPY {quote(table.name)} ({columns}) FROM STDIN"
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    count = 0
    try:
        with cursor.copy(sql) as copy:
            write = copy.write_row
            for row in rows:
                values = tuple(row[:width]) if plain else _processed(row, procs)
                write(values + fixed)
                count += 1
        return count
    except dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(sql, None, exc, dialect.loaded_dbapi.Error) from exc
    finally:
        cursor.close()


def _processed(row: Sequence[Any], procs: Sequence[Any]) -> tuple[Any, ...]:
    """The first ``len(procs)`` values of ``row``, each through its type's bind processor."""
    return tuple(v if p is None or v is None else p(v) for v, p in zip(row, procs, strict=False))


def values_in(conn: Connection, column: ColumnElement[Any], values: Sequence[str]) -> Any:
    """``column IN (values)`` bound as ONE parameter, however many values there are.

    A plain ``IN`` list renders a placeholder per value, which costs more than the query
    itself for 10,000-id ingest slices. SQLite reads a JSON array through ``json_each``;
    Postgres takes an array with ``= ANY``.
    """
    if conn.dialect.name == "sqlite":
        table = func.json_each(bindparam("values_json", _json_array(values))).table_valued("value")
        return column.in_(select(table.c.value))
    if conn.dialect.name == "postgresql":
        return column == any_(bindparam("values_array", list(values), type_=ARRAY(String)))
    return column.in_(list(values))


def _json_array(values: Sequence[str]) -> str:
    """``values`` as a JSON array (orjson: an ingest slice's ids are 5,000 strings)."""
    try:
        return orjson.dumps(list(values)).decode()
    except TypeError:  # a lone surrogate: the standard library escapes it
        return json.dumps(list(values))


def fetch_tuples(conn: Connection, query: Select[Any]) -> list[tuple[Any, ...]]:
    """Run ``query`` on the driver's own cursor and return its plain tuples.

    For bulk reads of text and integer columns (no result type processing needed):
    SQLAlchemy's Row objects cost about as much as the driver's fetch itself. Driver
    errors are raised as SQLAlchemy's ``DBAPIError``, like any other statement's. The
    query must use plain binds only (no ``in_()`` lists, which SQLAlchemy expands at
    execution time).
    """
    compiled = query.compile(dialect=conn.dialect)
    return _fetch_compiled(conn, compiled, compiled.params)


class PreparedSelect:
    """A select read page after page: compiled once per dialect, not once per page.

    Compiling a select costs about as much as fetching a thousand short rows, so a
    paged read builds its query once with named :func:`~sqlalchemy.bindparam` values
    and passes them per call. Same rules as :func:`fetch_tuples` (plain binds only).
    """

    def __init__(self, query: Select[Any]) -> None:
        self._query = query
        self._compiled: dict[tuple[str, str], SQLCompiler] = {}

    def fetch(self, conn: Connection, **values: Any) -> list[tuple[Any, ...]]:
        """The rows for these bind values, as :func:`fetch_tuples` returns them."""
        dialect = conn.dialect
        key = (dialect.name, dialect.paramstyle)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._query.compile(dialect=dialect)
            self._compiled[key] = compiled
        return _fetch_compiled(conn, compiled, compiled.construct_params(values))


def _fetch_compiled(
    conn: Connection, compiled: Any, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    args: Any = (
        tuple(params[name] for name in compiled.positiontup or [])
        if compiled.positional
        else params
    )
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(compiled.string, args)
        return list(cursor.fetchall())
    except conn.dialect.loaded_dbapi.Error as exc:
        raise DBAPIError.instance(
            compiled.string, args, exc, conn.dialect.loaded_dbapi.Error
        ) from exc
    finally:
        cursor.close()


class RowUpdate:
    """One UPDATE applied to many rows of values, written once for every dialect.

    ``build`` makes the statement from ``values``: for each name of ``columns``, a column
    expression that stands for that value of the row being applied. Postgres applies a
    whole call in ONE statement, ``UPDATE ... FROM (<the rows>) AS v``, the rows sent as
    a single JSON array of arrays (encoded by orjson in C; psycopg's array dumpers walk
    every element in Python, which cost more than the update) and taken apart by the
    server. Other dialects run the statement once per row through the driver's
    executemany, the rows bound as tuples in the compiled statement's order (no dict per
    row), compiled once per dialect.

    Args:
        columns: Name and type of each value of a row, in the rows' order: ints, strs,
            None and aware datetimes. The first identifies the row: of rows repeating
            a value in one call, only the first is applied (one statement cannot apply
            two rows to one table row in order).
        build: Makes the statement; scalar binds it names (the same for every row) are
            given to :meth:`execute` by keyword.
        key: The table's column that the first value must equal (``build`` joins on
            it); on Postgres the rows' keys also search the table's index directly.
        max_json_bytes: On Postgres, rows whose JSON is larger are applied in several
            statements (halving until each fits, a single row always goes).
    """

    def __init__(
        self,
        columns: Mapping[str, TypeEngine[Any]],
        build: Callable[[Mapping[str, ColumnElement[Any]]], Update],
        *,
        key: ColumnElement[Any],
        max_json_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.names = tuple(columns)
        self.max_json_bytes = max_json_bytes
        self._per_row = build({n: bindparam(f"r_{n}", type_=t) for n, t in columns.items()})
        self._columns = dict(columns)
        self._build = build
        self._key = key
        self._json: Update | None = None  # built on first use: only Postgres needs it
        # Whether the Postgres statement also bounds the key by the rows' range.
        self._ranged = isinstance(next(iter(columns.values())), Integer)
        self._plans: weakref.WeakKeyDictionary[Dialect, _TuplePlan] = weakref.WeakKeyDictionary()

    def _json_statement(self) -> Update:
        """The Postgres statement: the rows arrive as one JSON array of arrays."""
        if self._json is not None:
            return self._json
        # Imported here: a SQLite process never loads SQLAlchemy's Postgres dialect.
        from sqlalchemy.dialects.postgresql import JSONB

        columns = self._columns

        def elements() -> Any:
            return func.jsonb_array_elements(
                cast(bindparam("rows_json", type_=Text()), JSONB)
            ).table_valued(column("value", JSONB))

        def value(row: Any, i: int, type_: TypeEngine[Any]) -> ColumnElement[Any]:
            return cast(row.c.value.op("->>")(literal_column(str(i))), type_)

        row = elements()
        rows = select(
            *(value(row, i, t).label(n) for i, (n, t) in enumerate(columns.items()))
        ).subquery("v")
        # The keys again, as one array that the table's index is searched with (an
        # InitPlan): left to the join alone, the planner, whose statistics lag behind a
        # freshly ingested run, scanned every item of the run for each part.
        key_row = elements()
        first_type = next(iter(columns.values()))
        keys = select(func.array_agg(value(key_row, 0, first_type))).scalar_subquery()
        statement = self._build({n: rows.c[n] for n in self.names}).where(
            self._key == any_(cast(keys, ARRAY(first_type)))
        )
        # And their range, as plain values: when the statistics know nothing of the run
        # yet, the planner reckons it one row and searches the index by the run alone,
        # filtering every item of the run against the array (2 s per 5,000 rows of a
        # 100k run); a range on the key is searched in the index at no extra cost.
        # Integer keys only: Python orders text by code point, the column by its
        # collation (en_US puts "a" before "B"), and a range in the wrong order would
        # leave rows out.
        if self._ranged:
            statement = statement.where(
                self._key.between(
                    bindparam("rows_lo", type_=first_type), bindparam("rows_hi", type_=first_type)
                )
            )
        self._json = statement
        return self._json

    def execute(self, conn: Connection, rows: Sequence[tuple[Any, ...]], **scalars: Any) -> int:
        """Apply ``rows`` (tuples of values in ``columns`` order); return the rows changed.

        Driver errors are raised as SQLAlchemy's ``DBAPIError`` subclasses.
        """
        if not rows:
            return 0
        if len({r[0] for r in rows}) < len(rows):
            rows = _first_per_key(rows)
        if conn.dialect.name == "postgresql":
            return self._execute_json(conn, rows, scalars)
        plan = self._plans.get(conn.dialect)
        if plan is None:
            plan = self._plans[conn.dialect] = _TuplePlan(self._per_row, self.names, conn.dialect)
        return plan.run(conn, rows, scalars)

    def _execute_json(
        self, conn: Connection, rows: Sequence[tuple[Any, ...]], scalars: Mapping[str, Any]
    ) -> int:
        payload = jsoncodec.dumps(rows)
        if len(payload) > self.max_json_bytes and len(rows) > 1:
            # Large outputs: halve, to stay far below jsonb's 256 MB and keep the
            # statement's memory bounded.
            half = len(rows) // 2
            return self._execute_json(conn, rows[:half], scalars) + self._execute_json(
                conn, rows[half:], scalars
            )
        statement = self._json_statement()
        params: dict[str, Any] = {"rows_json": payload.decode()}
        if self._ranged:
            keys = [r[0] for r in rows]
            params["rows_lo"], params["rows_hi"] = min(keys), max(keys)
        params.update(scalars)
        return int(conn.execute(statement, params).rowcount)


def _first_per_key(rows: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    seen: set[Any] = set()
    first = []
    for row in rows:
        if row[0] not in seen:
            seen.add(row[0])
            first.append(row)
    return first


class _TuplePlan:
    """A statement compiled for one dialect, and how a row tuple becomes its parameters."""

    def __init__(self, stmt: UpdateBase, names: Sequence[str], dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        self.dialect = dialect
        self.width = len(names)
        row_names = [f"r_{n}" for n in names]
        # Binds that are not row values: the statement's own constants, then the scalars
        # each call gives (their names, in a fixed order, appended to every row).
        self.constants = {k: v for k, v in compiled.params.items() if k not in row_names}
        self.order = row_names + list(self.constants)
        self.positional = compiled.positional
        wanted = list(compiled.positiontup or []) if compiled.positional else self.order
        self.index = [self.order.index(name) for name in wanted]
        self.identity = self.index == list(range(len(self.order)))
        self.processors = [
            (i, proc)
            for i, name in enumerate(self.order)
            if (proc := compiled.binds[name].type.bind_processor(dialect)) is not None
        ]

    def run(
        self, conn: Connection, rows: Sequence[tuple[Any, ...]], scalars: Mapping[str, Any]
    ) -> int:
        extra = tuple(scalars.get(k, v) for k, v in self.constants.items())
        params: Iterator[Any] = iter(rows)
        if extra:
            params = (row + extra for row in params)
        if self.processors:
            processors = self.processors

            def process(row: tuple[Any, ...]) -> tuple[Any, ...]:
                values = list(row)
                for i, proc in processors:
                    values[i] = proc(values[i])
                return tuple(values)

            params = map(process, params)
        if not self.positional:
            order = self.order
            params = (dict(zip(order, row, strict=True)) for row in params)
        elif not self.identity:
            index = self.index
            pick = operator.itemgetter(*index)
            params = map(pick, params) if len(index) > 1 else ((r[index[0]],) for r in params)
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        error = self.dialect.loaded_dbapi.Error
        try:
            cursor.executemany(self.sql, params)  # type: ignore[arg-type]  # any iterable
            return int(cursor.rowcount)
        except error as exc:
            raise DBAPIError.instance(self.sql, None, exc, error) from exc
        finally:
            cursor.close()
