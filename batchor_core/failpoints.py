"""Crash points for the crash test suite.

Set ``BATCHOR_CRASH_AT=<point>[:<n>]`` and the process SIGKILLs itself the ``n``-th time
(default 1st) it reaches ``<point>``: a real, unclean death between two durable steps,
exactly where a power cut or an OOM kill could land. Unset (always, in production), a
crash point costs one global lookup.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "reach"]

POINTS = (
    "ingest.lines_written",  # request lines fsynced, slice not committed
    "ingest.slice_committed",  # slice committed, full chunk not yet published/sealed
    "seal.published",  # chunk file renamed into place, not yet marked sealed
    "submit.uploaded",  # file uploaded, file id not recorded
    "submit.created",  # batch created at the provider, batch id not recorded
    "collect.downloaded",  # output file stored, outcomes not recorded
    "collect.part_recorded",  # some of a chunk's outcomes recorded, chunk not collected
    "collect.recorded",  # outcomes recorded
    "retry.written",  # retry chunk written, items not yet moved into it
)

_spec = os.environ.get("BATCHOR_CRASH_AT")
_target, _, _nth = (_spec or "").partition(":")
_remaining = int(_nth) if _nth.isdigit() else 1


def reach(point: str) -> None:
    """Die here if the environment asks for it."""
    global _remaining
    if _spec is None or point != _target:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
