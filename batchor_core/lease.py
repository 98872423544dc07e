"""Run leases: at most one process advances a run at a time.

A process takes the lease (owner id + expiry) before it ingests or steps a run, renews it
before every side effect with the provider, and gives it up when the step ends. A crashed
holder's lease simply expires. Chunk transitions are conditional on the chunk's state as
well, so even a process that lost its lease cannot move a chunk another process moved.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Iterator

from batchor_core.errors import RunLeasedError
from batchor_core.ports import Clock, StateStore

__all__ = ["LeaseKeeper", "new_owner_id"]


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
    """

    def __init__(self, store: StateStore, clock: Clock, owner: str, ttl_seconds: float) -> None:
        self.store = store
        self.clock = clock
        self.owner = owner
        self.ttl_seconds = ttl_seconds
        self._depth: dict[str, int] = {}
        self._tokens: dict[str, int] = {}

    def acquire(self, run_id: str) -> None:
        """Take the lease on ``run_id`` (re-entrant: nested holds need matching releases).

        Raises:
            RunLeasedError: Another live process holds it.
        """
        if self._depth.get(run_id, 0) == 0:
            self._tokens[run_id] = self._grant(run_id)
        else:
            self.renew(run_id)
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
        held = self._tokens.get(run_id)
        if held is not None and token != held:
            self._tokens[run_id] = token
            raise RunLeasedError(
                f"this process lost the lease on run {run_id!r} (it expired and another "
                "process took it over); its current step was abandoned and nothing more "
                "was sent",
                run_id=run_id,
            )
        self._tokens.setdefault(run_id, token)

    def _grant(self, run_id: str) -> int:
        grant = self.store.acquire_lease(
            run_id, self.owner, now=self.clock.now(), ttl_seconds=self.ttl_seconds
        )
        if grant.token is None:
            raise RunLeasedError(
                f"run {run_id!r} is being advanced by {grant.holder}; wait for it, or let "
                "its lease expire if that process is gone",
                run_id=run_id,
            )
        return grant.token

    def release(self, run_id: str) -> None:
        """Drop one hold; the lease is given up when the outermost hold is released."""
        depth = self._depth.get(run_id, 0) - 1
        if depth > 0:
            self._depth[run_id] = depth
            return
        self._depth.pop(run_id, None)
        self._tokens.pop(run_id, None)
        self.store.release_lease(run_id, self.owner)
