"""Ports: the small protocols the runner talks to, and the records that cross them.

Adapters (``storage/``, ``artifacts/``, ``providers/``, ``sources/``) implement these;
the runner depends on nothing else. Port methods are named for the transitions they make.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import BinaryIO, Protocol, runtime_checkable

from batchor_core.models import BatchItem, ItemError, ItemStatus, JSONObject, RunStatus, Usage

__all__ = [
    "ArtifactStore",
    "ArtifactWriter",
    "BatchProvider",
    "ChunkRecord",
    "ChunkState",
    "Clock",
    "ItemOutcome",
    "ItemSource",
    "NewItem",
    "ParsedLine",
    "ProviderBatch",
    "QueuedItem",
    "RejectedRow",
    "RequestSpec",
    "ResultRow",
    "RetryCandidate",
    "RunRecord",
    "SourceSlice",
    "StateStore",
]


# --------------------------------------------------------------------------- records


class ChunkState(StrEnum):
    """Lifecycle of one provider batch (a "chunk" of requests) on our side.

    ``building -> sealed -> uploading -> uploaded -> submitting -> submitted -> collected``.
    ``uploading`` and ``submitting`` are intents written before the side effect, so a
    crash in between is reconciled on restart instead of repeated blindly.
    """

    BUILDING = "building"
    SEALED = "sealed"
    UPLOADING = "uploading"
    UPLOADED = "uploaded"
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    COLLECTED = "collected"


IN_FLIGHT_CHUNK_STATES = frozenset({ChunkState.SUBMITTED})
UNSUBMITTED_CHUNK_STATES = frozenset(
    {ChunkState.SEALED, ChunkState.UPLOADING, ChunkState.UPLOADED, ChunkState.SUBMITTING}
)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as the store keeps it."""

    run_id: str
    status: RunStatus
    status_reason: str | None
    job_spec: JSONObject
    job_fingerprint: str
    source_identity: JSONObject | None
    source_checkpoint: JSONObject | None
    ingest_complete: bool
    total_items: int
    completed_items: int
    failed_items: int
    cancelled_items: int
    input_tokens: int
    output_tokens: int
    owner: JSONObject | None
    created_at: datetime
    updated_at: datetime
    retention: JSONObject | None = None


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    """One provider batch's worth of requests."""

    run_id: str
    chunk_id: str
    seq: int
    state: ChunkState
    request_count: int
    byte_count: int
    sha256: str | None
    file_id: str | None
    batch_id: str | None
    provider_status: str | None
    not_before: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class NewItem:
    """An item row to insert at ingest.

    ``status`` is ``pending`` for a normal item; a row rejected by its source is inserted
    already ``failed`` with ``error`` set, so it is never lost.
    """

    seq: int
    item_id: str
    payload_json: str
    metadata_json: str | None
    chunk_id: str | None
    status: ItemStatus = ItemStatus.PENDING
    error: ItemError | None = None


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """What one result line (or its absence) means for an item.

    ``status`` is the item's next status: terminal, or ``pending`` to retry.
    The update only applies while the item is still pending in the same submission,
    so replaying a collection after a crash changes nothing.
    """

    seq: int
    submission: int
    status: ItemStatus
    output_json: str | None = None
    error: ItemError | None = None
    usage: Usage | None = None
    spend_attempt: bool = True
    retry_not_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class QueuedItem:
    """An item waiting for the result of its current submission."""

    seq: int
    submission: int
    attempts: int
    free_resubmits: int


@dataclass(frozen=True, slots=True)
class RetryCandidate:
    """A pending item whose last submission ended without a result."""

    seq: int
    chunk_id: str
    submission: int


@dataclass(frozen=True, slots=True)
class ResultRow:
    """A terminal item as stored."""

    seq: int
    item_id: str
    status: ItemStatus
    output_json: str | None
    error: ItemError | None
    attempts: int
    usage: Usage | None
    metadata_json: str | None
    finished_seq: int


@dataclass(frozen=True, slots=True)
class RejectedRow:
    """An input row a source could not turn into an item.

    Attributes:
        item_id: The row's id when it could be read, else a synthetic ``file:line`` id.
        error: What is wrong with the row (names the file and line or row).
        raw: The row's raw text or values, kept so nothing is lost.
    """

    item_id: str
    error: str
    raw: JSONObject = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SourceSlice:
    """Items read from a source, and the checkpoint just after the last of them.

    The runner commits the items and the checkpoint in one transaction, so a resumed
    ingest starts exactly after the last committed slice.
    """

    items: Sequence[BatchItem]
    checkpoint: JSONObject
    rejected: Sequence[RejectedRow] = ()
    locations: Sequence[str] = ()
    """Where each item came from (``file:line``), parallel to ``items``, for error messages."""


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """What the provider needs to shape request bodies, as stored with the run."""

    model: str
    endpoint: str
    request_options: JSONObject
    output_schema: JSONObject | None
    output_name: str | None


@dataclass(frozen=True, slots=True)
class ProviderBatch:
    """A provider batch, translated out of the SDK's types."""

    batch_id: str
    status: str
    input_file_id: str | None
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    errors: tuple[ItemError, ...]
    metadata: Mapping[str, str]

    @property
    def is_terminal(self) -> bool:
        """Whether the provider will not change this batch any more."""
        return self.status in ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True, slots=True)
class ParsedLine:
    """One line of a provider output or error file.

    Attributes:
        custom_id: The request's custom id.
        text: The model's text output, when the request succeeded.
        error: Why the request failed, when it did (``code`` ``batch_expired`` or
            ``batch_cancelled`` means it never ran).
        usage: Tokens used, when reported.
    """

    custom_id: str
    text: str | None
    error: ItemError | None
    usage: Usage | None


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class Clock(Protocol):
    """Time, injectable so the runner never sleeps on its own in tests."""

    def now(self) -> datetime:
        """The current aware UTC time."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...


class ItemSource(Protocol):
    """A deterministic, checkpointable stream of items."""

    def identity(self) -> JSONObject:
        """What the source is, by content; a resumed run must see the same identity."""
        ...

    def read_slices(
        self, checkpoint: JSONObject | None, *, slice_size: int
    ) -> Iterator[SourceSlice]:
        """Yield slices of at most ``slice_size`` items, starting after ``checkpoint``."""
        ...


class ArtifactWriter(Protocol):
    """An append-only file being built."""

    def write(self, data: bytes) -> None:
        """Append bytes."""
        ...

    def sync(self) -> int:
        """Make everything written durable; return the file size."""
        ...

    def close(self) -> None:
        """Close without publishing."""
        ...


class ArtifactStore(Protocol):
    """Where request files and raw provider outputs live."""

    def open_append(self, key: str, *, truncate_to: int | None = None) -> ArtifactWriter:
        """Open the unpublished file ``key`` for appending, cut to ``truncate_to`` bytes first."""
        ...

    def publish(self, key: str) -> str:
        """Atomically make the built file ``key`` final; return its sha256 hex digest."""
        ...

    def write_stream(self, key: str, chunks: Iterator[bytes]) -> int:
        """Write ``key`` atomically from ``chunks``; return its size."""
        ...

    def open_read(self, key: str) -> BinaryIO:
        """Open the published file ``key`` for reading."""
        ...

    def exists(self, key: str) -> bool:
        """Whether the published file ``key`` exists."""
        ...

    def delete(self, key: str) -> bool:
        """Delete ``key`` (published or not); return whether anything was deleted."""
        ...

    def sha256(self, key: str) -> str:
        """The sha256 hex digest of the published file ``key``."""
        ...


class BatchProvider(Protocol):
    """A batch API: the only thing that talks to the provider."""

    def output_schema(self, output_model: type) -> tuple[str, JSONObject]:
        """The strict JSON schema name and body the provider enforces for ``output_model``."""
        ...

    def shape_body(self, spec: RequestSpec, body: Mapping[str, object]) -> JSONObject:
        """Complete a user-built request body: model, options, structured output format."""
        ...

    def parse_line(self, endpoint: str, line: bytes) -> ParsedLine:
        """Parse one line of an output or error file."""
        ...

    def upload_file(self, stream: BinaryIO, *, filename: str) -> str:
        """Upload a batch input file; return its file id."""
        ...

    def delete_file(self, file_id: str) -> None:
        """Delete a file; a missing file is not an error."""
        ...

    def create_batch(
        self, *, file_id: str, endpoint: str, completion_window: str, metadata: Mapping[str, str]
    ) -> ProviderBatch:
        """Create a batch, exactly once: no silent retries."""
        ...

    def get_batch(self, batch_id: str) -> ProviderBatch:
        """Read a batch's current state."""
        ...

    def find_batches(
        self, metadata: Mapping[str, str], *, max_pages: int = 20
    ) -> list[ProviderBatch]:
        """Recent batches whose metadata contains ``metadata``."""
        ...

    def cancel_batch(self, batch_id: str) -> ProviderBatch:
        """Ask the provider to cancel a batch."""
        ...

    def download_file(self, file_id: str) -> Iterator[bytes]:
        """Stream a file's content."""
        ...

    def find_files(self, filename: str, *, max_pages: int = 5) -> list[str]:
        """Ids of recent batch input files named ``filename``."""
        ...


class StateStore(Protocol):
    """The control plane: runs, chunks and items. Every change is conditional."""

    def create_run(self, record: RunRecord) -> RunRecord:
        """Insert ``record`` unless the run exists; return the stored run."""
        ...

    def load_run(self, run_id: str) -> RunRecord | None:
        """The run, or None."""
        ...

    def set_source(self, run_id: str, identity: JSONObject) -> None:
        """Record the item source's identity the first time it is seen."""
        ...

    def append_items(
        self,
        run_id: str,
        items: Sequence[NewItem],
        *,
        chunks: Sequence[ChunkRecord],
        checkpoint: JSONObject | None,
        lease_owner: str | None = None,
    ) -> None:
        """Insert items, save the touched chunks' progress and the source checkpoint, at once.

        With ``lease_owner``, refuse (``RunLeasedError``) unless that owner holds the lease.
        """
        ...

    def acquire_lease(
        self, run_id: str, owner: str, *, now: datetime, ttl_seconds: float
    ) -> str | None:
        """Take or renew the run's lease; None on success, else who holds it."""
        ...

    def release_lease(self, run_id: str, owner: str) -> None:
        """Give the lease up if ``owner`` holds it."""
        ...

    def set_retention(self, run_id: str, retention: JSONObject) -> None:
        """Record what was exported and pruned."""
        ...

    def chunks_with_pending_items(self, run_id: str) -> set[str]:
        """Chunks still holding the request line of a non-terminal item."""
        ...

    def finish_ingest(self, run_id: str) -> None:
        """Mark that every item of the source is in the store."""
        ...

    def save_chunk(self, chunk: ChunkRecord, *, expected: ChunkState | None) -> bool:
        """Write ``chunk`` if its stored state is ``expected`` (None: insert); return success."""
        ...

    def list_chunks(
        self, run_id: str, states: Collection[ChunkState] | None = None
    ) -> list[ChunkRecord]:
        """Chunks of a run in ``seq`` order, optionally only those in ``states``."""
        ...

    def record_outcomes(
        self, run_id: str, chunk: ChunkRecord, outcomes: Sequence[ItemOutcome]
    ) -> int:
        """Apply outcomes of a collected chunk and mark it collected; return rows changed."""
        ...

    def existing_item_ids(self, run_id: str, item_ids: Sequence[str]) -> set[str]:
        """Which of ``item_ids`` the run already has."""
        ...

    def max_item_seq(self, run_id: str) -> int:
        """Highest item seq of the run, or -1 when it has none."""
        ...

    def next_retry_time(self, run_id: str) -> datetime | None:
        """Earliest time an item waiting for a retry may be resubmitted."""
        ...

    def count_retry(self, run_id: str) -> int:
        """How many items wait for a retry."""
        ...

    def retry_candidates(
        self, run_id: str, *, now: datetime, limit: int, after_seq: int = -1
    ) -> list[RetryCandidate]:
        """Pending items that are in no live chunk and may be resubmitted now."""
        ...

    def assign_retries(
        self, run_id: str, rows: Sequence[tuple[int, int]], *, chunk: ChunkRecord
    ) -> None:
        """Move ``(seq, new_submission)`` rows into ``chunk`` and save its progress, at once."""
        ...

    def queued_items(self, run_id: str, chunk_id: str) -> list[QueuedItem]:
        """Items of ``chunk_id`` still waiting for their result."""
        ...

    def item_attempts(self, run_id: str, seqs: Sequence[int]) -> dict[int, tuple[int, int]]:
        """``seq -> (attempts spent, free resubmits used)`` for the given items."""
        ...

    def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        reason: str | None = None,
        expected: Collection[RunStatus] | None = None,
    ) -> bool:
        """Change the run's status if it is one of ``expected``; return success."""
        ...

    def cancel_pending(self, run_id: str, *, reason: str) -> int:
        """Mark every pending item cancelled; return how many."""
        ...

    def read_results(self, run_id: str, *, after: int, limit: int) -> list[ResultRow]:
        """Terminal items with ``finished_seq > after``, in ``finished_seq`` order."""
        ...

    def item_status(self, run_id: str, item_id: str) -> ResultRow | None:
        """One item by id, terminal or not."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
