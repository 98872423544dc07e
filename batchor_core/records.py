"""Records that cross the ports: runs, chunks, items and provider data as the core sees them.

Frozen dataclasses, named tuples (the records built once per result line) and enums with
no I/O, like :mod:`batchor_core.models`, but internal: adapters and the runner exchange
them; users see :mod:`batchor_core.models` types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from batchor_core.models import BatchItem, ItemError, ItemStatus, JSONObject, RunStatus, Usage

__all__ = [
    "UNSUBMITTED_CHUNK_STATES",
    "BudgetHolder",
    "ChunkRecord",
    "ChunkState",
    "ChunkStats",
    "ItemOutcome",
    "LeaseGrant",
    "NewItem",
    "ParsedLine",
    "ProviderBatch",
    "QueuedItem",
    "RejectedRow",
    "RequestSpec",
    "Reservation",
    "ResultColumns",
    "ResultRow",
    "RetryCandidate",
    "RunRecord",
    "SourceSlice",
]


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


UNSUBMITTED_CHUNK_STATES = frozenset(
    {ChunkState.SEALED, ChunkState.UPLOADING, ChunkState.UPLOADED, ChunkState.SUBMITTING}
)


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """The answer to a lease request.

    Attributes:
        token: The fencing token while the caller holds the lease, else None. It changes
            every time the lease changes hands, so a process can tell that it lost the
            lease even if it got it back later.
        holder: Who holds the lease when the caller does not.
    """

    token: int | None
    holder: str = ""


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
    collected_by: str | None = None
    collected_at: datetime | None = None
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    limits: JSONObject | None = None
    """Budgets outside the job's fingerprint (``{"max_cost_usd": 12.5}``)."""
    waiting_reason: str | None = None
    token_limit_strikes: int = 0
    """Batches rejected in a row with ``token_limit_exceeded``."""

    @property
    def usage(self) -> Usage:
        """The run's token totals."""
        return Usage(
            self.input_tokens, self.output_tokens, self.cached_input_tokens, self.reasoning_tokens
        )


@dataclass(frozen=True, slots=True)
class ChunkStats:
    """Per-run totals over its chunks, read in one query for many runs."""

    batches_total: int = 0
    batches_in_flight: int = 0
    in_flight_items: int = 0
    batch_ids: tuple[str, ...] = ()
    stalled_chunks: int = 0
    last_error: str | None = None
    open_est_tokens: int = 0
    """Estimated input tokens of chunks not yet collected."""
    open_requests: int = 0
    """Requests in chunks not yet collected."""


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
    first_error_at: datetime | None = None
    """When the chunk's current streak of provider errors began (None: not stalled)."""
    est_tokens: int = 0
    """Estimated input tokens of the chunk's requests (see :mod:`batchor_core.tokens`)."""
    model: str | None = None
    """The model of the chunk's requests (the key of the enqueued-token budget)."""


@dataclass(frozen=True, slots=True)
class BudgetHolder:
    """A run whose batches in flight hold part of a model's enqueued-token budget.

    Attributes:
        run_id: The run.
        status: Its status (``running``, ``paused``, ``cancelling`` ...).
        tokens: Estimated tokens of its batches in flight for the model.
        batches: How many of its batches are in flight.
        advancing: Whether a process holds its lease now (only a process advancing the
            run collects its batches, which is what releases their tokens).
        last_advanced: When a process last gave its lease up (None: unknown, or it is
            advancing now).
    """

    run_id: str
    status: str
    tokens: int
    batches: int
    advancing: bool
    last_advanced: datetime | None = None


@dataclass(frozen=True, slots=True)
class Reservation:
    """The answer to a request for enqueued-token budget (see ``StateStore.reserve_submit``).

    Attributes:
        granted: The chunk was moved to ``submitting`` (its tokens now count as in flight).
        in_flight_tokens: Estimated tokens in flight for the model before this chunk, over
            every run in the store.
    """

    granted: bool
    in_flight_tokens: int


class NewItem(NamedTuple):
    """An item row to insert at ingest.

    ``status`` is ``pending`` for a normal item; a row rejected by its source is inserted
    already ``failed`` with ``error`` set, so it is never lost.

    A named tuple, not a dataclass: ingest builds one per item (millions per run), and
    its first five fields are the bound columns of the store's insert, in that order.
    """

    seq: int
    item_id: str
    payload_json: str
    metadata_json: str | None
    chunk_id: str | None
    status: ItemStatus = ItemStatus.PENDING
    error: ItemError | None = None


class ItemOutcome(NamedTuple):
    """What one result line (or its absence) means for an item.

    ``status`` is the item's next status: terminal, or ``pending`` to retry.
    The update only applies while the item is still pending in the same submission,
    so replaying a collection after a crash changes nothing. A named tuple, not a
    dataclass: one is built for every line collected, and a tuple costs a third.
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


class ResultRow(NamedTuple):
    """An item's result columns as stored, in the order the store selects them.

    A tuple, not an object per field: ``results()`` reads rows by the thousand, and the
    store hands over its driver's tuples as they are. :class:`~batchor_core.Run` turns
    each into the public :class:`~batchor_core.models.ItemResult`.
    """

    item_id: str
    status: str
    """An :class:`~batchor_core.models.ItemStatus` value (internal states read as
    ``pending``)."""
    output_json: str | None
    error_code: str | None
    error_message: str | None
    attempts: int
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None
    reasoning_tokens: int | None
    metadata_json: str | None
    finished_seq: int
    """The result's cursor (0 while the item is pending)."""


@dataclass(frozen=True, slots=True)
class ResultColumns:
    """A page of terminal items as columns (parallel sequences), in input (``seq``) order.

    What columnar readers want from the store: no per-row objects, statuses as stored
    text. A column not asked for (see ``fields`` of ``read_result_columns``) is None.
    """

    item_id: Sequence[str]
    status: Sequence[str] | None
    output_json: Sequence[str | None] | None
    error_code: Sequence[str | None] | None
    error_message: Sequence[str | None] | None
    attempts: Sequence[int] | None
    input_tokens: Sequence[int | None] | None
    output_tokens: Sequence[int | None] | None
    metadata_json: Sequence[str | None] | None
    finished_seq: Sequence[int] | None
    payload_json: Sequence[str] | None
    last_seq: int
    """The last row's ``seq``: pass it as ``after_seq`` for the next page."""

    def __len__(self) -> int:
        return len(self.item_id)


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


class ParsedLine(NamedTuple):
    """One line of a provider output or error file (a named tuple: one per line).

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
