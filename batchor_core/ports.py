"""Ports: the small protocols the runner talks to.

Adapters (``storage/``, ``artifacts/``, ``providers/``, ``sources/``) implement these;
the runner depends on nothing else. Port methods are named for the transitions they make.
The records that cross them live in :mod:`batchor_core.records` and are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable

from batchor_core.models import JSONObject, Price, RunStatus
from batchor_core.records import (
    UNSUBMITTED_CHUNK_STATES,
    BudgetHolder,
    ChunkRecord,
    ChunkState,
    ChunkStats,
    ItemOutcome,
    LeaseGrant,
    NewItem,
    ParsedLine,
    ProviderBatch,
    QueuedItem,
    RejectedRow,
    RequestSpec,
    Reservation,
    ResultColumns,
    ResultRow,
    RetryCandidate,
    RunRecord,
    SourceSlice,
)

__all__ = [
    "UNSUBMITTED_CHUNK_STATES",
    "ArtifactStore",
    "ArtifactWriter",
    "BatchProvider",
    "BodyEncoding",
    "BudgetHolder",
    "ChunkRecord",
    "ChunkState",
    "ChunkStats",
    "Clock",
    "ItemOutcome",
    "ItemSource",
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
    "StateStore",
]


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
        """Open the unpublished file ``key`` for appending, cut to ``truncate_to`` bytes first.

        Raises :class:`ArtifactError` if the file is shorter than ``truncate_to`` (it lost
        committed bytes); it never pads a file.
        """
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


@runtime_checkable
class BodyEncoding(Protocol):
    """What a :class:`BatchProvider` may also offer: fast encoding of a run's bodies."""

    def body_encoder(self, spec: RequestSpec) -> Callable[[Mapping[str, object]], bytes]:
        """A function of a user-built body returning the same bytes as
        ``jsoncodec.dumps(shape_body(spec, body))`` (and raising the same errors), with
        what every body of ``spec`` shares prepared once. Ingest calls it once per item."""
        ...


class BatchProvider(Protocol):
    """A batch API: the only thing that talks to the provider."""

    def preflight(self) -> None:
        """Fail fast, without network calls, on configuration that can never work."""
        ...

    def output_schema(self, output_model: type) -> tuple[str, JSONObject]:
        """The strict JSON schema name and body the provider enforces for ``output_model``."""
        ...

    def shape_body(self, spec: RequestSpec, body: Mapping[str, object]) -> JSONObject:
        """Complete a user-built request body: model, options, structured output format."""
        ...

    def enqueue_limit(self, model: str) -> int | None:
        """The enqueued-token limit configured for ``model``, or None (no limit)."""
        ...

    def price(self, model: str) -> tuple[Price | None, str]:
        """The price of ``model`` (None: unknown) and a note on where it came from."""
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

    def read(self) -> AbstractContextManager[None]:
        """A block whose reads (by this thread) come from one snapshot and wait for no
        writer; a write inside it raises ``StorageError``. Blocks nest."""
        ...

    def load_run(self, run_id: str) -> RunRecord | None:
        """The run, or None."""
        ...

    def list_run_ids(self) -> list[str]:
        """Every run id, oldest first."""
        ...

    def list_runs(
        self,
        *,
        statuses: Collection[RunStatus] | None = None,
        collected: bool | None = None,
        run_ids: Collection[str] | None = None,
        collected_after: datetime | None = None,
    ) -> list[RunRecord]:
        """Runs (oldest first), optionally only those in ``statuses``, collected or not
        (or collected since ``collected_after``), or with the given ids; each record
        carries its collection marker."""
        ...

    def chunk_stats(self, run_ids: Collection[str]) -> dict[str, ChunkStats]:
        """Batch counts and provider batch ids per run, for many runs at once."""
        ...

    def mark_collected(
        self, run_id: str, by: str, *, now: datetime, replace: str | None = None
    ) -> str:
        """Record that ``by`` collected the run, unless someone else already did; with
        ``replace``, take the marker over from that collector. Return who holds it now."""
        ...

    def release_collected(self, run_id: str, by: str) -> bool:
        """Remove the run's collection marker if ``by`` holds it; return whether it did."""
        ...

    def error_counts(self, run_id: str) -> dict[str, int]:
        """How many failed or cancelled items carry each error code."""
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
    ) -> LeaseGrant:
        """Take or renew the run's lease; the grant carries the fencing token or the holder."""
        ...

    def release_lease(self, run_id: str, owner: str) -> None:
        """Give the lease up if ``owner`` holds it."""
        ...

    def break_lease(self, run_id: str) -> str | None:
        """Clear the run's lease whoever holds it (fencing it out); return the old holder."""
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

    def in_flight_tokens(self, model: str) -> int:
        """Estimated tokens of ``model``'s chunks in ``submitting`` or ``submitted``, over
        every run in the store."""
        ...

    def budget_holders(self, model: str) -> list[BudgetHolder]:
        """The runs whose chunks make up :meth:`in_flight_tokens` of ``model``, most
        tokens first."""
        ...

    def reserve_submit(
        self,
        chunk: ChunkRecord,
        *,
        expected: ChunkState,
        limit: int | None,
        full_limit: int | None = None,
    ) -> Reservation:
        """Save ``chunk`` (moving to ``submitting``) if its stored state is ``expected``
        and its ``est_tokens`` fit the model's enqueued-token budget, atomically.

        Fits: in-flight tokens (every run, this model) plus the chunk's stay within
        ``limit``, or nothing is in flight and the chunk is within ``full_limit``. The
        check and the save are one transaction serialised per model across processes
        (SQLite: the write lock; Postgres: an advisory lock keyed by the model).
        """
        ...

    def set_waiting(self, run_id: str, reason: str | None) -> None:
        """Record why the running run is not submitting (None: it is not waiting)."""
        ...

    def set_token_limit_strikes(self, run_id: str, strikes: int) -> None:
        """Record how many batches in a row the provider rejected for the token limit."""
        ...

    def set_limits(self, run_id: str, limits: JSONObject) -> None:
        """Replace the run's budgets (``{"max_cost_usd": ...}``)."""
        ...

    def record_outcomes(
        self,
        run_id: str,
        chunk: ChunkRecord,
        outcomes: Sequence[ItemOutcome],
        *,
        expected: ChunkState = ChunkState.SUBMITTED,
        final: bool = True,
        lease_owner: str | None = None,
    ) -> int:
        """Apply outcomes of a chunk in state ``expected``; return rows changed.

        With ``final`` the chunk is saved as given (collected) in the same transaction;
        without, it must still be in ``expected``. Either way nothing changes (0) when the
        chunk is no longer in ``expected``. With ``lease_owner``, refuse
        (``RunLeasedError``) unless that owner holds the run's lease.
        """
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

    def read_result_columns(
        self,
        run_id: str,
        *,
        after_seq: int,
        limit: int,
        status: str | None = None,
        finished_after: int = 0,
        fields: Collection[str] | None = None,
    ) -> ResultColumns:
        """Terminal items with ``seq > after_seq`` (and ``finished_seq > finished_after``,
        stored status ``status`` if given) as columns, in ``seq`` order.

        ``fields`` names the :class:`ResultColumns` fields to read (default: all but
        ``payload_json``); ``item_id`` is always read.
        """
        ...

    def item_status(self, run_id: str, item_id: str) -> ResultRow | None:
        """One item by id, terminal or not."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...
