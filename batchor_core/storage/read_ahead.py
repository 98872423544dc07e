"""Result pages read on a worker thread, one page ahead of the caller.

Building a results table is two halves of about equal cost: reading a page from the store
and turning it into Arrow columns (Arrow's JSON reader parses the outputs). The store's
drivers (SQLite, ADBC, psycopg) and Arrow's parser run in C without the GIL for much of
their time, so reading the next page while the caller converts the last one takes the
two halves side by side on two cores.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import TypeVar

__all__ = ["read_ahead", "reads_ahead_safely"]

Page = TypeVar("Page")

# How long the caller waits for the worker before it checks that the worker still runs.
_POLL_SECONDS = 1.0


def reads_ahead_safely(storage: object) -> bool:
    """Whether a worker thread may read pages of ``storage`` while the caller uses it.

    A SQLite file store and a Postgres store give each thread its own pooled connection;
    the memory store is one connection, which two threads must not use at once.
    """
    from batchor_core.storage.sql import PostgresStorage, SQLiteStorage

    return isinstance(storage, SQLiteStorage | PostgresStorage)


def read_ahead(
    read: Callable[[int], tuple[Page, int] | None],
    *,
    after_seq: int,
    is_last: Callable[[Page], bool],
    close: Callable[[], None] | None = None,
    name: str = "batchor-result-pages",
) -> Generator[tuple[Page, int] | None, None, None]:
    """The pages ``read(after_seq)`` gives, each with its last row's ``seq`` (passed to
    ``read`` for the next page), read on a worker thread one page ahead.

    The pages end after one for which ``is_last`` holds (an empty page), or with a None
    from ``read`` (it cannot give the page: the caller reads the rest its own way). A
    worker error is raised again in the caller's thread. ``close`` runs on the worker
    when it ends; closing this generator stops the worker. At most three pages are alive
    at once: the caller's, one waiting, one being read.
    """
    pages: queue.Queue[tuple[Page, int] | BaseException | None] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(item: tuple[Page, int] | BaseException | None) -> None:
        while not stop.is_set():
            try:
                pages.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def work() -> None:
        after = after_seq
        try:
            while not stop.is_set():
                page = read(after)
                hand_over(page)
                if page is None or is_last(page[0]):
                    return
                after = page[1]
        except BaseException as exc:  # raised again in the caller's thread
            hand_over(exc)
        finally:
            if close is not None:
                close()

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    try:
        while True:
            try:
                item = pages.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                if worker.is_alive():
                    continue  # a page takes long (a busy store waits up to its timeout)
                item = None  # the worker is gone without a word: the caller's own way
            if isinstance(item, BaseException):
                raise item
            yield item
            if item is None or is_last(item[0]):
                return
    finally:
        stop.set()
        worker.join(timeout=60)
