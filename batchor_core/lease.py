"""Run leases: at most one process advances a run at a time.

A process takes the lease (owner id + expiry) before it ingests or steps a run, renews it
before every side effect with the provider, and gives it up when the step ends. A crashed
holder is detected at once by the store (its liveness lock died with it, see
:mod:`batchor_core.storage.liveness`); otherwise, for example for a holder on another
host, its lease expires after the TTL. Chunk transitions are conditional on the chunk's
state as well, so even a process that lost its lease cannot move a chunk another process
moved.

Leases still held are released at normal interpreter exit, and on SIGTERM: if the program
has no SIGTERM handler of its own, one is installed (main thread only) that turns SIGTERM
into ``SystemExit(143)``, so ``finally`` blocks release the lease on the way out.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from types import FrameType

from batchor_core.errors import RunLeasedError
from batchor_core.ports import Clock, StateStore

__all__ = ["LeaseKeeper", "new_owner_id"]

log = logging.getLogger("batchor.lease")
# Keepers holding a lease right now (strong references: a runner dropped by a frame that
# SystemExit unwound must still release at exit).
_HOLDING: set[LeaseKeeper] = set()
_SIGTERM_INSTALLED = False


def _release_all() -> None:
    """Give up every lease this process still holds (interpreter exit)."""
    for keeper in list(_HOLDING):
        keeper.release_all()


atexit.register(_release_all)


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    # Only installed where SIGTERM would otherwise kill the process outright: exit the
    # Python way instead, so finally blocks and atexit release leases; a second
    # SIGTERM kills as before.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(128 + signum)


def _install_sigterm_handler() -> None:
    global _SIGTERM_INSTALLED
    if _SIGTERM_INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    _SIGTERM_INSTALLED = True
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # never replace the user's
            signal.signal(signal.SIGTERM, _on_sigterm)


def new_owner_id() -> str:
    """A process-unique owner id: host, pid and a random suffix."""
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseKeeper:
    """Takes, renews and releases run leases for one owner.

    Args:
        store: Where leases live (the run rows).
        clock: Time source.
        owner: This process's owner id.
        ttl_seconds: How long a lease lasts without renewal.
        handle_sigterm: Install the SIGTERM handler described above (when none is set).
    """

    def __init__(
        self,
        store: StateStore,
        clock: Clock,
        owner: str,
        ttl_seconds: float,
        *,
        handle_sigterm: bool = True,
    ) -> None:
        self.store = store
        self.clock = clock
        self.owner = owner
        self.ttl_seconds = ttl_seconds
        self._handle_sigterm = handle_sigterm
        self._depth: dict[str, int] = {}
        self._tokens: dict[str, int] = {}
        # Threads of one process share this keeper (a Dagster sensor advances several
        # runs at once): the bookkeeping is guarded, and a run held by one thread is
        # refused to another, as it would be to another process.
        self._guard = threading.Lock()
        self._threads: dict[str, int] = {}

    def acquire(self, run_id: str) -> None:
        """Take the lease on ``run_id`` (re-entrant in one thread: nested holds need
        matching releases).

        Raises:
            RunLeasedError: Another live process, or another thread of this one, holds it.
        """
        if self._handle_sigterm:
            _install_sigterm_handler()
        me = threading.get_ident()
        with self._guard:
            holder = self._threads.setdefault(run_id, me)
            nested = self._depth.get(run_id, 0) > 0
        if holder != me:
            raise RunLeasedError(
                f"run {run_id!r} is being advanced by another thread of this process",
                run_id=run_id,
            )
        if nested:
            self.renew(run_id)
        else:
            try:
                token = self._grant(run_id)
            except BaseException:
                with self._guard:
                    if not self._depth.get(run_id):
                        self._threads.pop(run_id, None)
                raise
            with self._guard:
                self._tokens[run_id] = token
                _HOLDING.add(self)
        with self._guard:
            self._depth[run_id] = self._depth.get(run_id, 0) + 1

    @contextlib.contextmanager
    def held(self, run_id: str) -> Iterator[None]:
        """Hold the lease for the duration of a ``with`` block.

        Raises:
            RunLeasedError: Another live process holds it.
        """
        self.acquire(run_id)
        try:
            yield
        finally:
            self.release(run_id)

    def renew(self, run_id: str) -> None:
        """Extend a held lease without adding a hold (a free lease is simply taken).

        Raises:
            RunLeasedError: Another process holds it, or the lease changed hands since
                this process took it (it expired and someone else had it meanwhile).
        """
        token = self._grant(run_id)
        with self._guard:
            held = self._tokens.get(run_id)
            if held is not None and token != held:
                self._tokens[run_id] = token
            else:
                self._tokens.setdefault(run_id, token)
        if held is not None and token != held:
            raise RunLeasedError(
                f"this process lost the lease on run {run_id!r} (it expired and another "
                "process took it over); its current step was abandoned and nothing more "
                "was sent",
                run_id=run_id,
            )

    def _grant(self, run_id: str) -> int:
        grant = self.store.acquire_lease(
            run_id, self.owner, now=self.clock.now(), ttl_seconds=self.ttl_seconds
        )
        if grant.token is None:
            raise RunLeasedError(
                f"run {run_id!r} is being advanced by {grant.holder}; wait for it. A holder "
                "that died on this host (or any host, with Postgres) is detected at once; "
                "for one on another host, wait for the lease to expire or call "
                "runner.break_lease(run_id) once you know it is gone",
                run_id=run_id,
            )
        return grant.token

    def release(self, run_id: str) -> None:
        """Drop one hold; the lease is given up when the outermost hold is released."""
        with self._guard:
            depth = self._depth.get(run_id, 0) - 1
            if depth > 0:
                self._depth[run_id] = depth
                return
            self._depth.pop(run_id, None)
            self._tokens.pop(run_id, None)
            if not self._depth:
                _HOLDING.discard(self)
        try:
            self.store.release_lease(run_id, self.owner)
        finally:
            with self._guard:
                if not self._depth.get(run_id):
                    self._threads.pop(run_id, None)

    def release_all(self) -> None:
        """Give up every lease held, whatever the nesting (exit, close)."""
        with self._guard:
            held = list(self._depth)
            self._depth.clear()
            self._tokens.clear()
            self._threads.clear()
        for run_id in held:
            try:
                self.store.release_lease(run_id, self.owner)
            except Exception as exc:  # at exit: the TTL or liveness lock covers it
                log.debug("could not release the lease on %s: %s", run_id, exc)
        _HOLDING.discard(self)

    def renewing(self, run_id: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Pass ``chunks`` through, renewing the lease every third of its TTL.

        Long downloads (several 190 MB output files) must not outlive the lease.

        Raises:
            RunLeasedError: The lease was lost meanwhile (the download is abandoned).
        """
        interval = self.ttl_seconds / 3
        last = self.clock.now()
        for chunk in chunks:
            now = self.clock.now()
            if (now - last).total_seconds() >= interval:
                self.renew(run_id)
                last = now
            yield chunk
