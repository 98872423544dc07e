"""batchor_core: a durable, typed runner for the OpenAI Batch API.

The main names::

    BatchItem      one unit of work
    BatchJob       how items become provider requests
    BatchRunner    the durable orchestrator
    Run            the handle you refresh, wait on, inspect and control
"""

from typing import TYPE_CHECKING

from batchor_core.artifacts import FsspecArtifactStore, LocalArtifactStore
from batchor_core.clock import FakeClock, SystemClock
from batchor_core.errors import (
    ArtifactError,
    BatchorError,
    ConfigurationError,
    IngestIncompleteError,
    InvalidItemError,
    JobChangedError,
    ProviderError,
    RateLimitedError,
    RetentionError,
    RunConflictError,
    RunFinishedError,
    RunLeasedError,
    RunNotFoundError,
    RunTimeoutError,
    SourceChangedError,
    SourceError,
    StorageError,
)
from batchor_core.exports import ExportReport
from batchor_core.models import (
    BatchItem,
    BatchJob,
    ChunkPolicy,
    Endpoint,
    EnqueueLimit,
    ItemError,
    ItemResult,
    ItemStatus,
    Price,
    RetryPolicy,
    RunEstimate,
    RunStatus,
    RunSummary,
    Usage,
)
from batchor_core.providers.openai.config import OpenAIProviderConfig
from batchor_core.run import Run
from batchor_core.runner import BatchRunner

if TYPE_CHECKING:
    from batchor_core.providers.openai import OpenAIBatchProvider
    from batchor_core.storage import MemoryStateStore, PostgresStorage, SQLiteStorage

# Names whose modules pull heavy libraries (the openai SDK, SQLAlchemy) are imported on
# first use, so `import batchor_core` stays cheap for a CLI call, a Dagster code location
# or a worker subprocess that never touches them. tests/unit/test_lean_import.py pins it.
_LAZY = {
    "OpenAIBatchProvider": "batchor_core.providers.openai",
    "MemoryStateStore": "batchor_core.storage",
    "PostgresStorage": "batchor_core.storage",
    "SQLiteStorage": "batchor_core.storage",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "BatchItem",
    "BatchJob",
    "BatchRunner",
    "BatchorError",
    "ChunkPolicy",
    "ConfigurationError",
    "Endpoint",
    "EnqueueLimit",
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
    "Price",
    "ProviderError",
    "RateLimitedError",
    "RetentionError",
    "RetryPolicy",
    "Run",
    "RunConflictError",
    "RunEstimate",
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
]
