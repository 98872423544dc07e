"""The public surface is pinned, layers import one way, and secrets never leak."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import batchor_core
from batchor_core import BatchJob, BatchRunner, MemoryStateStore, OpenAIProviderConfig

PACKAGE = Path(batchor_core.__file__).parent

EXPECTED_CORE = {
    "EnqueueLimit",
    "Price",
    "RunEstimate",
    "ArtifactError",
    "BatchItem",
    "BatchJob",
    "BatchRunner",
    "BatchorError",
    "ChunkPolicy",
    "ConfigurationError",
    "Endpoint",
    "ExportReport",
    "FakeClock",
    "FsspecArtifactStore",
    "IngestIncompleteError",
    "InvalidItemError",
    "ItemError",
    "ItemResult",
    "ItemStatus",
    "JobChangedError",
    "LocalArtifactStore",
    "MemoryStateStore",
    "OpenAIBatchProvider",
    "OpenAIProviderConfig",
    "PostgresStorage",
    "ProviderError",
    "RateLimitedError",
    "RetentionError",
    "RetryPolicy",
    "Run",
    "RunConflictError",
    "RunFinishedError",
    "RunLeasedError",
    "RunNotFoundError",
    "RunStatus",
    "RunSummary",
    "RunTimeoutError",
    "SQLiteStorage",
    "SourceChangedError",
    "SourceError",
    "StorageError",
    "SystemClock",
    "Usage",
    "__version__",
}


def test_core_all_is_pinned() -> None:
    assert set(batchor_core.__all__) == EXPECTED_CORE
    for name in batchor_core.__all__:
        assert getattr(batchor_core, name) is not None


def test_storage_surface_is_pinned() -> None:
    import batchor_core.storage

    assert set(batchor_core.storage.__all__) == {
        "MemoryStateStore",
        "PostgresStorage",
        "SQLStateStore",
        "SQLiteStorage",
        "upgrade",
    }


def _imports(path: Path) -> set[str]:
    """Top-level (module import time) imports of a file; lazy imports in functions excluded."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


ADAPTERS = ("storage", "artifacts", "sources", "providers")


@pytest.mark.parametrize(
    "path", sorted(p for p in PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_layers_import_one_way(path: Path) -> None:
    rel = path.relative_to(PACKAGE)
    imports = _imports(path)
    top = rel.parts[0]
    third_party = {
        "sqlalchemy": "storage",
        "alembic": "storage",
        "openai": "providers",
        "pyarrow": "sources",
        "dagster": None,
    }
    for lib, home in third_party.items():
        if any(i == lib or i.startswith(lib + ".") for i in imports):
            assert top == home, f"{rel} imports {lib}, which lives only in {home}/"
    if top in ADAPTERS:
        for other in ADAPTERS:
            if other != top:
                assert not any(i.startswith(f"batchor_core.{other}") for i in imports), (
                    f"adapter {rel} imports adapter {other}"
                )
        assert not any(i.startswith("batchor_core.runner") for i in imports)
    if rel.name in {
        "models.py",
        "errors.py",
        "ports.py",
        "runner.py",
        "run.py",
        "advance.py",
        "ingest.py",
        "collect.py",
        "collector.py",
        "packing.py",
        "jobspec.py",
        "retries.py",
        "lease.py",
        "exports.py",
        "failpoints.py",
        "jsoncodec.py",
        "clock.py",
        "records.py",
        "strict_schema.py",
    }:
        for adapter in ADAPTERS:
            assert not any(i.startswith(f"batchor_core.{adapter}") for i in imports), (
                f"{rel} imports adapter {adapter} at module level"
            )


def test_api_key_never_appears_in_reprs_or_the_store(tmp_path: Path) -> None:
    secret = "sk-live-SECRET-1234567890"
    config = OpenAIProviderConfig(api_key=secret, base_url="http://127.0.0.1:9/v1")
    store = MemoryStateStore()
    runner = BatchRunner(
        storage=store, provider=config, artifacts=batchor_core.LocalArtifactStore(tmp_path)
    )
    assert secret not in repr(config) and secret not in str(config)
    assert secret not in repr(runner) and secret not in repr(runner.provider)
    job = BatchJob(model="m", build_prompt=lambda item: "hi")
    runner.start(job, items=[], run_id="empty")
    record = store.load_run("empty")
    assert record is not None and secret not in repr(record)
    runner.close()
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes()


def test_job_validation_messages_say_what_to_do() -> None:
    with pytest.raises(ValueError, match="exactly one of build_request"):
        BatchJob(model="m")
    with pytest.raises(ValueError, match="not supported"):
        BatchJob(model="m", endpoint="/v1/embeddings", build_prompt=lambda i: "x")


def test_a_missing_api_key_fails_before_anything_is_ingested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    store = MemoryStateStore()
    runner = BatchRunner(
        storage=store,
        artifacts=batchor_core.LocalArtifactStore(tmp_path),
        provider=OpenAIProviderConfig(base_url="http://127.0.0.1:9/v1"),
    )
    job = BatchJob(model="m", build_prompt=lambda item: "hi")
    with pytest.raises(batchor_core.ConfigurationError, match="OPENAI_API_KEY"):
        runner.start(job, items=[batchor_core.BatchItem(item_id="a")], run_id="nokey")
    assert store.load_run("nokey") is None
    runner.close()
