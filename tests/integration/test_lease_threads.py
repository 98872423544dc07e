"""Threads of one process share a runner's lease keeper (the Dagster sensor does)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    LocalArtifactStore,
    RunLeasedError,
    SQLiteStorage,
)
from batchor_core.lease import _HOLDING
from batchor_core.testing import FakeBatchProvider


def _runner(tmp_path: Path) -> BatchRunner:
    return BatchRunner(
        storage=SQLiteStorage(tmp_path / "s.sqlite3"),
        artifacts=LocalArtifactStore(tmp_path / "a"),
        provider=FakeBatchProvider(),
        handle_sigterm=False,
    )


def test_a_run_held_by_one_thread_is_refused_to_another(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    job = BatchJob(model="m", build_prompt=lambda i: "x")
    runner.start(job, items=[BatchItem("a")], run_id="r")
    lease = runner.stepper.lease
    inside = threading.Event()
    leave = threading.Event()

    def hold() -> None:
        with lease.held("r"):
            inside.set()
            leave.wait(timeout=30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(timeout=30)
    try:
        with pytest.raises(RunLeasedError, match="another thread of this process"), lease.held("r"):
            pass
    finally:
        leave.set()
        holder.join(timeout=30)
    with lease.held("r"):  # free again once the other thread let go
        assert lease in _HOLDING
    runner.close()


def test_many_threads_on_many_runs_keep_the_exit_release_list_right(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    job = BatchJob(model="m", build_prompt=lambda i: "x")
    ids = [f"r{k}" for k in range(8)]
    for run_id in ids:
        runner.start(job, items=[BatchItem("a")], run_id=run_id)
    lease = runner.stepper.lease
    barrier = threading.Barrier(len(ids))
    problems: list[str] = []

    def work(run_id: str) -> None:
        barrier.wait()
        for _ in range(20):
            with lease.held(run_id):
                if lease not in _HOLDING:
                    problems.append(f"{run_id} held but not listed for release at exit")

    threads = [threading.Thread(target=work, args=(r,)) for r in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert problems == []
    assert lease not in _HOLDING  # nothing held any more
    runner.close()
