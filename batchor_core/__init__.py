"""batchor_core: a durable, typed runner for the OpenAI Batch API.

The main names::

    BatchItem      one unit of work
    BatchJob       how items become provider requests
    BatchRunner    the durable orchestrator
    Run            the handle you refresh, wait on, inspect and control
"""

from batchor_core.artifacts import LocalArtifactStore
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
    ItemError,
    ItemResult,
    ItemStatus,
    RetryPolicy,
    RunStatus,
    RunSummary,
    Usage,
)
from batchor_core.providers.openai import OpenAIBatchProvider, OpenAIProviderConfig
from batchor_core.run import Run
from batchor_core.runner import BatchRunner
from batchor_core.storage import MemoryStateStore, PostgresStorage, SQLiteStorage

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
    "ExportReport",
    "FakeClock",
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
]
