"""Crash anywhere, resume anywhere: real subprocesses, real SIGKILLs, a fresh process resumes.

Each scenario (seeded) kills the worker at randomly chosen crash points (see
batchor_core.failpoints) one to three times, then lets a final process finish, and checks
that every item has exactly one terminal result, no provider batch was created twice,
and no item was sent more often than its attempts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batchor_core import (
    BatchRunner,
    ItemStatus,
    LocalArtifactStore,
    PostgresStorage,
    SQLiteStorage,
)
from batchor_core.failpoints import POINTS
from batchor_core.packing import parse_custom_id
from tests.conftest import POSTGRES_URL, postgres_param
from tests.crash import run_worker
from tests.crash.worker import items, job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_ITEMS = 40
SCENARIOS = int(os.environ.get("BATCHOR_CRASH_SCENARIOS", "30"))


PG_SCENARIOS = int(os.environ.get("BATCHOR_CRASH_PG_SCENARIOS", "5"))
CASES = [("sqlite", seed) for seed in range(SCENARIOS)] + [
    pytest.param("postgres", seed, marks=postgres_param().marks) for seed in range(PG_SCENARIOS)
]


@pytest.mark.parametrize(("store", "seed"), CASES)
def test_crash_anywhere_resume_anywhere(
    store: str, seed: int, tmp_path: Path, emulator: Any
) -> None:
    rng = random.Random(seed)
    crashes = [
        f"{rng.choice(POINTS)}:{1 if i == 0 else rng.randint(1, 3)}"
        for i in range(rng.randint(1, 3))
    ]
    _crash_then_finish(store, crashes, tmp_path, emulator)


@pytest.mark.parametrize("nth", [1, 2, 4])
def test_a_collection_killed_between_its_parts_resumes_without_counting_twice(
    nth: int, tmp_path: Path, emulator: Any
) -> None:
    # The worker records outcomes 3 at a time, so each chunk of 7 is collected in 3
    # parts: the n-th part recorded is followed by a SIGKILL with the chunk still
    # submitted, and the next process collects the chunk again from the stored file.
    _crash_then_finish("sqlite", [f"collect.part_recorded:{nth}"], tmp_path, emulator)


def _crash_then_finish(store: str, crashes: list[str], tmp_path: Path, emulator: Any) -> None:
    """Run the worker once per crash point, then once more; check the finished run."""
    run_id, env = "crashy", {}
    if store == "postgres":
        assert POSTGRES_URL
        run_id, env = f"crashy-{uuid.uuid4().hex[:10]}", {"BATCHOR_TEST_STORE_URL": POSTGRES_URL}

    def _worker(url: str, crash: str | None) -> subprocess.CompletedProcess[str]:
        return run_worker(
            "tests.crash.worker", tmp_path, url, run_id, str(N_ITEMS), crash=crash, **env
        )

    emulator.faults.line_fault(contains="flaky", kind="error", times=1)
    emulator.faults.line_fault(contains="badjson", kind="invalid_json", times=1)
    kills = 0
    for crash in [*crashes, None]:
        proc = _worker(emulator.base_url, crash)
        if proc.returncode == -signal.SIGKILL:
            kills += 1
            continue
        assert proc.returncode == 0, f"crash={crash}\n{proc.stderr[-3000:]}"
        if crash is None:
            break
    else:
        pytest.fail("the final, crash-free worker did not finish")
    # The first crash point (n=1) is always reached by a run started from scratch.
    assert kills >= 1, f"no kill happened for {crashes}"

    runner = BatchRunner(
        storage=(
            PostgresStorage(POSTGRES_URL)
            if store == "postgres" and POSTGRES_URL
            else SQLiteStorage(tmp_path / "runs.sqlite3")
        ),
        artifacts=LocalArtifactStore(tmp_path / "artifacts"),
        provider=_provider(emulator),
    )
    try:
        run = runner.get_run(run_id, job=job())
        summary = run.summary()
        assert summary.status.value == "completed", crashes
        assert (summary.total_items, summary.completed_items, summary.failed_items) == (
            N_ITEMS,
            N_ITEMS,
            0,
        )
        results = list(run.results())
        ids = [r.item_id for r in results]
        assert len(ids) == len(set(ids)) == N_ITEMS, "every item exactly one terminal result"
        assert set(ids) == {it.item_id for it in items(N_ITEMS)}
        assert all(r.status is ItemStatus.COMPLETED for r in results)
        by_id = {r.item_id: r for r in results}
        # Tokens are counted once per line the provider returned, however often a
        # chunk's collection was interrupted and done again.
        record = runner.storage.load_run(run_id)
        assert record is not None
        assert record.input_tokens == _prompt_tokens_returned(emulator), crashes
    finally:
        runner.close()

    # Provider side: no batch created twice for the same chunk.
    created = Counter((b["metadata"] or {}).get("batchor_chunk") for b in emulator.batches())
    assert all(n == 1 for n in created.values()), f"duplicate batches: {created} after {crashes}"
    # No custom_id sent twice; no item sent more often than its attempts.
    counts = emulator.custom_id_counts()
    assert all(n == 1 for n in counts.values()), crashes
    sends = Counter(parse_custom_id(cid)[0] for cid in counts)  # type: ignore[index]
    for seq, item in enumerate(items(N_ITEMS)):
        assert sends[seq] == by_id[item.item_id].attempts, (item.item_id, crashes)
        faulty = "flaky" in item.payload["text"] or "badjson" in item.payload["text"]
        assert by_id[item.item_id].attempts == (2 if faulty else 1)


def _prompt_tokens_returned(emulator: Any) -> int:
    total = 0
    for batch in emulator.batches():
        for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
            for line in emulator.file_content(file_id).splitlines() if file_id else []:
                response = json.loads(line).get("response") or {}
                if response.get("status_code") == 200:
                    total += response["body"]["usage"]["prompt_tokens"]
    return total


def _provider(emulator: Any) -> Any:
    from batchor_core import OpenAIProviderConfig

    return OpenAIProviderConfig(api_key="sk-test", base_url=emulator.base_url)
