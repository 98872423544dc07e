"""Estimating a run before it starts: requests, tokens, enqueued-token waves and cost."""

from __future__ import annotations

from collections.abc import Iterable

from batchor_core import jsoncodec
from batchor_core.ingest import body_builder
from batchor_core.jobspec import job_spec, request_spec
from batchor_core.models import BatchItem, BatchJob, RunEstimate, Usage
from batchor_core.packing import custom_id, request_line
from batchor_core.ports import BatchProvider
from batchor_core.pricing import cost_of
from batchor_core.tokens import BYTES_PER_TOKEN, estimate_line_tokens, line_estimator

__all__ = ["estimate_run"]

_MAX_OUTPUT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def estimate_run(job: BatchJob, items: Iterable[BatchItem], provider: BatchProvider) -> RunEstimate:
    """Build each request as a run would (nothing is stored or sent) and estimate it."""
    spec = request_spec(job_spec(job, provider)[0])
    endpoint = spec.endpoint.encode()
    shape, dumps, estimate = provider.shape_body, jsoncodec.dumps, line_estimator()
    build = body_builder(job)
    # The default estimate needs only the line's length: count it without building it.
    framing = len(request_line("", endpoint, b""))
    by_length = estimate is estimate_line_tokens
    requests = tokens = 0
    for seq, item in enumerate(items):
        try:
            body = dumps(shape(spec, build(item)))
        except Exception:
            continue
        if by_length:
            size = framing + len(body) + len(str(seq)) + 3  # custom_id "i<seq>s1"
            tokens += (size + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN
        else:
            tokens += estimate(request_line(custom_id(seq, 1), endpoint, body))
        requests += 1
    per_request = next(
        (
            v
            for k in _MAX_OUTPUT_KEYS
            if isinstance(v := spec.request_options.get(k), int) and v > 0
        ),
        None,
    )
    output = per_request * requests if per_request is not None else tokens
    price, note = provider.price(job.model)
    limit = (
        job.enqueue_limit.tokens
        if job.enqueue_limit is not None
        else provider.enqueue_limit(job.model)
    )
    return RunEstimate(
        requests=requests,
        input_tokens=tokens,
        output_tokens=output,
        cost_usd=cost_of(Usage(tokens, output), price),
        cost_note=note,
        enqueue_limit=limit,
        waves=-(-tokens // limit) if limit else None,
    )
