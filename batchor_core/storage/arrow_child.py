"""Result pages of a SQLite store read through ADBC in a child process.

ADBC's SQLite driver carries its own copy of SQLite, and two copies must not open one
file in one process (POSIX locks belong to the process: neither copy sees the other's,
and closing either one's file drops the other's). In a process of its own the driver is
just another reader of the file, as safe as a second ``batchor status``. So a large
``to_arrow()`` runs the page query (built by
:func:`~batchor_core.storage.sqlite_arrow.page_sql`) in a child, this very file run as a
script (nothing of batchor or SQLAlchemy imported there: it starts in a third of the
time), which streams its pages back as Arrow IPC over a pipe; the parent only copies
bytes and parses outputs, while the child reads the next pages (the pipe's buffer bounds
how far ahead).

Every wait on the child is bounded (``page_timeout``); a child that is slow, dies, or
cannot give a page ends the pages with None, and the caller reads the rest through the
store's driver, so the table is the same either way.

Protocol: the parent writes two JSON lines on the child's stdin, the request (the page
query as SQL text, with a marker where each page's ``after_seq`` goes), then, maybe
later, where the pages begin (``{"after_seq": n}``); the child writes
frames ``kind (1 byte) + length (8 bytes, little endian) + payload``: ``P`` a page (an
IPC stream of one record batch, its last ``seq`` in the schema's metadata), ``E`` no
more rows, ``F`` a page ADBC cannot give (read the rest the ordinary way).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import struct
import subprocess
import sys
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa  # type: ignore[import-untyped]

    from batchor_core.storage.sqlite_arrow import ArrowPage

# Only the standard library at module level: the child runs this file as a script.
__all__ = ["ChildPages", "adbc_installed", "fetch_page", "open_adbc"]

_log = logging.getLogger("batchor.storage")
_HEADER = struct.Struct("<cQ")
_LAST_SEQ = b"batchor.last_seq"  # a page's schema metadata: its last row's seq
# Stands for each page's after_seq in the query text the child is given.
_MARK = 7_394_011_265_538_817_023
# Seconds a page may take to arrive (the first one includes the child's start-up).
PAGE_TIMEOUT = 120.0


def adbc_installed() -> bool:
    """Whether ADBC's SQLite driver can be imported (without importing it)."""
    from importlib.util import find_spec

    return (
        find_spec("adbc_driver_sqlite") is not None and find_spec("adbc_driver_manager") is not None
    )


class ChildPages:
    """Pages from ``after_seq`` on, read by a child process; iterate once, then close.

    Yields ``(columns, last_seq)`` pages as :meth:`SQLiteArrowReader.read_page` gives
    them, an empty page at the end, or None (then stops) when the child cannot go on:
    read the rest the ordinary way, after the last page's ``seq``.

    With ``after_seq`` None the child starts (imports, opens the file) and waits for
    :meth:`begin`: started before the caller knows where the pages begin, its start-up
    runs beside the caller's own first page.
    """

    def __init__(
        self,
        path: Path,
        run_id: str,
        *,
        after_seq: int | None,
        limit: int,
        status: str | None,
        finished_after: int,
        fields: Collection[str] | None,
        json_lines: bool,
        page_timeout: float = PAGE_TIMEOUT,
        command: Sequence[str] | None = None,
    ) -> None:
        from batchor_core.storage.sqlite_arrow import TEXT_COLUMNS, page_sql

        sql, names = page_sql(
            run_id,
            after_seq=_MARK,
            limit=limit,
            status=status,
            finished_after=finished_after,
            fields=fields,
            json_lines=json_lines,
        )
        if sql.count(str(_MARK)) != 1:  # the marker in a value too (the run id, say)
            raise OSError("cannot mark the page query's after_seq")
        request = {
            "path": str(path),
            "sql": sql,
            "mark": str(_MARK),
            "names": names,
            "text": sorted(TEXT_COLUMNS),
            "limit": limit,
        }
        self._timeout = page_timeout
        self._ended = False
        self.process = subprocess.Popen(
            list(command or [sys.executable, "-I", str(Path(__file__).resolve())]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._fd = self.process.stdout.fileno()
        _widen_pipe(self._fd)
        self._send(request, last=False)
        if after_seq is not None:
            self.begin(after_seq)

    def begin(self, after_seq: int) -> None:
        """Start the pages after ``after_seq`` (once)."""
        self._send({"after_seq": after_seq}, last=True)

    def _send(self, message: dict[str, Any], *, last: bool) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(message).encode() + b"\n")
            stdin.flush()
            if last:
                stdin.close()
        except OSError:  # the child is gone already: the first read says so
            pass

    def __iter__(self) -> Iterator[ArrowPage | None]:
        import pyarrow as pa

        while True:
            frame = self._frame()
            if frame is None:
                yield None
                return
            kind, payload = frame
            if kind == b"E":
                self._ended = True  # the child exits on its own now
                yield {}, -1
                return
            if kind != b"P":
                yield None
                return
            batch = pa.ipc.open_stream(pa.py_buffer(payload)).read_next_batch()
            columns = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
            yield columns, int(batch.schema.metadata[_LAST_SEQ])

    def _frame(self) -> tuple[bytes, bytearray] | None:
        header = self._read(_HEADER.size)
        if header is None:
            return None
        kind, size = _HEADER.unpack(header)
        payload = self._read(size) if size else bytearray()
        if payload is None:
            return None
        return kind, payload

    def _read(self, size: int) -> bytearray | None:
        """Exactly ``size`` bytes from the child, read straight into one buffer (Arrow
        reads a page in place, with no copy), or None if it ends or takes too long."""
        try:
            data = bytearray(size)
        except (MemoryError, OverflowError):  # a garbled length: not a page
            _log.warning(
                "the ADBC page reader sent a %d-byte frame: reading the rest "
                "through the store's driver",
                size,
            )
            return None
        view = memoryview(data)
        done = 0
        while done < size:
            ready, _, _ = select.select([self._fd], [], [], self._timeout)
            if not ready:
                _log.warning(
                    "the ADBC page reader gave nothing for %.0f s: reading the rest "
                    "through the store's driver",
                    self._timeout,
                )
                return None
            got = os.readv(self._fd, [view[done:]])
            if not got:  # the child ended (or died) midway
                _log.warning(
                    "the ADBC page reader ended early (exit status %s): reading the rest "
                    "through the store's driver",
                    self.process.poll(),
                )
                return None
            done += got
        return data

    def kill(self) -> None:
        """Stop the child if it still runs (a read of its pipe then ends at once)."""
        if not self._ended and self.process.poll() is None:
            self.process.kill()

    def close(self) -> None:
        """Stop the child (if it still runs) and reap it."""
        process = self.process
        if not self._ended and process.poll() is None:
            process.kill()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kill not yet delivered
            _log.warning("the ADBC page reader (pid %s) did not exit", process.pid)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None and not pipe.closed:
                with contextlib.suppress(OSError):  # a child killed before it read all
                    pipe.close()


def _widen_pipe(fd: int) -> None:
    """Let the pipe hold up to 1 MiB where Linux allows it (64 KiB by default: a page
    would cross it in 150 turns between the two processes)."""
    try:
        import fcntl
    except ImportError:
        return
    command = getattr(fcntl, "F_SETPIPE_SZ", None)  # Linux only
    if command is not None:
        # Over the system's limit (fs/pipe-max-size): the pipe stays as it is.
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, command, 1 << 20)


def open_adbc(path: Path, driver: Any, manager: Any) -> tuple[Any, Any, Any]:
    """A read-only ADBC database, connection and statement on the SQLite file ``path``.

    ADBC's low-level API: its DB-API module imports ``pyarrow.dataset`` and pandas, a
    third of a second before the first page for a caller who wants neither.
    """
    database = driver.connect(Path(path).resolve().as_uri() + "?mode=ro")
    handles: list[Any] = [database]
    try:
        handles.append(manager.AdbcConnection(database))
        handles.append(manager.AdbcStatement(handles[1]))
        handles[2].set_sql_query("PRAGMA busy_timeout=30000")
        handles[2].execute_update()
    except BaseException:
        for handle in reversed(handles):
            handle.close()
        raise
    return database, handles[1], handles[2]


def fetch_page(
    stmt: Any, sql: str, names: list[str], text: Any, *, limit: int, after_seq: int
) -> ArrowPage | None:
    """Run one page query (``seq`` first); the page as ``{column: array}`` (``text``
    columns as ``string``, the rest ``int64``) and its last ``seq``, ``({}, after_seq)``
    when empty, or None when ADBC cannot give it in those types (read it the ordinary
    way then).

    ADBC infers each column's type from the values of a batch (an all-NULL column comes
    back as int64): every page is one batch, so it never changes type midway.
    """
    import pyarrow as pa

    try:
        stmt.set_sql_query(sql)
        stmt.set_options(**{"adbc.sqlite.query.batch_rows": str(limit + 1)})
        stream, _ = stmt.execute_query()
        # As ADBC's own DB-API module does (from_stream needs pyarrow 15).
        table = pa.RecordBatchReader._import_from_c(stream.address).read_all()
    except Exception:  # any driver error (a type change midway, say): the slow path
        return None
    if table.num_rows == 0:
        return {}, after_seq
    arrays: dict[str, pa.Array] = {}
    for i, name in enumerate(names):
        column = _one_array(table.column(i))
        target = pa.string() if name in text else pa.int64()
        if column.type != target:
            if column.null_count != len(column) or not pa.types.is_integer(column.type):
                return None  # values of another type: not what the store writes
            column = column.cast(target)  # all NULL: the same NULLs, typed
        arrays[name] = column
    last = arrays.pop("seq")[-1].as_py()
    return arrays, int(last)


def _one_array(column: pa.ChunkedArray) -> pa.Array:
    """A column as one array: a page is one batch, so its one chunk as it is (pyarrow's
    ``combine_chunks`` copies even a single chunk, the page's whole text once more)."""
    if column.num_chunks == 1:
        return column.chunk(0)
    return column.combine_chunks()


def _serve(request: dict[str, Any], out: Any, first: Any) -> None:
    """The child: read pages with ADBC and write them as frames to ``out``, from the
    ``after_seq`` that ``first()`` gives (it waits for the parent) on."""
    import adbc_driver_manager
    import adbc_driver_sqlite
    import pyarrow as pa

    handles = open_adbc(Path(request["path"]), adbc_driver_sqlite, adbc_driver_manager)
    try:
        after = int(first())
        text = frozenset(request["text"])
        while True:
            page = fetch_page(
                handles[2],
                request["sql"].replace(request["mark"], str(after)),
                request["names"],
                text,
                limit=int(request["limit"]),
                after_seq=after,
            )
            if page is None:
                out.write(_HEADER.pack(b"F", 0))
                return
            columns, last = page
            if not columns:
                out.write(_HEADER.pack(b"E", 0))
                return
            batch = pa.RecordBatch.from_arrays(
                list(columns.values()),
                list(columns),
                metadata={_LAST_SEQ: str(last).encode()},
            )
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            data = sink.getvalue()
            out.write(_HEADER.pack(b"P", data.size))
            out.write(memoryview(data))
            out.flush()
            after = last
    finally:
        for handle in reversed(handles):
            handle.close()
        out.flush()


def _first(stdin: Any) -> int:
    line = stdin.readline()
    if not line:  # the parent closed the pipe: it wants no pages
        raise SystemExit(0)
    return int(json.loads(line)["after_seq"])


def _main() -> int:
    request = json.loads(sys.stdin.buffer.readline())
    try:
        _serve(request, sys.stdout.buffer, lambda: _first(sys.stdin.buffer))
    except BrokenPipeError:  # the parent stopped reading: nothing left to do
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(_main())
