"""Budgets of a run: its enqueued-token limit, and what its batches cost or will cost.

Pure functions over stored records; the stepper applies them before each submission.

- The **enqueued-token limit** of a run's model is the job's ``enqueue_limit`` (stored
  with the run's limits) or else the provider config's ``enqueue_limits[model]``. After
  ``n`` batches in a row rejected with ``token_limit_exceeded`` the run draws on
  ``limit / 2**n`` only (its *effective* limit), until a batch is accepted again.
- The **estimated cost** of a batch not yet collected is its estimated input tokens at
  the input rate plus an output estimate at the output rate. The output estimate per
  request is the request's max output tokens when the job sets one
  (``max_completion_tokens``, ``max_tokens`` or ``max_output_tokens``), else the run's
  average output per finished item so far, else as many tokens as the input (a guess
  that errs high for classification-style jobs and is corrected by the first results).
"""

from __future__ import annotations

from collections.abc import Iterable

from batchor_core.models import JSONObject, Price, Usage
from batchor_core.ports import BatchProvider, ChunkRecord, RunRecord
from batchor_core.pricing import cost_of

__all__ = [
    "MAX_TOKEN_LIMIT_STRIKES",
    "chunk_cost_estimate",
    "cost_estimate",
    "effective_limit",
    "enqueue_limit",
    "limits_for",
    "output_per_request",
]

MAX_TOKEN_LIMIT_STRIKES = 4
"""Batches rejected in a row for the token limit before the run pauses with a reason."""

_MAX_OUTPUT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def limits_for(enqueue_tokens: int | None, max_cost_usd: float | None) -> JSONObject:
    """The stored form of a job's budgets: the budgets in force, and under ``declared``
    the job's own (so a cap raised on the run survives starting it again with the same
    job, while a job changed in code takes effect)."""
    limits: JSONObject = {}
    if enqueue_tokens is not None:
        limits["enqueue_tokens"] = enqueue_tokens
    if max_cost_usd is not None:
        limits["max_cost_usd"] = float(max_cost_usd)
    return {**limits, "declared": dict(limits)}


def enqueue_limit(run: RunRecord, provider: BatchProvider) -> int | None:
    """The run's enqueued-token limit (job first, then provider config), or None."""
    stored = (run.limits or {}).get("enqueue_tokens")
    if isinstance(stored, int):
        return stored
    model = run.job_spec.get("model")
    return provider.enqueue_limit(str(model)) if model else None


def effective_limit(limit: int, strikes: int) -> int:
    """The limit halved once per rejection in a row (at least 1)."""
    return max(1, limit >> max(0, strikes))


def output_per_request(run: RunRecord, usage: Usage) -> int | None:
    """Expected output tokens per request (see the module docstring); None: guess from
    the input."""
    options = run.job_spec.get("request_options") or {}
    for key in _MAX_OUTPUT_KEYS:
        value = options.get(key)
        if isinstance(value, int) and value > 0:
            return value
    finished = run.completed_items + run.failed_items
    if finished > 0 and usage.output_tokens > 0:
        return -(-usage.output_tokens // finished)
    return None


def chunk_cost_estimate(
    chunks: Iterable[ChunkRecord], price: Price | None, per_request_output: int | None
) -> float | None:
    """Estimated batch cost of ``chunks`` in USD (None without a price)."""
    tokens = requests = 0
    for chunk in chunks:
        tokens += chunk.est_tokens
        requests += chunk.request_count
    return cost_estimate(tokens, requests, price, per_request_output)


def cost_estimate(
    est_tokens: int, requests: int, price: Price | None, per_request_output: int | None
) -> float | None:
    """Estimated batch cost in USD of ``requests`` requests of ``est_tokens`` input tokens."""
    output = est_tokens if per_request_output is None else per_request_output * requests
    return cost_of(Usage(est_tokens, output), price)
