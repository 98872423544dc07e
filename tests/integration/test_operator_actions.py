"""Operator actions by run id work in any process, even one without the output model.

The output models here are defined inside the test functions, so, like a model defined
in the script that started the run, they cannot be imported by name elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    ItemStatus,
    RunStatus,
    SourceChangedError,
)
from batchor_core.ingest import IterableSource

pytestmark = pytest.mark.integration


def _items(n: int, word: str = "review") -> list[BatchItem]:
    return [BatchItem(item_id=f"r{i}", payload={"text": f"{word} {i} please"}) for i in range(n)]


def _job(output_model: type[BaseModel] | None = None, **kwargs: Any) -> BatchJob:
    return BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda it: it.payload["text"],
        output_model=output_model,
        **kwargs,
    )


def test_cancel_by_run_id_without_the_output_model_settles_and_keeps_finished_rows(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    class Label(BaseModel):
        label: str
        score: int

    emulator.faults.hold_batches(True, completed_fraction=0.5)
    policy = ChunkPolicy(max_requests=4, max_inflight_batches=1)
    make_runner().start(_job(Label, chunk_policy=policy), items=_items(8), run_id="cancel")

    operator = make_runner()  # another process: Label cannot be imported there
    summary = operator.cancel("cancel")
    assert summary.status is RunStatus.CANCELLED, summary
    assert (summary.completed_items, summary.cancelled_items) == (2, 6)
    done = [r for r in operator.get_run("cancel").results() if r.status is ItemStatus.COMPLETED]
    assert len(done) == 2
    for result in done:  # untyped, but checked against the stored schema
        assert isinstance(result.output, dict) and set(result.output) == {"label", "score"}
    assert emulator.batch_create_count == 1


def test_get_run_without_the_model_finishes_the_run_checking_the_stored_schema(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    class Label(BaseModel):
        label: str
        score: int

    emulator.faults.line_fault(contains="review 1 ", kind="schema_mismatch", times=1)
    emulator.faults.line_fault(contains="review 2 ", kind="invalid_json", times=1)
    emulator.faults.hold_batches(True)
    job = _job(Label)
    make_runner().start(job, items=_items(4), run_id="typed")
    emulator.faults.hold_batches(False)

    elsewhere = make_runner().get_run("typed")  # no job=: fine, outputs come back as dicts
    summary = elsewhere.wait(timeout=60, poll_interval=0.05)
    assert summary.status is RunStatus.COMPLETED
    attempts = {r.item_id: r.attempts for r in elsewhere.results()}
    assert attempts == {"r0": 1, "r1": 2, "r2": 2, "r3": 1}  # bad outputs were caught
    assert all(isinstance(r.output, dict) for r in elsewhere.results())
    # Whoever has the model gets typed results from the same rows.
    typed = make_runner().get_run("typed", job=job)
    assert all(isinstance(r.output, Label) for r in typed.results())


def test_pause_resume_and_summary_by_run_id_without_the_model(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    class Label(BaseModel):
        label: str

    emulator.faults.hold_batches(True)
    make_runner().start(_job(Label), items=_items(3), run_id="ops")
    operator = make_runner()
    assert operator.pause("ops").status is RunStatus.PAUSED
    emulator.faults.hold_batches(False)
    assert operator.resume("ops").status in (RunStatus.RUNNING, RunStatus.COMPLETED)
    assert operator.get_run("ops").wait(timeout=60, poll_interval=0.05).completed_items == 3


def test_start_on_a_finished_run_with_different_items_is_refused(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    runner = make_runner()
    first = runner.start(_job(), items=_items(3), run_id="same-id")
    first.wait(timeout=60, poll_interval=0.05)
    again = runner.start(_job(), items=iter(_items(3)), run_id="same-id")  # same items: fine
    assert again.summary().status is RunStatus.COMPLETED
    with pytest.raises(SourceChangedError, match="different items"):
        runner.start(_job(), items=_items(3, word="other"), run_id="same-id")
    with pytest.raises(SourceChangedError, match="different items"):
        runner.start(_job(), items=_items(4), run_id="same-id")
    assert emulator.batch_create_count == 1


def test_resuming_an_ingest_with_different_leading_items_is_refused() -> None:
    first = IterableSource(_items(4))
    (piece, _rest) = list(first.read_slices(None, slice_size=2))
    changed = IterableSource(_items(4, word="other"))
    with pytest.raises(SourceChangedError, match="first 2 items differ"):
        list(changed.read_slices(piece.checkpoint, slice_size=2))
    resumed = list(IterableSource(_items(4)).read_slices(piece.checkpoint, slice_size=2))
    assert [it.item_id for it in resumed[0].items] == ["r2", "r3"]


def test_cancel_does_not_give_up_a_batch_whose_create_is_unresolved(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    # The create committed but answered 500, and the provider's list (how the runner
    # looks for it) fails too: the chunk stays "submitting". Cancelling used to settle
    # it as never submitted, so the batch ran and was billed, never cancelled nor
    # collected, and its tokens left the budget while still enqueued.
    emulator.faults.hold_batches(True)
    emulator.faults.commit_then_fail(count=1)
    emulator.faults.http_error(method="GET", path="/v1/batches", status=500, count=2)
    runner = make_runner()
    runner.start(_job(), items=_items(4), run_id="unresolved")
    (chunk,) = runner.storage.list_chunks("unresolved")
    assert chunk.state.value == "submitting" and chunk.batch_id is None
    assert runner.cancel("unresolved").status is RunStatus.CANCELLING
    summary = runner.get_run("unresolved").wait(timeout=30, poll_interval=0.01)
    assert summary.status is RunStatus.CANCELLED
    (batch,) = emulator.batches()
    assert batch["status"] in ("cancelling", "cancelled")  # found, and cancelled
    assert summary.batch_ids == (batch["id"],)
