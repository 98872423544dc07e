"""File sources through the runner: resume mid-ingest after SIGKILL, identity, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchor_core import (
    BatchItem,
    BatchRunner,
    IngestIncompleteError,
    ItemStatus,
    SourceChangedError,
)
from batchor_core.packing import parse_custom_id
from batchor_core.sources import CsvSource, JsonlSource, MultiSource
from tests.crash import run_worker
from tests.crash.source_worker import job, source

pytestmark = pytest.mark.integration

N_ROWS = 95


def _write(kind: str, path: Path, n: int = N_ROWS) -> Path:
    rows = [{"id": f"{i:05d}", "text": f"row {i}, with a comma"} for i in range(n)]
    if kind == "csv":
        lines = ["id,text"] + [f'{r["id"]},"{r["text"]}"' for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=20)
    return path


def _worker(tmp_path: Path, url: str, kind: str, data: Path, crash: str | None) -> Any:
    return run_worker(
        "tests.crash.source_worker", tmp_path, url, "ingest", kind, str(data), crash=crash
    )


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
@pytest.mark.parametrize("crash", ["ingest.lines_written:4", "ingest.slice_committed:6"])
def test_sigkill_mid_ingest_resumes_from_the_checkpoint(
    tmp_path: Path, make_runner: Callable[..., BatchRunner], emulator: Any, kind: str, crash: str
) -> None:
    data = _write(kind, tmp_path / f"items.{kind}")
    killed = _worker(tmp_path, emulator.base_url, kind, data, crash)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    runner = make_runner()
    record = runner.storage.load_run("ingest")
    assert record is not None and not record.ingest_complete
    assert record.source_checkpoint is not None  # it resumes from here, not from the start
    committed_before = record.total_items
    assert 0 < committed_before < N_ROWS
    # Move and touch the file: the identity is its content, so resuming still works.
    moved = tmp_path / "moved" / data.name
    moved.parent.mkdir()
    shutil.move(data, moved)
    os.utime(moved)
    done = _worker(tmp_path, emulator.base_url, kind, moved, None)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {
        "status": "completed",
        "total": N_ROWS,
        "completed": N_ROWS,
        "failed": 0,
    }
    ids = [r.item_id for r in runner.get_run("ingest").results()]
    assert sorted(ids) == [f"{i:05d}" for i in range(N_ROWS)]  # none missing, none twice
    sends = Counter(parse_custom_id(cid) for cid in emulator.custom_id_counts())
    assert len(sends) == N_ROWS and set(sends.values()) == {1}


def test_an_edited_file_is_refused_with_what_changed(
    tmp_path: Path, make_runner: Callable[..., BatchRunner]
) -> None:
    data = _write("csv", tmp_path / "items.csv")
    runner = make_runner()
    runner.start(job(), items=source("csv", data), run_id="edited")
    with data.open("a") as fh:
        fh.write('99999,"a new row"\n')
    with pytest.raises(SourceChangedError, match="size") as info:
        runner.start(job(), items=source("csv", data), run_id="edited")
    assert "content differs" in str(info.value) and "start a new run id" in str(info.value)
    other_column = CsvSource(data, id_column="text", payload_columns=["text"])
    with pytest.raises(SourceChangedError, match="id_column"):
        runner.start(job(), items=other_column, run_id="edited")


def test_bad_rows_and_duplicates_become_failed_items_naming_file_and_line(
    tmp_path: Path, make_runner: Callable[..., BatchRunner]
) -> None:
    a = tmp_path / "a.jsonl"
    a.write_text(
        '{"id": "1", "text": "ok"}\n{"id": "2", "text": \n[1, 2]\n{"id": "3", "text": "ok"}\n'
    )
    b = tmp_path / "b.jsonl"
    b.write_text('{"id": "3", "text": "dup of a.jsonl line 4"}\n{"id": "4", "text": "ok"}\n')
    files = MultiSource(
        [JsonlSource(a, payload_fields=["text"]), JsonlSource(b, payload_fields=["text"])]
    )
    run = make_runner().start(job(), items=files, run_id="bad-input")
    summary = run.wait(timeout=60, poll_interval=0.05)
    assert (summary.total_items, summary.completed_items, summary.failed_items) == (6, 3, 3)
    failed = {r.item_id: r for r in run.results() if r.status is ItemStatus.FAILED}
    messages = sorted(r.error.message for r in failed.values() if r.error)
    assert any("a.jsonl:2" in m for m in messages)
    assert any("a.jsonl:3" in m for m in messages)
    dup = [m for m in messages if "duplicate item id '3'" in m]
    assert dup and "b.jsonl:1" in dup[0]
    assert all(r.attempts == 1 for r in failed.values())


@pytest.mark.slow
def test_waiting_on_a_half_ingested_run_says_how_to_resume_it(
    tmp_path: Path, make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    data = _write("jsonl", tmp_path / "items.jsonl")
    killed = _worker(tmp_path, emulator.base_url, "jsonl", data, "ingest.slice_committed:3")
    assert killed.returncode == -signal.SIGKILL
    run = make_runner().get_run("ingest", job=job())
    with pytest.raises(IngestIncompleteError, match=r"runner\.start\(job, items="):
        run.wait(timeout=10, poll_interval=0.01)


def test_a_rejected_row_reusing_an_earlier_slices_id_does_not_stop_the_ingest(
    tmp_path: Path, make_runner: Callable[..., BatchRunner]
) -> None:
    data = tmp_path / "a.jsonl"
    data.write_text('{"id": "1", "text": "ok"}\n{"id": "1"}\n{"id": "2", "text": "ok"}\n')
    too_long = "x" * 600
    runner = make_runner(ingest_slice_size=1)  # the clash is across slices
    run = runner.start(job(), items=JsonlSource(data, payload_fields=["text"]), run_id="clash")
    summary = run.wait(timeout=60, poll_interval=0.05)
    assert (summary.total_items, summary.completed_items, summary.failed_items) == (3, 2, 1)
    (failed,) = [r for r in run.results() if r.status is ItemStatus.FAILED]
    assert failed.item_id.startswith("1#rejected@") and failed.error is not None
    assert "a.jsonl:2" in failed.error.message

    other = runner.start(
        job(), items=[BatchItem(item_id=too_long, payload={"text": "t"})], run_id="long-id"
    )
    (row,) = list(other.results())
    assert row.status is ItemStatus.FAILED and len(row.item_id) <= 512
    assert row.error is not None and "1-512 characters" in row.error.message
