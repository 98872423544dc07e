"""Ingest: read items from a source, write request lines into chunks, commit in slices.

Each slice commits its items, the progress of the chunks they went into and the source
checkpoint in one transaction; lines are fsynced before that commit. A crash mid-slice
therefore loses nothing and duplicates nothing: the resumed ingest starts after the last
committed checkpoint and the open chunk file is cut back to its committed size.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import orjson

from batchor_core import failpoints, jsoncodec, tokens
from batchor_core.budget import enqueue_limit
from batchor_core.errors import InvalidItemError, SourceChangedError, SourceError
from batchor_core.jobspec import chunk_policy
from batchor_core.lease import LeaseKeeper
from batchor_core.models import (
    BatchItem,
    BatchJob,
    Endpoint,
    ItemError,
    ItemStatus,
    JSONObject,
    RunStatus,
)
from batchor_core.packing import ChunkPacker, custom_id, request_line
from batchor_core.ports import (
    ArtifactStore,
    BatchProvider,
    ChunkState,
    Clock,
    ItemSource,
    NewItem,
    RequestSpec,
    RunRecord,
    SourceSlice,
    StateStore,
)

__all__ = ["Ingestor", "IterableSource", "as_source", "user_body"]

log = logging.getLogger("batchor.ingest")

MAX_ITEM_ID_LENGTH = 512
_STOPPED = frozenset({RunStatus.CANCELLING, RunStatus.CANCELLED})


class IterableSource:
    """Any iterable of :class:`BatchItem` as a source; its checkpoint is a count and a digest.

    Resuming re-iterates the same iterable and skips what was already committed, so pass
    the same items in the same order when resuming a run. The checkpoint carries a
    running sha256 of the items' ids, payloads and metadata, so different items are
    refused (:class:`SourceChangedError`) instead of silently mixed with the old ones.
    """

    def __init__(self, items: Iterable[BatchItem]) -> None:
        self._items = items

    def identity(self) -> JSONObject:
        """Iterables have no content identity of their own."""
        return {"kind": "iterable"}

    def read_slices(
        self, checkpoint: JSONObject | None, *, slice_size: int
    ) -> Iterator[SourceSlice]:
        """Yield slices of items after ``checkpoint['consumed']`` items."""
        consumed = int((checkpoint or {}).get("consumed", 0))
        feed = _feeder(checkpoint)
        digest = hashlib.sha256()
        iterator = iter(self._items)
        for item in itertools.islice(iterator, consumed):
            feed(digest, item)
        _check_digest(checkpoint, digest, consumed)
        while True:
            batch = list(itertools.islice(iterator, slice_size))
            if not batch:
                return
            for item in batch:
                if not isinstance(item, BatchItem):
                    raise InvalidItemError(
                        f"items must be BatchItem objects, got {type(item).__name__} "
                        f"at position {consumed}"
                    )
                feed(digest, item)
            consumed += len(batch)
            yield SourceSlice(
                items=batch,
                checkpoint={
                    "consumed": consumed,
                    "digest": digest.hexdigest(),
                    "digest_codec": _codec(checkpoint),
                },
            )

    def check_complete(self, checkpoint: JSONObject | None) -> None:
        """Check that these are exactly the items a finished ingest read (reads them all).

        Raises:
            SourceChangedError: The items differ from those the checkpoint was taken on.
        """
        feed = _feeder(checkpoint)
        digest = hashlib.sha256()
        count = 0
        for item in self._items:
            feed(digest, item)
            count += 1
        if count != int((checkpoint or {}).get("consumed", count)):
            raise SourceChangedError(
                f"the items differ from those the run read: {count} items now, "
                f"{(checkpoint or {}).get('consumed')} then"
            )
        _check_digest(checkpoint, digest, count)


def _codec(checkpoint: JSONObject | None) -> str:
    """How the run's item digest encodes items: a run keeps the codec it started with
    (checkpoints written before ``digest_codec`` existed used the standard library)."""
    if checkpoint and "digest" in checkpoint:
        return str(checkpoint.get("digest_codec", "json"))
    return "orjson"


def _feeder(checkpoint: JSONObject | None) -> Callable[[Any, object], None]:
    return _feed_item_json if _codec(checkpoint) == "json" else _feed_item


def _feed_item(digest: Any, item: object) -> None:
    """Add one item to the digest: sorted-key JSON by orjson (ten times the standard
    library's speed); an item orjson refuses (an integer wider than 64 bits, a lone
    surrogate) is encoded by the standard library, the same way every time."""
    if isinstance(item, BatchItem):
        try:
            canonical = orjson.dumps(
                [item.item_id, dict(item.payload), item.metadata],
                option=orjson.OPT_SORT_KEYS,
                default=repr,
            )
        except TypeError:
            _feed_item_json(digest, item)
            return
        digest.update(canonical + b"\n")


def _feed_item_json(digest: Any, item: object) -> None:
    if isinstance(item, BatchItem):
        canonical = json.dumps(
            [item.item_id, dict(item.payload), item.metadata],
            sort_keys=True,
            separators=(",", ":"),
            default=repr,
        )
        digest.update(canonical.encode("utf-8", "surrogatepass") + b"\n")


def _check_digest(checkpoint: JSONObject | None, digest: Any, count: int) -> None:
    expected = (checkpoint or {}).get("digest")
    if expected is not None and digest.hexdigest() != expected:
        raise SourceChangedError(
            f"the first {count} items differ from those the run already read (ids, payloads "
            "or metadata); pass the same items in the same order, or start a new run id"
        )


def as_source(items: Any) -> ItemSource:
    """Wrap a plain iterable; pass real sources through."""
    if hasattr(items, "read_slices") and hasattr(items, "identity"):
        return items  # type: ignore[no-any-return]
    if isinstance(items, (Mapping, str | bytes)):
        raise InvalidItemError("items must be an iterable of BatchItem or an item source")
    return IterableSource(items)


class Ingestor:
    """Moves items from a source into the store and chunk files."""

    def __init__(
        self,
        *,
        store: StateStore,
        artifacts: ArtifactStore,
        provider: BatchProvider,
        clock: Clock,
        lease: LeaseKeeper,
        slice_size: int,
    ) -> None:
        self._lease = lease
        self._store = store
        self._artifacts = artifacts
        self._provider = provider
        self._clock = clock
        self._slice_size = slice_size

    def run(
        self,
        run: RunRecord,
        job: BatchJob,
        spec: RequestSpec,
        source: ItemSource,
        *,
        on_sealed: Callable[[], object] | None = None,
        on_slice: Callable[[], object] | None = None,
    ) -> int:
        """Ingest everything after the run's checkpoint; return how many items were added.

        Holds the run's lease throughout (renewed every slice; every commit is fenced).
        """
        with self._lease.held(run.run_id):
            return self._ingest(run, job, spec, source, on_sealed, on_slice)

    def _ingest(
        self,
        run: RunRecord,
        job: BatchJob,
        spec: RequestSpec,
        source: ItemSource,
        on_sealed: Callable[[], object] | None,
        on_slice: Callable[[], object] | None,
    ) -> int:
        run_id = run.run_id
        # Re-read under the lease: another process may have ingested since we looked.
        run = self._store.load_run(run_id) or run
        if run.ingest_complete:
            return 0
        chunks = self._store.list_chunks(run_id)
        building = [c for c in chunks if c.state is ChunkState.BUILDING]
        # Closed-but-unsealed chunks from a crash are sealed by the caller's recovery;
        # only the newest building chunk stays open for appends.
        open_chunk = building[-1] if building else None
        packer = ChunkPacker(
            run_id=run_id,
            store=self._store,
            artifacts=self._artifacts,
            policy=chunk_policy(run.job_spec),
            open_chunk=open_chunk,
            next_chunk_seq=(chunks[-1].seq + 1) if chunks else 0,
            now=self._clock.now(),
            model=spec.model,
            max_tokens=enqueue_limit(run, self._provider),
        )
        endpoint = spec.endpoint.encode()
        next_seq = self._store.max_item_seq(run_id) + 1
        added = 0
        started = time.monotonic()
        last_log = started
        try:
            for piece in source.read_slices(run.source_checkpoint, slice_size=self._slice_size):
                rows = self._rows_for_slice(run_id, job, spec, piece, packer, endpoint, next_seq)
                next_seq += len(rows)
                touched = packer.sync()
                failpoints.reach("ingest.lines_written")
                self._lease.renew(run_id)  # renew; a lost lease stops the ingest here
                self._store.append_items(
                    run_id,
                    rows,
                    chunks=touched,
                    checkpoint=dict(piece.checkpoint),
                    lease_owner=self._lease.owner,
                )
                failpoints.reach("ingest.slice_committed")
                if packer.after_commit() and on_sealed is not None:
                    on_sealed()
                added += len(rows)
                if on_slice is not None:
                    on_slice()
                if self._stop_requested(run_id):
                    # cancel() (here or in another process) stops reading within a slice;
                    # the step that settles the cancel closes the open chunk.
                    packer.abandon()
                    log.info("run %s: ingest stopped by cancel after %d items", run_id, added)
                    return added
                if time.monotonic() - last_log > 5:
                    last_log = time.monotonic()
                    rate = added / max(last_log - started, 1e-9)
                    log.info("run %s: ingested %d items (%.0f/s)", run_id, added, rate)
            packer.finish()
        except BaseException:
            packer.abandon()
            raise
        self._store.finish_ingest(run_id)
        return added

    def _stop_requested(self, run_id: str) -> bool:
        current = self._store.load_run(run_id)
        return current is None or current.status in _STOPPED

    def _rows_for_slice(
        self,
        run_id: str,
        job: BatchJob,
        spec: RequestSpec,
        piece: SourceSlice,
        packer: ChunkPacker,
        endpoint: bytes,
        first_seq: int,
    ) -> list[NewItem]:
        locations = list(piece.locations) or [""] * len(piece.items)
        if len(locations) != len(piece.items):
            # zip() would silently drop the items past the shorter list.
            raise SourceError(
                "the item source returned a slice with "
                f"{len(piece.items)} items but {len(locations)} locations; locations must "
                "be empty or one per item (nothing from this slice was stored)",
                run_id=run_id,
            )
        ids = [str(item.item_id) for item in piece.items]
        # Rejected rows are stored under their own ids too, so they are checked as well.
        wanted = [i for i in ids + [r.item_id for r in piece.rejected] if _storable_text(i)]
        existing = self._store.existing_item_ids(run_id, wanted) if wanted else set()
        seen: set[str] = set()
        rows: list[NewItem] = []
        seq = first_seq
        # The loop runs once per item: bound methods are looked up once, and the
        # location suffix of error messages is built only for an item that has a problem.
        dumps, dumps_text = jsoncodec.dumps, jsoncodec.dumps_text
        shape, add, fits = self._provider.shape_body, packer.add, packer.fits_alone
        estimate = tokens.line_estimator()
        for item, item_id, where in zip(piece.items, ids, locations, strict=True):
            problem: ItemError | None = None
            payload_json = "{}"
            metadata_json: str | None = None
            if not item_id or len(item_id) > MAX_ITEM_ID_LENGTH:
                problem = _invalid("item id must be 1-512 characters", where)
            elif not _storable_text(item_id):
                problem = _invalid(f"item id {item_id!r} contains NUL or invalid Unicode", where)
            elif item_id in seen or item_id in existing:
                problem = _invalid(f"duplicate item id {item_id!r}", where, "duplicate_id")
            else:
                try:
                    payload_json = dumps_text(item.payload)
                    if item.metadata is not None:
                        metadata_json = dumps_text(item.metadata)
                except (TypeError, ValueError) as exc:
                    problem = _invalid("payload is not JSON", where, detail=str(exc))
                if problem is None:
                    try:
                        line = request_line(
                            custom_id(seq, 1), endpoint, dumps(shape(spec, user_body(job, item)))
                        )
                    except Exception as exc:  # a user's builder may raise anything
                        problem = _invalid(
                            "building the request failed", where, "build_error", repr(exc)
                        )
                    else:
                        n_tokens = estimate(line)
                        if fits(line, n_tokens):
                            rows.append(
                                NewItem(
                                    seq, item_id, payload_json, metadata_json, add(line, n_tokens)
                                )
                            )
                            seen.add(item_id)
                            seq += 1
                            continue
                        problem = _invalid(
                            f"request is {len(line)} bytes, about {n_tokens} tokens: more than "
                            "one batch may hold (ChunkPolicy.max_bytes or the enqueued-token "
                            "limit)",
                            where,
                            "request_too_large",
                        )
            item_id = _storable_id(item_id, where or str(seq), seen, existing)
            rows.append(
                NewItem(seq, item_id, payload_json, metadata_json, None, ItemStatus.FAILED, problem)
            )
            seen.add(item_id)
            seq += 1
        for rejected in piece.rejected:
            rid = _storable_id(rejected.item_id, str(seq), seen, existing)
            seen.add(rid)
            rows.append(
                NewItem(
                    seq,
                    rid,
                    json.dumps(rejected.raw, ensure_ascii=False, default=str),
                    None,
                    None,
                    ItemStatus.FAILED,
                    ItemError("invalid_input", _printable(rejected.error)),
                )
            )
            seq += 1
        return rows


def _storable_id(item_id: str, where: str, seen: set[str], existing: set[str]) -> str:
    """An id a failed row can be stored under: its own, unless that is empty, too long or
    already taken (then a ``#rejected@<where>`` variant, so the row is never lost)."""
    taken = item_id in seen or item_id in existing
    if item_id and len(item_id) <= MAX_ITEM_ID_LENGTH and not taken and _storable_text(item_id):
        return item_id
    if not _storable_text(item_id):
        item_id = _printable(item_id)
    return f"{(item_id or '<empty>')[:300]}#rejected@{_printable(where)[:200]}"


def _invalid(
    what: str, where: str, code: str = "invalid_input", detail: str | None = None
) -> ItemError:
    """An ingest error naming the item's location (``file:line``) when known."""
    message = what + (f" at {_printable(where)}" if where else "")
    if detail is not None:
        message = f"{message}: {detail}"
    return ItemError(code, message[:2000])


def _storable_text(value: str) -> bool:
    """Whether every store can keep ``value`` as text (Postgres refuses NUL; no store
    takes lone surrogates)."""
    if "\x00" in value:
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _printable(value: str) -> str:
    """``value`` with NUL and invalid Unicode escaped, so it can be stored and shown."""
    if _storable_text(value):
        return value
    return value.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


def user_body(job: BatchJob, item: BatchItem) -> Mapping[str, object]:
    """The request body the job's builder makes for ``item`` (before shaping)."""
    if job.build_request is not None:
        body = job.build_request(item)
        if not isinstance(body, Mapping):
            raise TypeError(f"build_request must return a dict, got {type(body).__name__}")
        return body
    assert job.build_prompt is not None
    prompt = job.build_prompt(item)
    if job.endpoint == Endpoint.RESPONSES.value:
        return {"input": prompt}
    return {"messages": [{"role": "user", "content": prompt}]}
