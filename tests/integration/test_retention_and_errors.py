"""Exports, deliberate pruning, incremental results, and the errors users can hit."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from pydantic import BaseModel, Field, field_validator

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    ConfigurationError,
    JobChangedError,
    RetentionError,
    RunConflictError,
    RunFinishedError,
    RunNotFoundError,
    RunStatus,
)
from tests.integration.review_model import Review

pytestmark = pytest.mark.integration


def _job(**kwargs: Any) -> BatchJob:
    return BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda item: str(item.payload["text"]),
        output_model=Review,
        **kwargs,
    )


def _items(n: int) -> list[BatchItem]:
    return [
        BatchItem(item_id=f"r{i}", payload={"text": f"t{i}"}, metadata={"row": i}) for i in range(n)
    ]


def test_export_every_format_and_prune_only_after_export(
    make_runner: Callable[..., BatchRunner], tmp_path: Path
) -> None:
    runner = make_runner()
    run = runner.start(_job(chunk_policy=ChunkPolicy(max_requests=3)), items=_items(7), run_id="ex")
    assert run.wait(timeout=60, poll_interval=0.05).status is RunStatus.COMPLETED
    artifacts = tmp_path / "artifacts"
    outputs = list(artifacts.rglob("*-output.jsonl"))
    assert len(outputs) == 3

    with pytest.raises(RetentionError, match="full export"):
        run.prune(raw_outputs=True)
    assert all(p.exists() for p in outputs)

    jsonl = run.export(tmp_path / "out" / "results.jsonl")
    assert jsonl.rows == 7
    lines = [json.loads(line) for line in jsonl.path.read_text().splitlines()]
    assert {row["item_id"] for row in lines} == {f"r{i}" for i in range(7)}
    assert all(Review.model_validate(row["output"]) for row in lines)
    assert lines[0]["metadata"] == {"row": int(lines[0]["item_id"][1:])}

    with open(run.export(tmp_path / "results.csv", format="csv").path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 7 and "output" not in rows[0]  # CSV flattens the output one level
    assert list(rows[0])[:3] == ["item_id", "status", "sentiment"]
    assert Review.model_validate(
        {
            **rows[0],
            "complaint": rows[0]["complaint"] or None,
            "aspects": json.loads(rows[0]["aspects"]),
        }
    )

    table = pq.read_table(run.export(tmp_path / "results.parquet", format="parquet").path)
    assert table.num_rows == 7 and table.column("status").to_pylist() == ["completed"] * 7

    deleted = run.prune(requests=True, raw_outputs=True)
    assert deleted == 3 + 3  # three request files, three output files
    assert not any(p.exists() for p in outputs)
    assert not list(artifacts.rglob("requests/*.jsonl"))
    record = runner.storage.load_run("ex")
    assert record is not None and record.retention is not None
    assert record.retention["prunes"][-1]["files_deleted"] == 6
    assert len(record.retention["exports"]) == 3


def test_export_takes_its_format_from_the_suffix_and_refuses_a_contradiction(
    make_runner: Callable[..., BatchRunner], tmp_path: Path
) -> None:
    runner = make_runner()
    run = runner.start(_job(), items=_items(3), run_id="suffix")
    assert run.wait(timeout=60, poll_interval=0.05).status is RunStatus.COMPLETED

    assert run.export(tmp_path / "r.parquet").format == "parquet"
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 3
    with open(run.export(tmp_path / "r.CSV").path, newline="") as fh:
        assert [row["item_id"] for row in csv.DictReader(fh)] == ["r0", "r1", "r2"]
    assert run.export(tmp_path / "r.ndjson").format == "jsonl"
    other = run.export(tmp_path / "r.txt")  # a suffix that names no format: JSON lines
    assert other.format == "jsonl" and len(other.path.read_text().splitlines()) == 3

    with pytest.raises(ConfigurationError, match=r"ends in \.parquet.*format='parquet'"):
        run.export(tmp_path / "wrong.parquet", format="jsonl")
    with pytest.raises(ConfigurationError, match="not one of"):
        run.export(tmp_path / "r.out", format="xlsx")
    assert not list(tmp_path.glob("wrong.parquet*")) and not list(tmp_path.glob(".wrong*"))
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(ConfigurationError, match="it is a directory"):
        run.export(tmp_path / "dir.csv")
    (tmp_path / "plain").write_text("a file")
    for fmt in ("parquet", "jsonl"):
        with pytest.raises(ConfigurationError, match="cannot write the export to"):
            run.export(tmp_path / "plain" / f"r.{fmt}")
    record = runner.storage.load_run("suffix")
    assert record is not None and record.retention is not None
    assert len(record.retention["exports"]) == 4  # the refused ones are not recorded


class _Aliased(BaseModel):
    the_name: str = Field(alias="theName")
    score: int


class _WithPayload(BaseModel):
    payload: str
    label: str


def test_every_export_names_output_fields_as_the_model_answers_them(
    make_runner: Callable[..., BatchRunner], tmp_path: Path
) -> None:
    runner = make_runner()
    job = BatchJob(model="gpt-4o-mini", build_prompt=lambda i: "q", output_model=_Aliased)
    run = runner.start(job, items=_items(3), run_id="aliased")
    assert run.wait(timeout=60, poll_interval=0.05).status is RunStatus.COMPLETED
    names = run.to_arrow().column("theName").to_pylist()
    assert all(isinstance(n, str) for n in names)
    lines = [json.loads(x) for x in run.export(tmp_path / "a.jsonl").path.read_text().splitlines()]
    assert [row["output"]["theName"] for row in lines] == names
    with open(run.export(tmp_path / "a.csv").path, newline="") as fh:
        assert [row["theName"] for row in csv.DictReader(fh)] == names  # was left empty


def test_an_output_field_named_payload_keeps_every_column_name_once(
    make_runner: Callable[..., BatchRunner], tmp_path: Path
) -> None:
    runner = make_runner()
    job = BatchJob(model="gpt-4o-mini", build_prompt=lambda i: "q", output_model=_WithPayload)
    run = runner.start(job, items=_items(2), run_id="payload-field")
    assert run.wait(timeout=60, poll_interval=0.05).status is RunStatus.COMPLETED
    assert run.to_arrow().column("payload").to_pylist()[0] is not None  # typed as ever
    table = run.to_arrow(include_payload=True)
    assert len(set(table.column_names)) == len(table.column_names)
    assert "output" in table.column_names  # the output as one column, as for "status"
    outputs = [json.loads(o) for o in table.column("output").to_pylist()]
    assert all(set(o) == {"payload", "label"} for o in outputs)
    read = pq.read_table(run.export(tmp_path / "p.parquet").path)  # raised ArrowInvalid
    assert json.loads(read.column("payload")[0].as_py()) == {"text": "t0"}


def test_results_cursor_reads_only_newer_results_across_handles(
    make_runner: Callable[..., BatchRunner],
) -> None:
    runner = make_runner()
    job = _job(chunk_policy=ChunkPolicy(max_requests=2, max_inflight_batches=1))
    run = runner.start(job, items=_items(6), run_id="cursor")
    seen: list[str] = []
    cursor = 0
    while not run.refresh().is_finished:
        fresh = list(runner.get_run("cursor").results(after=cursor))
        seen.extend(r.item_id for r in fresh)
        cursor = fresh[-1].cursor if fresh else cursor
    seen.extend(r.item_id for r in run.results(after=cursor))
    assert sorted(seen) == sorted(f"r{i}" for i in range(6))  # each exactly once


def test_errors_say_what_to_do(make_runner: Callable[..., BatchRunner]) -> None:
    runner = make_runner()
    with pytest.raises(RunNotFoundError, match="no run 'nope'"):
        runner.get_run("nope")
    run = runner.start(_job(), items=_items(2), run_id="same")
    run.wait(timeout=60, poll_interval=0.05)
    changed = BatchJob(model="gpt-4.1", build_prompt=lambda item: "other", output_model=Review)
    with pytest.raises(JobChangedError, match=r"model \('gpt-4o-mini' -> 'gpt-4.1'\)") as info:
        runner.start(changed, items=_items(2), run_id="same")
    assert "start a new run id" in str(info.value) and info.value.run_id == "same"
    with pytest.raises(RunFinishedError, match="already completed"):
        run.cancel()
    # Starting a finished run again just hands back the handle.
    again = runner.start(_job(), items=_items(2), run_id="same")
    assert again.summary().completed_items == 2


def test_typed_results_of_outputs_checked_without_the_model_fail_with_the_reason(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    class _Strict(BaseModel):  # defined here: a process without the job cannot import it
        label: str

        @field_validator("label")
        @classmethod
        def _never(cls, value: str) -> str:
            raise ValueError("no label is good enough")

    job = BatchJob(model="gpt-4o-mini", build_prompt=lambda i: "q", output_model=_Strict)
    emulator.faults.hold_batches()
    make_runner().start(job, items=_items(2), run_id="strict")
    emulator.release_batches()
    # Collected by a process without the job: only the stored JSON schema is checked.
    untyped = make_runner().get_run("strict")
    assert untyped.wait(timeout=60, poll_interval=0.05).completed_items == 2
    assert all(isinstance(r.output, dict) for r in untyped.results())
    typed = make_runner().get_run("strict", job=job)
    with pytest.raises(RunConflictError, match="does not validate against _Strict") as caught:
        list(typed.results())
    assert "no label is good enough" in caught.value.message
    assert "without job=" in caught.value.message
