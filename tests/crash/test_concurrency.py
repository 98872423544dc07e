"""Three processes advance the same run at once: nothing is submitted twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batchor_core.packing import parse_custom_id
from tests.conftest import POSTGRES_URL, postgres_param

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_ITEMS = 60


@pytest.mark.parametrize("store", ["sqlite", postgres_param()])
def test_three_processes_on_one_run_never_double_submit(
    tmp_path: Path, emulator: Any, store: str
) -> None:
    emulator.faults.line_fault(contains="flaky", kind="error", times=1)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("BATCHOR_CRASH_AT", None)
    run_id = "shared"
    if store == "postgres":
        assert POSTGRES_URL
        env["BATCHOR_TEST_STORE_URL"] = POSTGRES_URL
        run_id = f"shared-{uuid.uuid4().hex[:10]}"  # the database is shared across tests
    args = [
        sys.executable,
        "-m",
        "tests.crash.worker",
        str(tmp_path / "runs.sqlite3"),
        str(tmp_path / "artifacts"),
        emulator.base_url,
        run_id,
        str(N_ITEMS),
    ]
    procs = [
        subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    # Every process saw the same finished run.
    assert all(
        r == {"status": "completed", "completed": N_ITEMS, "failed": 0, "total": N_ITEMS}
        for r in reports
    ), reports
    per_chunk = Counter((b["metadata"] or {}).get("batchor_chunk") for b in emulator.batches())
    assert per_chunk and all(n == 1 for n in per_chunk.values()), per_chunk
    counts = emulator.custom_id_counts()
    assert all(n == 1 for n in counts.values())
    sends = Counter(parse_custom_id(cid)[0] for cid in counts)  # type: ignore[index]
    assert len(sends) == N_ITEMS
    # Only the flaky items were sent twice (their retry); nothing else more than once.
    flaky = {i for i in range(N_ITEMS) if i % 9 == 4}
    assert {seq for seq, n in sends.items() if n == 2} == flaky
    assert all(n <= 2 for n in sends.values())
