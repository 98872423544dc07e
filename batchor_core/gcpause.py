"""Pausing Python's cyclic garbage collector around the runner's bounded hot loops.

An ingest slice or a collected chunk allocates a few container objects per item (rows,
outcomes, parsed lines) that live until the slice or part is committed: long enough to
be promoted by every young collection, which then triggers full collections. A full
collection walks every object of the process, the openai SDK's hundreds of thousands
included (about 70 ms each, six in a 100k-item run: 0.4 s of CPU that collected
nothing). Those objects are all freed by reference counting; the cycle collector has
nothing to do there.

:func:`gc_paused` turns automatic collection off for one bounded stretch of work (one
slice, one output file, one provider build) and back on after it, so garbage cycles
made meanwhile (by user code called in the loop, say) wait at most that long. It never
calls ``gc.collect()`` and never freezes objects. It is safe across threads: the
collector is off while any thread is inside, and on again when the last one leaves,
unless it was already off when the first one entered (a process that disabled it keeps
it disabled). A process forked inside a pause (of any thread) starts with none: the
other threads are not in it, and the forking thread's frames rarely end there either (a
multiprocessing worker runs its target and leaves with ``os._exit``), so the child
collects again at once and the pauses it inherited end as no-ops if they ever do.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["gc_paused"]

_lock = threading.Lock()
_inside = 0
_was_enabled = False
# Bumped in a forked child: pauses begun before the fork (in the parent) end as no-ops.
_generation = 0


@contextmanager
def gc_paused() -> Iterator[None]:
    """Automatic cyclic garbage collection off for the ``with`` block (see module docs)."""
    global _inside, _was_enabled
    with _lock:
        if _inside == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _inside += 1
        generation = _generation
    try:
        yield
    finally:
        with _lock:
            if generation == _generation:  # else begun in the parent of this process
                _inside -= 1
                if _inside == 0 and _was_enabled:
                    gc.enable()


def _after_fork_in_child() -> None:
    """A forked child starts with no pause: its threads but the forking one are gone,
    and that one's pausing frames may never end in it (a multiprocessing worker exits
    with ``os._exit``). Collection is on again if the pauses turned it off."""
    global _lock, _inside, _generation
    _lock = threading.Lock()  # held by a thread of the parent, maybe: not ours
    _generation += 1
    was_inside, _inside = _inside, 0
    if was_inside and _was_enabled:
        gc.enable()


if hasattr(os, "register_at_fork"):
    # The lock is taken around the fork, so the counts are copied between two changes.
    os.register_at_fork(
        before=lambda: _lock.acquire(),
        after_in_parent=lambda: _lock.release(),
        after_in_child=_after_fork_in_child,
    )
