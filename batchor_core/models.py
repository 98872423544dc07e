"""Value types: items, jobs, policies, results and statuses.

Everything here is a frozen dataclass or a ``StrEnum`` and does no I/O, so every other
layer can import it freely.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeAlias

from pydantic import BaseModel

from batchor_core.errors import ConfigurationError

__all__ = [
    "BatchItem",
    "BatchJob",
    "ChunkPolicy",
    "Endpoint",
    "EnqueueLimit",
    "ItemError",
    "ItemResult",
    "ItemStatus",
    "JSONObject",
    "JSONValue",
    "Price",
    "RetryPolicy",
    "RunEstimate",
    "RunStatus",
    "RunSummary",
    "Usage",
]

JSONValue: TypeAlias = Any
"""Any value that ``json.dumps`` accepts (the one place ``Any`` stands for JSON)."""

JSONObject: TypeAlias = dict[str, JSONValue]
"""A JSON object."""


class Endpoint(StrEnum):
    """Provider endpoints batchor knows how to build requests for and parse results of."""

    CHAT_COMPLETIONS = "/v1/chat/completions"
    RESPONSES = "/v1/responses"


class RunStatus(StrEnum):
    """Lifecycle of a run. ``completed`` means every item reached a terminal state."""

    INGESTING = "ingesting"
    RUNNING = "running"
    PAUSED = "paused"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the run can no longer change."""
        return self in (RunStatus.COMPLETED, RunStatus.CANCELLED)


class ItemStatus(StrEnum):
    """Lifecycle of one item. ``pending`` covers waiting, in flight and waiting to retry."""

    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Whether the item has its final result."""
        return self is not ItemStatus.PENDING


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One unit of work.

    Attributes:
        item_id: Caller-chosen id, unique within a run (non-empty, at most 512 characters).
        payload: JSON-serialisable data the job's request builder reads.
        metadata: Optional JSON-serialisable data carried through to results and exports.
    """

    item_id: str
    payload: Mapping[str, JSONValue] = field(default_factory=dict)
    metadata: Mapping[str, JSONValue] | None = None


@dataclass(frozen=True, slots=True)
class ChunkPolicy:
    """How requests are packed into provider batches.

    Requests are packed into as few batches as these limits allow; how items arrive
    (ingest slices, sources) never decides batch boundaries.

    Attributes:
        max_requests: Most requests in one batch input file (OpenAI allows 50,000).
        max_bytes: Most bytes in one batch input file (OpenAI allows 200 MB; we keep margin).
        max_inflight_batches: Most batches submitted and not yet collected at once, or None.
    """

    max_requests: int = 50_000
    max_bytes: int = 190_000_000
    max_inflight_batches: int | None = None

    def __post_init__(self) -> None:
        if self.max_requests < 1:
            raise ConfigurationError("ChunkPolicy.max_requests must be at least 1")
        if self.max_bytes < 1024:
            raise ConfigurationError("ChunkPolicy.max_bytes must be at least 1024")
        if self.max_inflight_batches is not None and self.max_inflight_batches < 1:
            raise ConfigurationError("ChunkPolicy.max_inflight_batches must be at least 1 or None")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How failed items are retried.

    Attributes:
        max_attempts: Attempts per item, the first included. Failed lines and invalid
            structured outputs spend an attempt; requests that never ran (expired or
            cancelled batch, token limit) do not.
        backoff_seconds: Delay before failed items are resubmitted in a new batch.
        max_free_resubmits: Bound on resubmissions that do not spend an attempt.
    """

    max_attempts: int = 3
    backoff_seconds: float = 0.0
    max_free_resubmits: int = 5

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError("RetryPolicy.max_attempts must be at least 1")
        if self.backoff_seconds < 0:
            raise ConfigurationError("RetryPolicy.backoff_seconds must not be negative")
        if self.max_free_resubmits < 0:
            raise ConfigurationError("RetryPolicy.max_free_resubmits must not be negative")


@dataclass(frozen=True, slots=True)
class EnqueueLimit:
    """How many prompt tokens may be enqueued at the provider for one model at once.

    OpenAI fails a whole batch with ``token_limit_exceeded`` when the input tokens of a
    model's batches in progress (for the organisation) would exceed its tier's limit.
    With a limit set, batchor submits a batch only while the estimated tokens of every
    batch in flight for that model, across all runs in the same store (processes and
    machines alike), plus the new one stay within ``tokens``; batches are packed to fit.

    Attributes:
        tokens: The limit in (estimated) input tokens; use your tier's limit, or less to
            leave room for other users of the organisation.
    """

    tokens: int

    def __post_init__(self) -> None:
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or self.tokens < 1:
            raise ConfigurationError("EnqueueLimit.tokens must be a positive integer")


def is_amount(value: object) -> bool:
    """Whether ``value`` is a non-negative finite number (a rate or a sum of USD).

    Booleans are not amounts, and neither are NaN or infinity: a NaN cap never stops a
    run, an infinite one is not JSON, and either as a price makes every cost meaningless.
    """
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


@dataclass(frozen=True, slots=True)
class Price:
    """What a model costs, in USD per one million tokens, at standard (non-batch) rates.

    Attributes:
        input: Uncached input tokens.
        output: Output tokens (reasoning tokens included, as the provider bills them).
        cached_input: Cached input tokens (None: billed as ``input``).
        batch_discount: Fraction taken off every rate for Batch API requests (OpenAI:
            0.5, half price).
    """

    input: float
    output: float
    cached_input: float | None = None
    batch_discount: float = 0.5

    def __post_init__(self) -> None:
        rates = (self.input, self.output, 0.0 if self.cached_input is None else self.cached_input)
        if not all(is_amount(r) for r in rates):
            raise ConfigurationError(
                "Price rates must be non-negative finite numbers (USD per 1M tokens)"
            )
        if not 0.0 <= self.batch_discount < 1.0:
            raise ConfigurationError("Price.batch_discount must be in [0, 1)")

    def cost(self, usage: Usage) -> float:
        """The batch cost in USD of ``usage``."""
        cached = min(usage.cached_input_tokens, usage.input_tokens)
        cached_rate = self.input if self.cached_input is None else self.cached_input
        total = (
            (usage.input_tokens - cached) * self.input
            + cached * cached_rate
            + usage.output_tokens * self.output
        )
        return total * (1.0 - self.batch_discount) / 1_000_000


RequestBuilder: TypeAlias = Callable[[BatchItem], Mapping[str, JSONValue]]
PromptBuilder: TypeAlias = Callable[[BatchItem], str]


@dataclass(frozen=True)
class BatchJob:
    """How items become provider requests, and how results are read back.

    Exactly one of ``build_request`` and ``build_prompt`` is given.

    Attributes:
        model: Provider model name, written into every request body.
        endpoint: ``/v1/chat/completions`` or ``/v1/responses``.
        build_request: Returns the request body for an item (``messages`` for chat,
            ``input`` for responses); ``model``, ``request_options`` and the structured
            output format are added for you. The run's fingerprint covers the builder's
            code; a callable object is identified by its class and, when it has a
            ``fingerprint()`` method, by the string that returns (its parameters).
        build_prompt: Shortcut: returns the user message text for an item.
        output_model: Pydantic v2 model the output must validate against, or None for text.
        request_options: Extra body fields for every request (``temperature``, ...).
        chunk_policy: How requests are packed into batches.
        retry_policy: How failed items are retried.
        completion_window: Provider completion window.
        enqueue_limit: Enqueued-token limit for this job's model; overrides the provider
            config's ``enqueue_limits`` (see :class:`EnqueueLimit`).
        max_cost_usd: Pause the run before a submission would take its cost (actual so
            far, plus the estimate of batches in flight and of the next one) above this.
            Not part of the job's fingerprint: raise it with ``Run.set_max_cost()`` or
            ``resume(max_cost_usd=...)``.
    """

    model: str
    endpoint: str = Endpoint.CHAT_COMPLETIONS.value
    build_request: RequestBuilder | None = None
    build_prompt: PromptBuilder | None = None
    output_model: type[BaseModel] | None = None
    request_options: Mapping[str, JSONValue] | None = None
    chunk_policy: ChunkPolicy = field(default_factory=ChunkPolicy)
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    completion_window: str = "24h"
    enqueue_limit: EnqueueLimit | None = None
    max_cost_usd: float | None = None

    def __post_init__(self) -> None:
        if self.max_cost_usd is not None and not is_amount(self.max_cost_usd):
            raise ConfigurationError(
                "BatchJob.max_cost_usd must be a non-negative finite number of USD (or None)"
            )
        if not self.model:
            raise ConfigurationError("BatchJob.model must be a non-empty model name")
        if self.endpoint not in {e.value for e in Endpoint}:
            known = ", ".join(e.value for e in Endpoint)
            raise ConfigurationError(
                f"BatchJob.endpoint {self.endpoint!r} is not supported; use {known}"
            )
        if (self.build_request is None) == (self.build_prompt is None):
            raise ConfigurationError(
                "BatchJob needs exactly one of build_request= or build_prompt="
            )
        if self.output_model is not None and not (
            isinstance(self.output_model, type) and issubclass(self.output_model, BaseModel)
        ):
            raise ConfigurationError(
                "BatchJob.output_model must be a pydantic.BaseModel subclass or None"
            )
        if self.output_model is not None:
            from batchor_core.strict_schema import strict_schema_problem

            problem = strict_schema_problem(self.output_model)
            if problem is not None:
                raise ConfigurationError(
                    f"BatchJob.output_model cannot be a strict OpenAI structured output: {problem}"
                )


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage reported by the provider.

    Attributes:
        input_tokens: Input (prompt) tokens, cached ones included.
        output_tokens: Output tokens, reasoning ones included.
        cached_input_tokens: Input tokens served from the prompt cache.
        reasoning_tokens: Output tokens spent on reasoning.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class RunEstimate:
    """What a run would enqueue and cost, estimated before anything is submitted.

    Attributes:
        requests: Requests the items make (items whose request cannot be built are not
            counted).
        input_tokens: Estimated input tokens of all requests.
        output_tokens: Estimated output tokens (the jobs' max output tokens when set,
            else as many as the input).
        cost_usd: Estimated batch cost in USD, or None when the model has no price.
        cost_note: Where the price came from, or why there is none.
        enqueue_limit: The enqueued-token limit that applies, if any.
        waves: At least how many rounds of batches the limit forces (None: no limit).
        rejected: Items a run would fail at once, not counted in ``requests``: their
            request cannot be built (the builder raises, the payload is not a JSON
            object), their id is empty or too long, or a source cannot read their row.
            (A duplicate id is not looked for: that would hold every id in memory.)
        first_rejection: Why the first of them fails (None: none do).
    """

    requests: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    cost_note: str
    enqueue_limit: int | None = None
    waves: int | None = None
    rejected: int = 0
    first_rejection: str | None = None


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why an item attempt failed.

    Attributes:
        code: Short machine-readable reason (``invalid_json``, ``schema_mismatch``,
            ``refusal``, ``length``, ``provider_error``, ``batch_failed``, ...).
        message: Human-readable detail.
    """

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The terminal result of one item.

    Attributes:
        item_id: The item's id.
        status: ``completed``, ``failed`` or ``cancelled``.
        output: The parsed output (the job's ``output_model`` instance, or ``str`` for text
            jobs; a plain ``dict`` when the run was rehydrated without its output model).
        error: The last error, for failed and cancelled items.
        attempts: Attempts spent.
        usage: Tokens used by the successful attempt, when known.
        metadata: The item's metadata.
        cursor: Position to pass as ``after=`` to read only later results.
    """

    item_id: str
    status: ItemStatus
    output: BaseModel | str | JSONValue | None
    error: ItemError | None
    attempts: int
    usage: Usage | None = None
    metadata: Mapping[str, JSONValue] | None = None
    cursor: int = 0


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Counts and status of a run, cheap to read at any size.

    Attributes:
        run_id: The run's id.
        status: The run's status.
        status_reason: Why the run is paused or cancelled, when it is.
        total_items: Items ingested so far.
        pending_items: Items without a terminal result yet.
        completed_items: Items with an output.
        failed_items: Items whose attempts ran out (or that were rejected on ingest).
        cancelled_items: Items cancelled before they finished.
        in_flight_items: Items inside batches the provider is working on.
        batches_total: Provider batches prepared (submitted or not).
        batches_in_flight: Provider batches submitted and not yet collected.
        ingest_complete: Whether every item of the source has been read.
        usage: Tokens used so far.
        created_at: When the run started.
        updated_at: When the run last changed.
        owner: Who owns the run (as given to ``start(owner=...)``), for example a
            Dagster asset and partition.
        model: The job's model.
        endpoint: The job's endpoint.
        batch_ids: Provider batch ids created for the run so far, oldest first.
        collected_by: Who turned the finished run into its downstream result (see
            :meth:`Run.mark_collected`), or None.
        collected_at: When that happened.
        last_error: The latest provider error of a batch that is currently held back by
            errors (None when nothing is stalled): why the run is not moving.
        stalled_chunks: Batches currently held back by provider errors (backing off, or
            waiting for ``resume()`` when the run was paused for them).
        waiting_reason: Why a running run is not submitting its next batch although it
            could (waiting for enqueued-token budget), or None.
        cost: What the run has cost so far in USD (batch rates), or None when the model
            has no known price (see ``cost_note``).
        estimated_cost: ``cost`` plus an estimate of the batches not yet collected, or
            None without a price.
        cost_note: Why ``cost`` is None, or where its price came from.
        max_cost_usd: The run's cost cap, if any.
    """

    run_id: str
    status: RunStatus
    status_reason: str | None
    total_items: int
    pending_items: int
    completed_items: int
    failed_items: int
    cancelled_items: int
    in_flight_items: int
    batches_total: int
    batches_in_flight: int
    ingest_complete: bool
    usage: Usage
    created_at: datetime
    updated_at: datetime
    owner: Mapping[str, JSONValue] | None = None
    model: str | None = None
    endpoint: str | None = None
    batch_ids: tuple[str, ...] = ()
    collected_by: str | None = None
    collected_at: datetime | None = None
    last_error: str | None = None
    stalled_chunks: int = 0
    waiting_reason: str | None = None
    cost: float | None = None
    estimated_cost: float | None = None
    cost_note: str | None = None
    max_cost_usd: float | None = None

    @property
    def is_finished(self) -> bool:
        """Whether the run is completed or cancelled."""
        return self.status.is_terminal
