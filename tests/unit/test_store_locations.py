"""One reading of store locations serves the runner, the Dagster resource and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchor_core import (
    BatchRunner,
    ConfigurationError,
    FsspecArtifactStore,
    LocalArtifactStore,
    MemoryStateStore,
    SQLiteStorage,
)
from batchor_core.defaults import artifacts_target, open_artifacts, open_storage, store_target


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("memory", ("memory", "")),
        ("sqlite://", ("memory", "")),
        ("sqlite:///runs/x.db", ("sqlite", "runs/x.db")),
        ("sqlite:////tmp/x.db", ("sqlite", "/tmp/x.db")),
        ("runs/x.db", ("sqlite", "runs/x.db")),
        ("postgresql://u:p@h/db", ("postgres", "postgresql://u:p@h/db")),
        ("postgresql+psycopg://u:p@h/db", ("postgres", "postgresql+psycopg://u:p@h/db")),
        ("postgres://u:p@h/db", ("postgres", "postgresql://u:p@h/db")),
    ],
)
def test_store_targets(location: str, expected: tuple[str, str]) -> None:
    assert store_target(location) == expected


def test_home_is_expanded_and_bad_locations_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store_target("~/x.db") == ("sqlite", str(tmp_path / "x.db"))
    store = open_storage("~/state/x.db")
    assert isinstance(store, SQLiteStorage) and (tmp_path / "state" / "x.db").exists()
    store.close()
    assert isinstance(open_storage("memory"), MemoryStateStore)
    for bad in ("", "   ", "mysql://u:p@h/db"):
        with pytest.raises(ConfigurationError):
            store_target(bad)


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("runs/artifacts", ("local", "runs/artifacts")),
        ("s3://bucket/prefix", ("fsspec", "s3://bucket/prefix")),
        ("gs://bucket", ("fsspec", "gs://bucket")),
        ("az://container/p", ("fsspec", "az://container/p")),
        ("abfs://container/p", ("fsspec", "abfs://container/p")),
        ("file:///srv/artifacts", ("fsspec", "file:///srv/artifacts")),
        ("memory://x", ("fsspec", "memory://x")),
    ],
)
def test_artifact_targets(location: str, expected: tuple[str, str]) -> None:
    assert artifacts_target(location) == expected


def test_artifact_locations_become_stores_in_one_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = MemoryStateStore()
    monkeypatch.setenv("HOME", str(tmp_path))
    local = open_artifacts("~/art", storage)
    assert isinstance(local, LocalArtifactStore) and local.root == (tmp_path / "art").resolve()
    remote = open_artifacts("memory://unit-artifacts", storage)
    assert isinstance(remote, FsspecArtifactStore)
    assert open_artifacts(remote, storage) is remote
    runner = BatchRunner(storage=storage, artifacts="memory://unit-artifacts")
    assert isinstance(runner.artifacts, FsspecArtifactStore)
    with BatchRunner.from_settings(store="memory", artifacts="memory://unit-artifacts") as made:
        assert isinstance(made.artifacts, FsspecArtifactStore)
    with pytest.raises(ConfigurationError, match="artifacts URL"):
        BatchRunner.from_settings(store="memory", artifact_options={"key": "k"})
    for bad in ("", "ftp://host/x", "http://host/x"):
        with pytest.raises(ConfigurationError):
            open_artifacts(bad, storage)
    with pytest.raises(ConfigurationError, match="object-store URL"):
        open_artifacts(tmp_path, storage, storage_options={"key": "k"})


def test_a_runner_takes_a_store_location_as_well_as_a_store(tmp_path: Path) -> None:
    with BatchRunner(storage=str(tmp_path / "s.sqlite3"), artifacts=tmp_path / "a") as runner:
        assert isinstance(runner.storage, SQLiteStorage)
        assert runner.storage.path == tmp_path / "s.sqlite3"
        assert runner.storage.list_runs() == []
    with BatchRunner(storage=tmp_path / "p.sqlite3") as runner:  # a Path; artifacts beside it
        assert isinstance(runner.artifacts, LocalArtifactStore)
        assert runner.artifacts.root == (tmp_path / "artifacts").resolve()
    with BatchRunner(storage="memory") as runner:
        assert isinstance(runner.storage, MemoryStateStore)
    for bad in ({"path": "x"}, 3):
        with pytest.raises(ConfigurationError, match="storage must be a store"):
            BatchRunner(storage=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unsupported store URL"):
        BatchRunner(storage="mysql://host/db")
    with pytest.raises(ConfigurationError, match="artifacts URL scheme"):
        BatchRunner(storage=str(tmp_path / "t.sqlite3"), artifacts="ftp://host/x")


def test_object_store_credentials_never_show_in_reprs() -> None:
    store = FsspecArtifactStore(
        "s3://AKIDSECRETUSER:pw-in-url@bucket/prefix",
        storage_options={
            "key": "AKIDVERYSECRET",
            "secret": "s3cr3t-value",
            "endpoint_url": "http://minio-user:minio-pass@127.0.0.1:9",
            "client_kwargs": {"aws_session_token": "tok-secret", "region_name": "eu-west-1"},
        },
    )
    runner = BatchRunner(storage=MemoryStateStore(), artifacts=store)
    shown = repr(store) + repr(runner) + store.url_for("runs/r/x.jsonl")
    for secret in (
        "AKIDSECRETUSER",
        "pw-in-url",
        "AKIDVERYSECRET",
        "s3cr3t",
        "minio-pass",
        "minio-user",
        "tok-secret",
    ):
        assert secret not in shown, shown
    assert "127.0.0.1:9" in shown and "eu-west-1" in shown and "bucket/prefix" in shown


def test_a_missing_filesystem_library_names_the_extra() -> None:
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here")
    with pytest.raises(ConfigurationError, match=r"batchor\[gcs\]"):
        FsspecArtifactStore("gs://bucket/prefix")
