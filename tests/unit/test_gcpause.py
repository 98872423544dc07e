"""gc_paused: automatic cyclic collection is off inside, restored after, across threads."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from pathlib import Path

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
