"""The ``batchor`` console script in real processes against the emulator over HTTP.

Each subprocess costs about a second (importing the openai SDK), so every test here makes
the few calls that need a real process and checks the rest in-process.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
from pathlib import Path
from typing import Any

import openai
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from batchor_core.cli.app import run as cli

from .helpers import batchor, batchor_command, write_csv, write_jsonl, write_parquet

pytestmark = pytest.mark.integration

PROGRESS = re.compile(
    r"\[ *\d+(s|m\d\ds)\] (?P<run>\S+) (?P<status>\w+): (?P<done>\d+)/(?P<total>\d+) done "
    r"\((?P<completed>\d+) completed, (?P<failed>\d+) failed, (?P<cancelled>\d+) cancelled\), "
    r"(?P<pending>\d+) pending, (?P<batches>\d+) batch(es)? in flight(, ETA \S+)?"
)


def test_csv_start_wait_results_and_resume(tmp_path: Path, stepwise_emulator: Any) -> None:
    write_csv(tmp_path / "reviews.csv", 500)
    env = {
        "OPENAI_BASE_URL": stepwise_emulator.base_url,
        "OPENAI_API_KEY": "sk-test",
        "BATCHOR_STORE": str(tmp_path / "runs.sqlite3"),
    }
    start = [
        "start", "reviews.csv", "--id-column", "id", "--prompt-template", "Classify: {text}",
        "--model", "gpt-4o-mini", "--run-id", "csv-run", "--poll-interval", "0.01",
    ]  # fmt: skip
    done = batchor(*start, "--wait", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    # Not a terminal: one plain line per change, counts only ever grow, the last is final.
    lines = done.stdout.splitlines()
    assert len(lines) >= 2
    parsed = [PROGRESS.fullmatch(line) for line in lines]
    assert all(parsed), lines
    counts = [int(m["done"]) for m in parsed if m]
    assert counts == sorted(counts) and counts[0] == 0
    assert len(set(lines)) == len(lines)
    last = parsed[-1]
    assert last is not None
    assert (last["run"], last["status"], last["done"], last["total"]) == (
        "csv-run", "completed", "500", "500",
    )  # fmt: skip
    assert last["pending"] == "0" and last["batches"] == "0"

    # The same command again resumes the finished run: no new batch, same answer.
    created = stepwise_emulator.batch_create_count
    again = batchor(*start, "--json", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["run_id"] == "csv-run" and summary["completed_items"] == 500
    assert stepwise_emulator.batch_create_count == created

    exported = batchor("results", "csv-run", "--output", "out.csv", env=env, cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.strip() == "wrote 500 results to out.csv"
    assert len((tmp_path / "out.csv").read_text().splitlines()) == 501


def test_jsonl_responses_endpoint_with_an_output_model(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    write_jsonl(tmp_path / "reviews.jsonl", 500)
    (tmp_path / "cli_models.py").write_text(
        "from pydantic import BaseModel\n\n"
        "class Verdict(BaseModel):\n    sentiment: str\n    score: int\n",
        encoding="utf-8",
    )
    started = batchor(
        "start", "reviews.jsonl", "--prompt-field", "text", "--model", "gpt-4o-mini",
        "--endpoint", "responses", "--system-prompt", "Judge the review.",
        "--output-model", "cli_models:Verdict", "--run-id", "jsonl-run", "--wait", "--json",
        env=cli_env, cwd=tmp_path,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    summary = json.loads(started.stdout)
    assert summary["status"] == "completed" and summary["completed_items"] == 500
    assert summary["endpoint"] == "/v1/responses" and summary["batch_ids"]

    results = batchor("results", "jsonl-run", env=cli_env, cwd=tmp_path)
    assert results.returncode == 0, results.stderr
    records = [json.loads(line) for line in results.stdout.splitlines()]
    assert len(records) == 500 and {r["status"] for r in records} == {"completed"}
    assert all(set(r["output"]) == {"sentiment", "score"} for r in records)
    assert sorted(r["item_id"] for r in records) == sorted(f"r{i}" for i in range(500))


def test_parquet_start_then_wait_then_export(
    tmp_path: Path, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    write_parquet(tmp_path / "reviews.parquet", 500)
    started = batchor(
        "start", "reviews.parquet", "--prompt-field", "text", "--model", "gpt-4o-mini",
        "--run-id", "pq-run", "--json", env=cli_env, cwd=tmp_path,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert json.loads(started.stdout)["total_items"] == 500

    waited = batchor(
        "wait", "pq-run", "--json", "--poll-interval", "0.01", env=cli_env, cwd=tmp_path
    )
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "completed"

    # The rest in-process on the same store: export, status, list, item.
    assert cli(["results", "pq-run", "-o", "out.parquet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"] == 500 and report["format"] == "parquet"
    assert pq.read_table(tmp_path / "out.parquet").num_rows == 500
    assert cli(["status", "pq-run", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["completed_items"] == 500 and status["error_counts"] == {}
    assert cli(["list", "--json", "--status", "completed"]) == 0
    assert [json.loads(line)["run_id"] for line in capsys.readouterr().out.splitlines()] == [
        "pq-run"
    ]
    assert cli(["item", "pq-run", "r7", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["item_id"] == "r7"


def test_an_unknown_run_in_a_real_process_is_one_line_without_traceback(
    tmp_path: Path, cli_env: dict[str, str]
) -> None:
    unknown = batchor("status", "no-such-run", env=cli_env, cwd=tmp_path)
    assert unknown.returncode == 3
    assert unknown.stdout == ""
    assert len(unknown.stderr.splitlines()) == 1 and unknown.stderr.startswith("batchor: error:")


def test_emulator_command_serves_with_scripted_faults(tmp_path: Path) -> None:
    command = [*batchor_command(), "emulator", "--port", "0", "--fail-batches", "1"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        stdout = proc.stdout
        threading.Thread(
            target=lambda: [lines.put(stdout.readline()) for _ in range(3)], daemon=True
        ).start()
        try:
            got = [lines.get(timeout=30) for _ in range(3)]
            match = re.fullmatch(
                r"batchor emulator listening on (http://127\.0\.0\.1:\d+/v1)\n", got[0]
            )
            assert match is not None, got
            base_url = match.group(1)
            assert got[1:] == [
                f"export OPENAI_BASE_URL={base_url}\n",
                "export OPENAI_API_KEY=sk-emulator\n",
            ]
            with openai.OpenAI(api_key="sk-emulator", base_url=base_url, max_retries=0) as client:
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"}
                line["body"] = body
                file = client.files.create(
                    file=("in.jsonl", (json.dumps(line) + "\n").encode()), purpose="batch"
                )
                batch = client.batches.create(
                    input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
                )
                assert client.batches.retrieve(batch.id).status == "failed"
        finally:
            proc.terminate()
        assert proc.wait(timeout=30) == 0
