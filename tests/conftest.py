"""Shared fixtures: stores (memory, SQLite file, Postgres), the emulator, runners."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from batchor_core import (
    BatchRunner,
    LocalArtifactStore,
    MemoryStateStore,
    OpenAIProviderConfig,
    PostgresStorage,
    SQLiteStorage,
)
from batchor_core.storage import SQLStateStore

POSTGRES_URL = os.environ.get("BATCHOR_TEST_POSTGRES_URL")
REQUIRE_POSTGRES = os.environ.get("BATCHOR_REQUIRE_POSTGRES") == "1"


def postgres_param() -> Any:
    if POSTGRES_URL or REQUIRE_POSTGRES:
        return pytest.param("postgres", marks=pytest.mark.postgres)
    return pytest.param(
        "postgres",
        marks=[pytest.mark.postgres, pytest.mark.skip(reason="BATCHOR_TEST_POSTGRES_URL not set")],
    )


@pytest.fixture(params=["memory", "sqlite", postgres_param()])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLStateStore]:
    """Every control-plane store, so one behaviour is written once and run on all."""
    kind = request.param
    made: SQLStateStore
    if kind == "memory":
        made = MemoryStateStore()
    elif kind == "sqlite":
        made = SQLiteStorage(tmp_path / "state.sqlite3")
    else:
        if not POSTGRES_URL:
            pytest.fail("BATCHOR_REQUIRE_POSTGRES=1 but BATCHOR_TEST_POSTGRES_URL is not set")
        made = PostgresStorage(POSTGRES_URL)
    yield made
    made.close()


@pytest.fixture
def postgres_url() -> str:
    """The test Postgres URL (skips without one, fails if Postgres is required)."""
    if not POSTGRES_URL:
        if REQUIRE_POSTGRES:
            pytest.fail("BATCHOR_REQUIRE_POSTGRES=1 but BATCHOR_TEST_POSTGRES_URL is not set")
        pytest.skip("BATCHOR_TEST_POSTGRES_URL not set")
    return POSTGRES_URL


@pytest.fixture
def run_id() -> str:
    """A run id unique across tests (the Postgres database is shared)."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def emulator() -> Iterator[Any]:
    """A fresh instant-mode emulator on a random port."""
    from batchor_core.testing import OpenAIEmulator

    with OpenAIEmulator(processing="instant", seed=7) as emu:
        yield emu


@pytest.fixture
def make_runner(tmp_path: Path, emulator: Any) -> Iterator[Callable[..., BatchRunner]]:
    """Build runners on real SQLite files talking to the emulator over HTTP."""
    made: list[BatchRunner] = []

    def factory(**overrides: Any) -> BatchRunner:
        kwargs: dict[str, Any] = {
            "storage": SQLiteStorage(tmp_path / "runs.sqlite3"),
            "artifacts": LocalArtifactStore(tmp_path / "artifacts"),
            "provider": OpenAIProviderConfig(
                api_key="sk-test", base_url=emulator.base_url, max_retries=0
            ),
            "transient_backoff_seconds": 0.0,
            "token_limit_backoff_seconds": 0.0,
            "create_grace_seconds": 0.0,
        }
        kwargs.update(overrides)
        runner = BatchRunner(**kwargs)
        made.append(runner)
        return runner

    yield factory
    for runner in made:
        runner.close()


@dataclass
class SilentServer:
    """A server that takes connections and never answers: every call to it times out."""

    base_url: str
    accepted: list[socket.socket]


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []

    def take() -> None:
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # closed
                return

    threading.Thread(target=take, daemon=True).start()
    host, port = listener.getsockname()
    try:
        yield SilentServer(f"http://{host}:{port}/v1", accepted)
    finally:
        listener.close()
        for conn in accepted:
            conn.close()


# ---------------------------------------------------------------------------- object storage

_AWS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """One S3-compatible server (moto) on 127.0.0.1 for the session, reached through the
    standard AWS environment variables (subprocesses inherit them)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {name: os.environ.get(name) for name in _AWS_ENV}
    os.environ.update(
        AWS_ACCESS_KEY_ID="batchor-test-key",
        AWS_SECRET_ACCESS_KEY="batchor-test-secret",
        AWS_ENDPOINT_URL=endpoint,
        AWS_DEFAULT_REGION="us-east-1",
    )
    try:
        yield endpoint
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    import s3fs

    name = f"batchor-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem().mkdir(name)
    return name
