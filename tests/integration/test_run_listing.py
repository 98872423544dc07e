"""Listing runs by owner and status, the collection marker, and columnar results."""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import pytest
from pydantic import BaseModel

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    MemoryStateStore,
    RetryPolicy,
    Run,
    RunNotFoundError,
    RunStatus,
)
from batchor_core.storage import SQLStateStore

pytestmark = pytest.mark.integration


class Mood(StrEnum):
    GOOD = "good"
    BAD = "bad"


class Detail(BaseModel):
    score: int
    note: str | None


class Verdict(BaseModel):
    mood: Mood
    confidence: float
    tags: list[str]
    detail: Detail | None
    flagged: bool


def _job(model: type[BaseModel] | None = Verdict) -> BatchJob:
    return BatchJob(model="gpt-4o-mini", build_prompt=lambda i: i.payload["t"], output_model=model)


def _items(n: int) -> list[BatchItem]:
    return [BatchItem(f"i{k}", {"t": f"text {k}"}, metadata={"k": k}) for k in range(n)]


def test_list_runs_filters_by_owner_status_and_collection(
    make_runner: Callable[..., BatchRunner],
) -> None:
    runner = make_runner()
    a1 = runner.start(_job(), items=_items(3), run_id="a-1", owner={"asset": "a", "partition": "1"})
    runner.start(_job(), items=_items(2), run_id="a-2", owner={"asset": "a", "partition": "2"})
    runner.start(_job(), items=_items(2), run_id="b-1", owner={"asset": "b", "partition": None})
    runner.start(_job(), items=_items(1), run_id="free")
    for run_id in ("a-1", "a-2", "b-1", "free"):
        runner.get_run(run_id, job=_job()).wait(timeout=30, poll_interval=0.05)

    assert [s.run_id for s in runner.list_runs()] == ["a-1", "a-2", "b-1", "free"]
    assert [s.run_id for s in runner.list_runs(owner={"asset": "a"})] == ["a-1", "a-2"]
    assert [s.run_id for s in runner.list_runs(owner={"asset": "a", "partition": "2"})] == ["a-2"]
    assert runner.list_runs(owner={"asset": "zzz"}) == []
    assert [s.run_id for s in runner.list_runs(status="completed", owner={"asset": "b"})] == ["b-1"]
    assert runner.list_runs(status=[RunStatus.RUNNING, RunStatus.PAUSED]) == []

    listed = {s.run_id: s for s in runner.list_runs()}
    direct = a1.summary()
    assert listed["a-1"] == direct  # one summary, whichever way it is read
    assert direct.owner == {"asset": "a", "partition": "1"}
    assert direct.model == "gpt-4o-mini" and direct.endpoint == "/v1/chat/completions"
    assert len(direct.batch_ids) == 1 and direct.batch_ids[0].startswith("batch_")
    assert direct.completed_items == 3 and direct.collected_by is None

    assert a1.mark_collected("dagster-run-1")
    assert [s.run_id for s in runner.list_runs(collected=True)] == ["a-1"]
    assert [s.run_id for s in runner.list_runs(collected=False, owner={"asset": "a"})] == ["a-2"]
    marked = a1.summary()
    assert marked.collected_by == "dagster-run-1" and marked.collected_at is not None


def test_the_collection_marker_has_one_winner(
    make_runner: Callable[..., BatchRunner], store: SQLStateStore, run_id: str
) -> None:
    if isinstance(store, MemoryStateStore):
        pytest.skip("the memory store is one connection, not for concurrent threads")
    runner = make_runner(storage=store)
    run = runner.start(_job(), items=_items(1), run_id=run_id)
    results: list[bool] = []
    barrier = threading.Barrier(6)

    def claim(name: str) -> None:
        barrier.wait()
        results.append(run.mark_collected(name))

    threads = [threading.Thread(target=claim, args=(f"c{k}",)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 5 + [True]
    winner = run.summary().collected_by
    assert winner is not None and run.mark_collected(winner)  # the holder asking again: yes
    assert not run.mark_collected("late")
    assert not run.mark_collected("late", replace="someone-else")  # only the holder is replaced
    assert run.mark_collected("late", replace=winner)  # taking over from a failed collector
    assert run.summary().collected_by == "late"
    assert not run.release_collection("someone-else")
    assert run.release_collection("late") and run.summary().collected_by is None
    assert run.mark_collected("again")
    with pytest.raises(RunNotFoundError):
        Run(runner, "no-such-run", output_model=None).mark_collected("x")


def test_to_arrow_has_typed_columns_and_matches_results(
    make_runner: Callable[..., BatchRunner],
) -> None:
    runner = make_runner()
    run = runner.start(_job(), items=_items(40), run_id="typed")
    run.wait(timeout=30, poll_interval=0.05)
    table = run.to_arrow()
    assert table.column_names[:7] == [
        "item_id",
        "status",
        "mood",
        "confidence",
        "tags",
        "detail",
        "flagged",
    ]
    types = {f.name: str(f.type) for f in table.schema}
    assert types["confidence"] == "double" and types["flagged"] == "bool"
    assert types["tags"].startswith("list<") and types["detail"].startswith("struct<")
    rows = {r["item_id"]: r for r in table.to_pylist()}
    results = list(run.results())
    assert len(rows) == len(results) == 40
    for result in results:
        row = rows[result.item_id]
        assert row["status"] == result.status.value
        assert row["attempts"] == result.attempts
        assert row["metadata"] is not None
        if result.output is not None:
            expected: Any = result.output.model_dump(mode="json")  # type: ignore[union-attr]
            got = {k: row[k] for k in expected}
            assert got == expected
    frame = run.to_pandas(status="completed")
    assert len(frame) == run.summary().completed_items
    assert list(frame.columns) == table.column_names


def test_to_arrow_of_a_text_job_and_of_failures(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.line_fault(contains="text 2", kind="error")
    emulator.faults.line_fault(contains="text 5", kind="error")
    runner = make_runner()
    job = BatchJob(
        model="m", build_prompt=lambda i: i.payload["t"], retry_policy=RetryPolicy(max_attempts=1)
    )
    run = runner.start(job, items=_items(9), run_id="text")
    summary = run.wait(timeout=30, poll_interval=0.05)
    assert summary.failed_items == 2
    table = run.to_arrow()
    assert "output" in table.column_names
    failed = [r for r in table.to_pylist() if r["status"] == "failed"]
    assert len(failed) == summary.failed_items
    assert all(r["output"] is None and r["error_code"] for r in failed)
    done = [r for r in table.to_pylist() if r["status"] == "completed"]
    assert all(isinstance(r["output"], str) and r["output"] for r in done)
    assert run.error_counts() == {failed[0]["error_code"]: len(failed)}
    assert run.to_arrow(status="failed").num_rows == len(failed)
