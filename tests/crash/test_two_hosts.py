"""A run carried across hosts: Postgres control plane, S3 artifacts, nothing shared on disk.

Each "host" is a subprocess with its own working directory and its own temporary
directory, deleted once the process is gone; the S3 server (moto) and the OpenAI emulator
are reached over HTTP on 127.0.0.1. One host is SIGKILLed mid-run; the next finishes the
run from what the store and the bucket hold. A host that hangs instead (its process
frozen, its database connection still open, so nothing can tell it is gone) is taken over
once its lease's TTL runs out.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from batchor_core import (
    BatchRunner,
    FsspecArtifactStore,
    ItemStatus,
    OpenAIProviderConfig,
    PostgresStorage,
    RunLeasedError,
    RunStatus,
)
from batchor_core.packing import chunk_key, parse_custom_id
from batchor_core.ports import ChunkState
from tests.crash.worker import items, job

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]

N_ITEMS = 40
REPO = Path(__file__).resolve().parents[2]


def _host(tmp_path: Path, name: str) -> tuple[Path, dict[str, str]]:
    """A working directory and an environment of a host of its own."""
    home = tmp_path / name
    (home / "tmp").mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(home / "tmp")}
    env.pop("BATCHOR_CRASH_AT", None)
    env.pop("BATCHOR_HOME", None)
    return home, env


def _worker(
    tmp_path: Path, name: str, args: list[str], *, crash: str | None, store: str
) -> subprocess.CompletedProcess[str]:
    home, env = _host(tmp_path, name)
    env["BATCHOR_TEST_STORE_URL"] = store
    if crash:
        env["BATCHOR_CRASH_AT"] = crash
    # DB and ARTIFACTS: a relative SQLite path (unused: the store is Postgres) and a URL.
    return subprocess.run(
        [sys.executable, "-m", "tests.crash.worker", "runs.sqlite3", *args],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.parametrize(
    "crash",
    [
        # Slice 3 committed: chunk c00000 submitted, c00001 closed but not yet published,
        # c00002 still being built. Both unpublished files exist only as parts in S3.
        "ingest.slice_committed:3",
        # An output file stored in S3, its outcomes not yet recorded.
        "collect.downloaded:1",
    ],
)
def test_a_run_killed_on_one_host_is_finished_on_another(
    tmp_path: Path, emulator: Any, s3_bucket: str, postgres_url: str, crash: str
) -> None:
    run_id = f"two-hosts-{uuid.uuid4().hex[:10]}"
    url = f"s3://{s3_bucket}/batchor"
    args = [url, emulator.base_url, run_id, str(N_ITEMS)]

    first = _worker(tmp_path, "host-a", args, crash=crash, store=postgres_url)
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    shutil.rmtree(tmp_path / "host-a")  # the host is gone, and its disk with it
    store = PostgresStorage(postgres_url)
    try:
        chunks = store.list_chunks(run_id)
        if crash.startswith("ingest"):
            building = [c for c in chunks if c.state is ChunkState.BUILDING]
            assert len(building) == 2 and all(c.byte_count > 0 for c in building), chunks
    finally:
        store.close()

    second = _worker(tmp_path, "host-b", args, crash=None, store=postgres_url)
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads(second.stdout.strip().splitlines()[-1])
    assert report == {"status": "completed", "completed": N_ITEMS, "failed": 0, "total": N_ITEMS}

    # Every item sent once, in one batch per chunk, and completed once.
    counts = emulator.custom_id_counts()
    assert all(n == 1 for n in counts.values()), counts
    sends = Counter(parse_custom_id(cid)[0] for cid in counts)  # type: ignore[index]
    assert sorted(sends) == list(range(N_ITEMS)) and set(sends.values()) == {1}
    per_chunk = Counter((b["metadata"] or {}).get("batchor_chunk") for b in emulator.batches())
    assert per_chunk and set(per_chunk.values()) == {1}, per_chunk

    artifacts = FsspecArtifactStore(url)
    runner = BatchRunner(
        storage=PostgresStorage(postgres_url),
        artifacts=artifacts,
        provider=OpenAIProviderConfig(api_key="sk-test", base_url=emulator.base_url),
    )
    try:
        run = runner.get_run(run_id, job=job())
        results = list(run.results())
        assert sorted(r.item_id for r in results) == sorted(i.item_id for i in items(N_ITEMS))
        assert all(r.status is ItemStatus.COMPLETED and r.attempts == 1 for r in results)
        # Each request file is in the bucket, hash-checked against the store's record.
        for chunk in runner.storage.list_chunks(run_id):
            assert chunk.sha256 == artifacts.sha256(chunk_key(run_id, chunk.chunk_id))
    finally:
        runner.close()
    import s3fs

    leftovers = s3fs.S3FileSystem().find(f"{s3_bucket}/batchor/.staging")
    assert leftovers == [], "every part was folded into its published file"


def test_a_hung_host_is_taken_over_after_the_lease_ttl(
    tmp_path: Path, emulator: Any, s3_bucket: str, postgres_url: str
) -> None:
    run_id = f"hung-host-{uuid.uuid4().hex[:10]}"
    url = f"s3://{s3_bucket}/batchor"
    home, env = _host(tmp_path, "host-a")
    env["BATCHOR_TEST_STORE_URL"] = postgres_url
    ttl = 4.0
    holder = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.crash.lease_holder",
            "runs.sqlite3",
            url,
            emulator.base_url,
            run_id,
            "--owner=otherhost:1:hung",
            f"--ttl={ttl}",
        ],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line.startswith("held"), holder.stderr.read() if holder.stderr else line
        # The host hangs: its process is frozen, its Postgres session (and so its liveness
        # lock) stays open, and it never renews its lease again.
        os.kill(holder.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        runner = BatchRunner(
            storage=PostgresStorage(postgres_url),
            artifacts=url,
            provider=OpenAIProviderConfig(api_key="sk-test", base_url=emulator.base_url),
            owner_id="thishost:2:b",
            lease_ttl_seconds=ttl,
        )
        try:
            run = runner.get_run(run_id, job=job())
            with pytest.raises(RunLeasedError, match="otherhost:1:hung"):
                run.refresh()
            deadline = time.monotonic() + ttl + 20
            while True:
                try:
                    run.refresh()
                    break
                except RunLeasedError:
                    assert time.monotonic() < deadline, "the lease was never taken over"
                    time.sleep(0.2)
            assert time.monotonic() - frozen_at >= ttl - 1.0  # waited out, not broken
            summary = run.wait(timeout=60, poll_interval=0.05)
            assert summary.status is RunStatus.COMPLETED
            assert summary.completed_items == summary.total_items == 8
        finally:
            runner.close()
    finally:
        holder.kill()
        holder.communicate()
    assert all(n == 1 for n in emulator.custom_id_counts().values())
