"""Liveness locks: a run's lease holder also holds a lock the OS drops when it dies.

The lease row (owner, expiry, fencing token) is what every write is fenced on; these
locks only answer "is the holder still alive?", so a restart after SIGKILL, SIGTERM or an
OOM kill takes the lease over at once instead of waiting out its TTL:

- SQLite: ``flock`` on a per-run file in ``<database>.leases/``, released by the kernel
  when the process dies. It proves liveness only on this host, so a lease held from
  another host still needs its TTL to expire.
- Postgres: a session-level advisory lock on one dedicated connection, released by the
  server when that connection dies. It is visible to every host.

Order matters: a holder takes the lock before the lease row and gives the row up before
the lock, so "the lock is free" implies "the row's holder is gone".
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

__all__ = ["FileLiveness", "Liveness", "PostgresLiveness"]


class Liveness(Protocol):
    """A per-run lock whose holder's death frees it."""

    across_hosts: bool
    """Whether a free lock also proves that no process on another host holds the lease."""

    def try_hold(self, run_id: str, owner: str) -> bool | None:
        """Take (or keep) the run's lock for ``owner``: True if held now, False if another
        live holder has it (another process, or another owner sharing this store), None
        if liveness cannot be told (fall back to the lease's TTL)."""
        ...

    def drop(self, run_id: str, owner: str) -> None:
        """Release the run's lock if ``owner`` holds it through this store."""
        ...

    def holds(self, run_id: str, owner: str) -> bool:
        """Whether ``owner`` holds the run's lock through this store now."""
        ...


class FileLiveness:
    """``flock`` on ``<directory>/<sha256(run_id)>.lock`` (one open file per held run).

    ``flock`` locks belong to the open file, so two stores in one process exclude each
    other just like two processes do.
    """

    across_hosts = False

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._held: dict[str, tuple[str, int]] = {}
        self._mutex = threading.Lock()

    def try_hold(self, run_id: str, owner: str) -> bool | None:
        """Take the run's file lock without blocking."""
        import fcntl

        with self._mutex:
            if run_id in self._held:
                return self._held[run_id][0] == owner
            try:
                self._directory.mkdir(mode=0o700, exist_ok=True)
                fd = os.open(
                    self._directory / _name(run_id, ".lock"), os.O_RDWR | os.O_CREAT, 0o600
                )
            except OSError:
                return None  # read-only directory or similar: the TTL decides
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            self._held[run_id] = (owner, fd)
            return True

    def holds(self, run_id: str, owner: str) -> bool:
        """Whether ``owner`` holds the run's lock through this store now."""
        held = self._held.get(run_id)
        return held is not None and held[0] == owner

    def drop(self, run_id: str, owner: str) -> None:
        """Close the run's lock file (closing releases the lock)."""
        with self._mutex:
            held = self._held.get(run_id)
            if held is None or held[0] != owner:
                return
            del self._held[run_id]
        with contextlib.suppress(OSError):
            os.close(held[1])


class PostgresLiveness:
    """Session-level advisory locks on one connection kept open for the purpose."""

    across_hosts = True

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._conn: Connection | None = None
        self._held: dict[str, str] = {}
        self._mutex = threading.Lock()

    def try_hold(self, run_id: str, owner: str) -> bool | None:
        """``pg_try_advisory_lock`` on the run's key (once per run: locks stack)."""
        with self._mutex:
            if run_id in self._held:
                return self._held[run_id] == owner
            try:
                if self._conn is None:
                    self._conn = self._engine.connect().execution_options(
                        isolation_level="AUTOCOMMIT"
                    )
                got = self._conn.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": _key(run_id)}
                ).scalar()
            except SQLAlchemyError:
                self._reset()
                return None
            if got:
                self._held[run_id] = owner
            return bool(got)

    def holds(self, run_id: str, owner: str) -> bool:
        """Whether ``owner`` holds the run's lock through this store now."""
        return self._held.get(run_id) == owner

    def drop(self, run_id: str, owner: str) -> None:
        """``pg_advisory_unlock`` the run's key."""
        with self._mutex:
            if self._held.get(run_id) != owner or self._conn is None:
                return
            del self._held[run_id]
            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _key(run_id)})
            except SQLAlchemyError:
                self._reset()

    def close(self) -> None:
        """Close the lock connection (the server releases every lock on it)."""
        with self._mutex:
            self._reset()

    def _reset(self) -> None:
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                conn.invalidate()  # never hand a connection holding locks back to the pool
            with contextlib.suppress(SQLAlchemyError):
                conn.close()


def _name(run_id: str, suffix: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()[:32] + suffix


def _key(run_id: str) -> int:
    digest = hashlib.sha256(b"batchor-lease:" + run_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
