"""How a run ends decides how ``wait`` exits: timeout, pause, cancel, failed items.

In-process against the emulator (the subprocess tests cover the console script itself).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from batchor_core.cli.app import run as cli
from batchor_core.cli.errors import ExitCode

from .helpers import write_csv

pytestmark = pytest.mark.integration

START = ["start", "in.csv", "--prompt-template", "Classify: {text}", "--model", "gpt-4o-mini"]


def test_timeout_pause_cancel_and_their_exit_codes(
    tmp_path: Path, cli_env: dict[str, str], emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    write_csv(tmp_path / "in.csv", 30)
    emulator.faults.hold_batches(True, completed_fraction=0.5)
    assert cli([*START, "--run-id", "held"]) == 0
    assert "follow it with: batchor wait held" in capsys.readouterr().out

    assert cli(["wait", "held", "--timeout", "0.2", "--poll-interval", "0.05"]) == ExitCode.TIMEOUT
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "not finished after 0.2s" in err[0]

    assert cli(["pause", "held", "--reason", "budget"]) == 0
    assert capsys.readouterr().out == "run held paused (budget)\n"
    assert cli(["resume", "held", "--json", "--max-cost-usd", "12.5"]) == 0
    resumed = json.loads(capsys.readouterr().out)
    assert resumed["status"] == "running" and resumed["max_cost_usd"] == 12.5
    assert resumed["cost_usd"] is not None and resumed["waiting_reason"] is None

    assert cli(["cancel", "held", "--json"]) == 0
    cancelled = json.loads(capsys.readouterr().out)
    assert cancelled["status"] == "cancelled"
    assert cancelled["completed_items"] + cancelled["cancelled_items"] == 30
    assert cli(["wait", "held"]) == ExitCode.CANCELLED
    captured = capsys.readouterr()
    assert captured.err == "batchor: run held is cancelled: cancelled by operator\n"
    assert cli(["resume", "held"]) == ExitCode.CONFLICT


def test_failed_items_exit_7_and_are_listed(
    tmp_path: Path, cli_env: dict[str, str], emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    write_csv(tmp_path / "in.csv", 20)  # every 5th row says "broke after a week"
    emulator.faults.line_fault(contains="broke", kind="error")
    assert cli([*START, "--run-id", "faulty", "--wait", "--poll-interval", "0.01"]) == 7
    captured = capsys.readouterr()
    assert captured.err == (
        "batchor: run faulty completed with 4 failed items "
        "(see: batchor results faulty --failed-only)\n"
    )
    assert cli(["results", "faulty", "--failed-only"]) == 0
    failed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(r["item_id"] for r in failed) == ["r1", "r11", "r16", "r6"]
    assert {(r["status"], r["attempts"]) for r in failed} == {("failed", 3)}
    assert cli(["results", "faulty", "--failed-only", "-o", "failed.csv"]) == 0
    assert capsys.readouterr().out == "wrote 4 results to failed.csv\n"
    # A partial export does not count as the run's export: raw outputs stay protected.
    assert cli(["prune", "faulty", "--raw-outputs"]) == ExitCode.CONFLICT
    assert cli(["status", "faulty"]) == 0
    status = capsys.readouterr().out
    assert "errors" in status and "4 failed" in status
    assert "cached)" in status and "reasoning)" in status
    assert "USD so far" in status  # gpt-4o-mini has a price in the table


@pytest.mark.postgres
@pytest.mark.skipif(
    not os.environ.get("BATCHOR_TEST_POSTGRES_URL")
    and os.environ.get("BATCHOR_REQUIRE_POSTGRES") != "1",
    reason="BATCHOR_TEST_POSTGRES_URL not set",
)
def test_a_postgres_store_url(
    tmp_path: Path, cli_env: dict[str, str], run_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    url = os.environ["BATCHOR_TEST_POSTGRES_URL"]
    write_csv(tmp_path / "in.csv", 10)
    assert cli([*START, "--run-id", run_id, "--store", url, "--wait", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["completed_items"] == 10
    assert cli(["list", "--store", url, "--json", "--status", "completed"]) == 0
    listed = [json.loads(line)["run_id"] for line in capsys.readouterr().out.splitlines()]
    assert run_id in listed


def test_an_object_store_artifacts_url(
    tmp_path: Path,
    cli_env: dict[str, str],
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import s3fs

    write_csv(tmp_path / "in.csv", 10)
    monkeypatch.setenv("BATCHOR_ARTIFACTS", f"s3://{s3_bucket}/cli")
    assert cli([*START, "--run-id", "on-s3", "--wait", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["completed_items"] == 10
    assert s3fs.S3FileSystem().find(f"{s3_bucket}/cli/runs/on-s3/requests")
    assert not (tmp_path / "state" / "artifacts").exists()
    assert cli(["status", "on-s3", "--artifacts", "ftp://nowhere/x"]) == ExitCode.USAGE
    assert "unsupported artifacts URL scheme 'ftp'" in capsys.readouterr().err


def test_start_takes_a_cost_cap_and_an_enqueued_token_limit(
    tmp_path: Path, cli_env: dict[str, str], emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without them a CLI user could only set a cap on a run already paused, and never a
    # budget: a run from the CLI spent before its first chance to cap it.
    write_csv(tmp_path / "in.csv", 10)
    assert cli([*START, "--run-id", "capped", "--max-cost-usd", "0", "--json"]) == 0
    capped = json.loads(capsys.readouterr().out)
    assert capped["max_cost_usd"] == 0.0
    assert cli(["wait", "capped", "--poll-interval", "0.01"]) == ExitCode.PAUSED
    assert "would exceed max_cost_usd 0 USD" in capsys.readouterr().err
    assert emulator.batch_create_count == 0
    assert cli(["resume", "capped", "--max-cost-usd", "1"]) == 0
    capsys.readouterr()
    assert cli(["wait", "capped", "--poll-interval", "0.01"]) == 0
    args = [*START, "--run-id", "budget", "--enqueue-limit", "60", "--wait", "--json"]
    assert cli([*args, "--poll-interval", "0.01"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["completed_items"] == 10
    assert emulator.batch_create_count > 2  # one batch of 10 requests is over 60 tokens
    for bad in (["--enqueue-limit", "0"], ["--max-cost-usd", "-1"], ["--max-cost-usd", "inf"]):
        assert cli([*START, "--run-id", "bad", *bad]) == ExitCode.USAGE
