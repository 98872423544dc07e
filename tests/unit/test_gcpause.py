"""gc_paused: automatic cyclic collection is off inside, restored after, across threads."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchor_core import BatchItem, BatchJob, BatchRunner, LocalArtifactStore, MemoryStateStore
from batchor_core.gcpause import gc_paused
from batchor_core.testing import FakeBatchProvider


@pytest.fixture(autouse=True)
def _gc_enabled() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


def test_off_inside_on_after_even_on_error() -> None:
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():  # nested
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_process_that_disabled_gc_keeps_it_disabled() -> None:
    gc.disable()
    with gc_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_on_again_only_when_the_last_thread_leaves() -> None:
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gc_paused():
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert entered.wait(5)
        with gc_paused():
            pass
        assert not gc.isenabled(), "the other thread is still inside"
    finally:
        release.set()
        thread.join(5)
    assert gc.isenabled()


def test_a_run_leaves_the_collector_as_it_found_it(tmp_path: Path) -> None:
    provider = FakeBatchProvider(lambda body: '{"x": 1}')
    runner = BatchRunner(
        storage=MemoryStateStore(),
        artifacts=LocalArtifactStore(tmp_path, fsync=False),
        provider=provider,
        ingest_slice_size=7,
    )
    job = BatchJob(model="m", build_prompt=lambda item: str(item.payload["t"]))
    run = runner.start(job, items=(BatchItem(f"i{n}", {"t": n}) for n in range(30)))
    assert gc.isenabled()
    assert run.wait(timeout=30, poll_interval=0).completed_items == 30
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError):
        runner.start(job, items=(BatchItem("bad", {"t": 1 / 0}) for _ in range(1)))
    assert gc.isenabled()


def _in_child(check: str) -> int:
    """Fork; the child runs ``check`` (code reading ``gc`` and ``gc_paused``) and exits 0
    when it holds; the parent gets the child's exit status."""
    import os

    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        code = 1
        try:
            exec(check, {"gc": gc, "gc_paused": gc_paused})
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_process_forked_while_another_thread_is_paused_collects_again() -> None:
    """The pausing thread is not in the child (multiprocessing's fork start method, say):
    its pause ends there, or the child would never collect cycles again."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with gc_paused():
            entered.set()
            release.wait(5)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert entered.wait(5)
        assert not gc.isenabled()
        child = _in_child(
            "assert gc.isenabled()\n"
            "with gc_paused():\n"
            "    assert not gc.isenabled()\n"
            "assert gc.isenabled()\n"
        )
        assert child == 0
        assert not gc.isenabled(), "the parent's thread is still inside"
    finally:
        release.set()
        thread.join(5)
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_process_forked_inside_a_pause_ends_it_once() -> None:
    with gc_paused():
        # The child starts with no pause; the inherited one ends there as a no-op, and
        # its own pauses still pause.
        child = _in_child(
            "assert gc.isenabled()\n"
            "with gc_paused():\n"
            "    assert not gc.isenabled()\n"
            "assert gc.isenabled()\n"
        )
        assert child == 0
        assert not gc.isenabled()
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_multiprocessing_worker_forked_inside_a_pause_collects_cycles() -> None:
    """A worker forked inside a pause (a pool user code starts from build_prompt, say)
    never returns from the pausing frames: it runs its target and exits with os._exit.
    It must not run its whole life with the cycle collector off."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)
    with gc_paused():
        worker = ctx.Process(target=_send_gc_enabled, args=(send,))
        worker.start()
        assert receive.poll(30)
        assert receive.recv() is True
        worker.join(30)
        assert worker.exitcode == 0
        # The parent's pause is unchanged by the fork, and ends as usual.
        assert not gc.isenabled()
    assert gc.isenabled()


def _send_gc_enabled(send: Any) -> None:
    send.send(gc.isenabled())


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_a_child_that_leaves_the_inherited_pause_keeps_its_own_count() -> None:
    """The forking thread's frames may end in the child after all: leaving the inherited
    pause there is a no-op, even while a pause of the child's own is open."""
    import os

    from batchor_core import gcpause

    own = gc_paused()
    with gc_paused():
        pid = os.fork()
        if pid == 0:
            own.__enter__()  # the child's own pause, still open when the inherited ends
    if pid == 0:
        code = 1
        try:
            ok = not gc.isenabled() and gcpause._inside == 1
            own.__exit__(None, None, None)
            code = 0 if ok and gc.isenabled() and gcpause._inside == 0 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert gc.isenabled()
