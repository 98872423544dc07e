"""Estimating a run before it starts: requests, tokens, enqueued-token waves and cost."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from batchor_core import jsoncodec
from batchor_core.ingest import IterableSource, as_source, body_builder, id_problem, not_an_item
from batchor_core.jobspec import job_spec, request_spec
from batchor_core.models import BatchItem, BatchJob, RunEstimate, Usage
from batchor_core.packing import custom_id, request_line
from batchor_core.ports import BatchProvider, ItemSource
from batchor_core.pricing import cost_of
from batchor_core.tokens import BYTES_PER_TOKEN, estimate_line_tokens, line_estimator

__all__ = ["estimate_run"]

_MAX_OUTPUT_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def estimate_run(
    job: BatchJob, items: Iterable[BatchItem] | ItemSource, provider: BatchProvider
) -> RunEstimate:
    """Build each request as a run would (nothing is stored or sent) and estimate it.

    Items whose request cannot be built (the builder raises, the payload is not a JSON
    object) and rows a source cannot read are counted apart, as a run would fail them.

    Raises:
        InvalidItemError: ``items`` holds something other than :class:`BatchItem`.
    """
    spec = request_spec(job_spec(job, provider)[0])
    endpoint = spec.endpoint.encode()
    shape, dumps, estimate = provider.shape_body, jsoncodec.dumps, line_estimator()
    build = body_builder(job)
    # The default estimate needs only the line's length: count it without building it.
    framing = len(request_line("", endpoint, b""))
    by_length = estimate is estimate_line_tokens
    requests = tokens = rejected = 0
    first_rejection: str | None = None
    for seq, item in enumerate(_items_of(items)):
        if isinstance(item, str):  # why a source row could not be read
            rejected += 1
            first_rejection = first_rejection or item
            continue
        try:
            if not isinstance(item.payload, Mapping):
                raise TypeError(
                    f"payload is a {type(item.payload).__name__}, not a JSON object (a dict)"
                )
            body = dumps(shape(spec, build(item)))
        except Exception as exc:  # a user's builder may raise anything
            rejected += 1
            first_rejection = first_rejection or f"item {item.item_id!r}: {exc!r}"
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
        rejected=rejected,
        first_rejection=first_rejection,
    )


def _items_of(items: Iterable[BatchItem] | ItemSource) -> Iterator[BatchItem | str]:
    """The items of a plain iterable or an item source, read as a run reads them (a
    slice at a time); in the place of an item a run would fail before building its
    request (a row the source cannot read, an empty or too long id), why."""
    source = as_source(items)
    if isinstance(source, IterableSource):
        # Read directly: a run's resume digest of every item is no use to an estimate.
        yield from _checked(items, 0)  # type: ignore[arg-type]
        return
    read = 0
    for piece in source.read_slices(None, slice_size=5_000):
        yield from _checked(piece.items, read)
        read += len(piece.items)
        for row in piece.rejected:
            yield f"item {row.item_id!r}: {row.error}"


def _checked(items: Iterable[BatchItem], first: int) -> Iterator[BatchItem | str]:
    for position, item in enumerate(items, first):
        if not isinstance(item, BatchItem):
            raise not_an_item(item, position)
        problem = id_problem(str(item.item_id))
        if problem is not None:
            yield f"item {str(item.item_id)[:80]!r}: {problem.message}"
            continue
        yield item
