"""Exit codes, and the one-line error every foreseeable failure turns into."""

from __future__ import annotations

from enum import IntEnum

from batchor_core.errors import (
    ArtifactError,
    BatchorError,
    ConfigurationError,
    IngestIncompleteError,
    InvalidItemError,
    ProviderError,
    RetentionError,
    RunConflictError,
    RunFinishedError,
    RunLeasedError,
    RunNotFoundError,
    RunTimeoutError,
    SourceError,
    StorageError,
)

__all__ = ["CliError", "ExitCode", "exit_code_for"]


class ExitCode(IntEnum):
    """What ``batchor`` exits with (documented in docs/cli.md).

    The codes above 6 describe a run, not a failed command: ``wait`` and
    ``start --wait`` end with them when the run ended that way.
    """

    OK = 0
    INTERNAL = 1
    """A bug: an unexpected exception (its traceback is shown)."""
    USAGE = 2
    """Bad flags or configuration (missing option, bad store URL, no API key)."""
    NOT_FOUND = 3
    """No such run, item or store."""
    INPUT = 4
    """The input file is missing, unreadable or lacks a column."""
    CONFLICT = 5
    """The run exists with another job or input, is already finished, or a prune would
    lose data that was never exported."""
    UNAVAILABLE = 6
    """The store, the artifact directory or the provider failed; trying again may help."""
    ITEMS_FAILED = 7
    """The run completed, but some items failed."""
    CANCELLED = 8
    """The run was cancelled."""
    PAUSED = 9
    """The run is paused (see its reason) with nothing left in flight."""
    TIMEOUT = 10
    """``--timeout`` passed before the run finished (it keeps going)."""
    BUSY = 11
    """Another process holds the run's lease right now; try again shortly."""
    INTERRUPTED = 130
    """Ctrl-C."""


class CliError(Exception):
    """A failure the CLI reports as one line on stderr and an exit code."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


# Checked in order, so subclasses come before their parents.
_BY_ERROR: tuple[tuple[type[BatchorError], ExitCode], ...] = (
    (RunNotFoundError, ExitCode.NOT_FOUND),
    (RunConflictError, ExitCode.CONFLICT),
    (RunFinishedError, ExitCode.CONFLICT),
    (RetentionError, ExitCode.CONFLICT),
    (IngestIncompleteError, ExitCode.CONFLICT),
    (RunLeasedError, ExitCode.BUSY),
    (RunTimeoutError, ExitCode.TIMEOUT),
    (SourceError, ExitCode.INPUT),
    (InvalidItemError, ExitCode.INPUT),
    (ConfigurationError, ExitCode.USAGE),
    (StorageError, ExitCode.UNAVAILABLE),
    (ArtifactError, ExitCode.UNAVAILABLE),
    (ProviderError, ExitCode.UNAVAILABLE),
)


def exit_code_for(error: BatchorError) -> ExitCode:
    """The exit code for a :class:`~batchor_core.BatchorError` (by its class tree)."""
    for cls, code in _BY_ERROR:
        if isinstance(error, cls):
            return code
    return ExitCode.UNAVAILABLE
