"""The batchor exception tree.

Every error a user can foresee is a subclass of :class:`BatchorError`. Third-party
exceptions (SQLAlchemy, the OpenAI SDK, pyarrow) are translated once, at the adapter
edge, with ``raise ... from exc``.

::

    BatchorError
    ├── ConfigurationError          bad arguments, missing API key, unknown endpoint
    ├── RunNotFoundError            unknown run id
    ├── RunConflictError            run exists but does not match what was asked
    │   ├── JobChangedError         job definition differs from the stored one
    │   └── SourceChangedError      the item source differs from the stored one
    ├── RunLeasedError              another process holds the run's lease
    ├── RunFinishedError            the run is already terminal
    ├── RetentionError              a prune that would lose data not yet exported
    ├── InvalidItemError            an item that is not a BatchItem (see below for bad ones)
    ├── SourceError                 bad input file (names the file and the line or row)
    ├── StorageError                control-plane store failure
    ├── ArtifactError               artifact store failure
    ├── ProviderError               provider call failed (``retryable`` tells whether to retry)
    │   └── RateLimitedError        429; carries ``retry_after_seconds``
    ├── RunTimeoutError             :meth:`Run.wait` gave up before the run finished
    └── IngestIncompleteError       the run stopped part-way through reading its items
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "BatchorError",
    "ConfigurationError",
    "IngestIncompleteError",
    "InvalidItemError",
    "JobChangedError",
    "ProviderError",
    "RateLimitedError",
    "RetentionError",
    "RunConflictError",
    "RunFinishedError",
    "RunLeasedError",
    "RunNotFoundError",
    "RunTimeoutError",
    "SourceChangedError",
    "SourceError",
    "StorageError",
]


class BatchorError(Exception):
    """Root of every error batchor raises on purpose.

    Attributes:
        run_id: The run concerned, when known.
        item_id: The item concerned, when known.
        batch_id: The provider batch concerned, when known.
        retryable: Whether repeating the same call later may succeed.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        run_id: str | None = None,
        item_id: str | None = None,
        batch_id: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.run_id = run_id
        self.item_id = item_id
        self.batch_id = batch_id
        if retryable is not None:
            self.retryable = retryable


class ConfigurationError(BatchorError, ValueError):
    """An argument or setting is missing or invalid (for example no API key).

    Also a :class:`ValueError`, so callers that catch the builtin keep working.
    """


class RunNotFoundError(BatchorError):
    """No run with the given id exists in the store."""


class RunConflictError(BatchorError):
    """A run with this id exists but does not match what was asked of it."""


class JobChangedError(RunConflictError):
    """The job passed in differs from the job the run was started with."""


class SourceChangedError(RunConflictError):
    """The item source passed in differs from the source the run was started with."""


class RunLeasedError(BatchorError):
    """Another process currently holds the lease on this run."""

    retryable = True


class RunFinishedError(BatchorError):
    """The run is already in a terminal state and cannot take this action."""


class RetentionError(BatchorError):
    """A prune was refused because it would delete data that was never exported."""


class InvalidItemError(BatchorError):
    """Something other than a :class:`BatchItem` was given as an item.

    A ``BatchItem`` with a bad id (empty, too long, a duplicate) or payload (not a JSON
    object) raises nothing: it is stored as a failed item (``invalid_input``,
    ``duplicate_id``) and the rest of the run goes on. A duplicate id written past that
    check (another process adding the same id at once) raises this.
    """


class SourceError(BatchorError):
    """An input file is unreadable or malformed; the message names the file and position."""


class StorageError(BatchorError):
    """The control-plane store failed."""


class ArtifactError(BatchorError):
    """The artifact store failed to read or write a file.

    ``retryable`` (the default) means the store may work again later (unreachable,
    timing out, a full or read-only disk): a step charges it to the chunk concerned and
    backs off. Not retryable means no retry can fix it (committed bytes lost, a corrupt
    part, a file that vanished): the run pauses after a short budget.
    """

    retryable = True


class ProviderError(BatchorError):
    """A call to the batch provider failed.

    Attributes:
        status_code: HTTP status, when the provider answered.
        code: The provider's error code when it gave one (``insufficient_quota``, ...).
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        run_id: str | None = None,
        batch_id: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, run_id=run_id, batch_id=batch_id, retryable=retryable)
        self.status_code = status_code
        self.code = code


class RateLimitedError(ProviderError):
    """The provider answered 429.

    Attributes:
        retry_after_seconds: How long the provider asked us to wait, if it said.
    """

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: float | None = None,
        status_code: int | None = 429,
        run_id: str | None = None,
        batch_id: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, run_id=run_id, batch_id=batch_id)
        self.retry_after_seconds = retry_after_seconds


class IngestIncompleteError(BatchorError):
    """The run stopped part-way through reading its items and nobody is reading them now.

    Resume it with ``runner.start(job, items=<the same source>, run_id=...)``.
    """


class RunTimeoutError(BatchorError):
    """:meth:`batchor_core.Run.wait` reached its timeout before the run finished."""

    retryable = True
