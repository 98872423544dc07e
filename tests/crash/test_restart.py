"""A crashed lease holder does not block a restart, with the default lease TTL (120 s).

A holder SIGKILLed mid-collection is detected by its liveness lock (a file lock with
SQLite, an advisory lock with Postgres), so the very first ``start()`` of the restarted
process gets the lease: no ``RunLeasedError``, no waiting. SIGTERM and normal exit
release the lease outright.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchor_core import (
    BatchRunner,
    LocalArtifactStore,
    OpenAIProviderConfig,
    PostgresStorage,
    RunLeasedError,
    RunStatus,
    SQLiteStorage,
)
from tests.conftest import POSTGRES_URL, postgres_param
from tests.crash import run_worker
from tests.crash.worker import items, job

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_ITEMS = 20


@pytest.fixture(params=["sqlite", postgres_param()])
def where(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, str]]]:
    """A run id and the worker environment for each store."""
    if request.param == "postgres":
        assert POSTGRES_URL
        yield f"restart-{uuid.uuid4().hex[:10]}", {"BATCHOR_TEST_STORE_URL": POSTGRES_URL}
    else:
        yield "restart", {}


def _runner(tmp_path: Path, emulator: Any, env: dict[str, str], **kwargs: Any) -> BatchRunner:
    url = env.get("BATCHOR_TEST_STORE_URL")
    return BatchRunner(
        storage=PostgresStorage(url) if url else SQLiteStorage(tmp_path / "runs.sqlite3"),
        artifacts=LocalArtifactStore(tmp_path / "artifacts"),
        provider=OpenAIProviderConfig(api_key="sk-test", base_url=emulator.base_url),
        **kwargs,
    )


def test_a_restart_after_sigkill_of_the_holder_gets_the_lease_at_once(
    tmp_path: Path, emulator: Any, where: tuple[str, dict[str, str]]
) -> None:
    run_id, env = where
    killed = run_worker(
        "tests.crash.worker",
        tmp_path,
        emulator.base_url,
        run_id,
        str(N_ITEMS),
        crash="collect.downloaded",  # SIGKILL mid-collection, lease held
        **env,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with _runner(tmp_path, emulator, env) as runner:
        record = runner.storage.load_run(run_id)
        assert record is not None and record.status is RunStatus.RUNNING
        run = runner.start(job(), items=items(N_ITEMS), run_id=run_id)  # no RunLeasedError
        run.refresh()  # the first step takes the lease too
        summary = run.wait(timeout=60, poll_interval=0.02)
    assert summary.status is RunStatus.COMPLETED
    assert summary.completed_items == N_ITEMS


def _hold(tmp_path: Path, emulator: Any, run_id: str, env: dict[str, str], *flags: str) -> Any:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.crash.lease_holder",
            str(tmp_path / "runs.sqlite3"),
            str(tmp_path / "artifacts"),
            emulator.base_url,
            run_id,
            *flags,
        ],
        env={**os.environ, "PYTHONPATH": os.getcwd(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("own_handler", [False, True])
def test_sigterm_releases_the_lease_and_keeps_the_programs_own_handler(
    tmp_path: Path, emulator: Any, where: tuple[str, dict[str, str]], own_handler: bool
) -> None:
    run_id, env = where
    proc = _hold(tmp_path, emulator, run_id, env, *(["--own-handler"] if own_handler else []))
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == f"held {str(own_handler).lower()}", proc.stderr.read() if proc.stderr else ""
        with _runner(tmp_path, emulator, env) as runner:
            with pytest.raises(RunLeasedError):
                runner.stepper.lease.acquire(run_id)  # the holder is alive
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == (7 if own_handler else 128 + signal.SIGTERM)
            assert runner.break_lease(run_id) is None  # released on the way out
    finally:
        proc.kill()
        proc.communicate()


def test_break_lease_fences_out_a_holder_batchor_cannot_see_die(
    tmp_path: Path, emulator: Any
) -> None:
    def runner(owner: str) -> BatchRunner:
        return _runner(tmp_path, emulator, {}, owner_id=owner)

    with runner("otherhost:1:a") as far, runner("thishost:2:b") as near:
        near.start(job(), items=items(4), run_id="stale")
        far.stepper.lease.acquire("stale")
        with pytest.raises(RunLeasedError, match="break_lease"):
            near.get_run("stale", job=job()).refresh()
        assert near.break_lease("stale") == "otherhost:1:a"
        summary = near.get_run("stale", job=job()).wait(timeout=60, poll_interval=0.02)
        assert summary.status is RunStatus.COMPLETED
        with pytest.raises(RunLeasedError, match="lost the lease"):
            far.stepper.lease.renew("stale")


def test_a_dead_holder_on_another_host_is_waited_out_or_broken_on_sqlite(
    tmp_path: Path, emulator: Any
) -> None:
    # A file lock proves liveness only on this host: a holder whose owner id names another
    # host keeps its lease until the TTL, even once its lock is free, unless broken.
    proc = _hold(tmp_path, emulator, "far", {}, "--owner=otherhost:1:x")
    assert proc.stdout is not None and proc.stdout.readline().startswith("held")
    proc.kill()
    proc.communicate()
    with _runner(tmp_path, emulator, {}) as runner:
        run = runner.get_run("far", job=job())
        with pytest.raises(RunLeasedError, match="otherhost:1:x"):
            run.refresh()
        assert runner.break_lease("far") == "otherhost:1:x"
        assert run.wait(timeout=60, poll_interval=0.02).status is RunStatus.COMPLETED
