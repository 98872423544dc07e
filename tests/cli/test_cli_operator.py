"""Operator actions the core gained: breaking a stale lease, upgrading the store schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from batchor_core import SQLiteStorage
from batchor_core.cli.app import run as cli
from batchor_core.cli.errors import ExitCode

from .helpers import write_csv

pytestmark = pytest.mark.integration

START = ["start", "in.csv", "--prompt-template", "Classify: {text}", "--model", "gpt-4o-mini"]


def test_break_lease_names_the_holder_it_cleared(
    tmp_path: Path, cli_env: dict[str, str], emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    write_csv(tmp_path / "in.csv", 5)
    assert cli([*START, "--run-id", "leased"]) == 0
    capsys.readouterr()
    store = SQLiteStorage(cli_env["BATCHOR_STORE"])
    try:
        # A holder on another host: its liveness cannot be seen from here.
        grant = store.acquire_lease(
            "leased", "otherhost:123:abcd", now=datetime.now(UTC), ttl_seconds=600
        )
        assert grant.token is not None
    finally:
        store.close()
    assert cli(["break-lease", "leased"]) == 0
    assert capsys.readouterr().out == "run leased: lease of otherhost:123:abcd broken\n"
    assert cli(["break-lease", "leased", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"run_id": "leased", "previous_holder": None}
    assert cli(["break-lease", "no-such-run"]) == ExitCode.NOT_FOUND
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_db_upgrade_reports_the_revision(
    tmp_path: Path, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    SQLiteStorage(cli_env["BATCHOR_STORE"]).close()
    assert cli(["db", "upgrade", "--json"]) == 0
    revision = json.loads(capsys.readouterr().out)["schema_revision"]
    assert revision and revision.startswith("000")
    assert cli(["db", "upgrade", "--store", str(tmp_path / "missing.sqlite3")]) != 0
    assert len(capsys.readouterr().err.splitlines()) == 1
