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
from batchor_core.gcpause import gc_paused
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
from batchor_core.packing import ChunkPacker, request_line_template
from batchor_core.ports import (
    ArtifactStore,
    BatchProvider,
    BodyEncoding,
    ChunkState,
    Clock,
    ItemSource,
    NewItem,
    RequestSpec,
    RunRecord,
    SourceSlice,
    StateStore,
)

__all__ = ["Ingestor", "IterableSource", "as_source", "body_builder", "user_body"]

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
        feed = _digester(checkpoint)
        digest = hashlib.sha256()
        iterator = iter(self._items)
        for skipped in _batched(itertools.islice(iterator, consumed), slice_size):
            feed(digest, skipped)
        _check_digest(checkpoint, digest, consumed)
        codec = _codec(checkpoint)
        for batch in _batched(iterator, slice_size):
            if not all(map(isinstance, batch, itertools.repeat(BatchItem))):
                position, item = next(
                    (i, item) for i, item in enumerate(batch) if not isinstance(item, BatchItem)
                )
                raise not_an_item(item, consumed + position)
            feed(digest, batch)
            consumed += len(batch)
            yield SourceSlice(
                items=batch,
                checkpoint={
                    "consumed": consumed,
                    "digest": digest.hexdigest(),
                    "digest_codec": codec,
                },
            )
            del batch  # not held while the next slice is read

    def check_complete(self, checkpoint: JSONObject | None) -> None:
        """Check that these are exactly the items a finished ingest read (reads them all).

        Raises:
            SourceChangedError: The items differ from those the checkpoint was taken on.
        """
        feed = _digester(checkpoint)
        digest = hashlib.sha256()
        count = 0
        for batch in _batched(iter(self._items), 5000):
            feed(digest, batch)
            count += len(batch)
        if count != int((checkpoint or {}).get("consumed", count)):
            raise SourceChangedError(
                f"the items differ from those the run read: {count} items now, "
                f"{(checkpoint or {}).get('consumed')} then"
            )
        _check_digest(checkpoint, digest, count)


def _batched(iterator: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Lists of up to ``size`` items from ``iterator``."""
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _codec(checkpoint: JSONObject | None) -> str:
    """How the run's item digest encodes items: a run keeps the codec it started with
    (checkpoints written before ``digest_codec`` existed used the standard library)."""
    if checkpoint and "digest" in checkpoint:
        return str(checkpoint.get("digest_codec", "json"))
    return "orjson"


def _digester(checkpoint: JSONObject | None) -> Callable[[Any, list[Any]], None]:
    """How the run's digest takes in a list of items: one canonical line per
    :class:`BatchItem` (other objects add nothing), in the run's codec."""
    return _digest_orjson if _codec(checkpoint) == "orjson" else _digest_json


def _digest_orjson(digest: Any, items: list[Any]) -> None:
    """Sorted-key JSON lines by orjson (ten times the standard library's speed). An item
    orjson refuses (an integer wider than 64 bits, a lone surrogate) is encoded by the
    standard library, the same way every time.

    Each line goes into the digest at once: orjson's output keeps a 4 KiB buffer however
    short the JSON, so holding a slice's lines would cost megabytes.
    """
    update, dumps = digest.update, orjson.dumps
    option = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
    for item in items:
        if isinstance(item, BatchItem):
            payload = item.payload
            try:
                update(
                    dumps(
                        [
                            item.item_id,
                            payload if type(payload) is dict else _plain(payload),
                            item.metadata,
                        ],
                        option=option,
                        default=_stable_repr,
                    )
                )
            except TypeError:
                update(_json_line(item))


def _digest_json(digest: Any, items: list[Any]) -> None:
    for item in items:
        if isinstance(item, BatchItem):
            digest.update(_json_line(item))


def not_an_item(value: object, position: int) -> InvalidItemError:
    """The error for a value among the items that is not a :class:`BatchItem`."""
    return InvalidItemError(
        f"items must be BatchItem objects, got {type(value).__name__} at position {position}"
    )


def id_problem(item_id: str) -> ItemError | None:
    """Why ``item_id`` can never be stored (empty, too long, NUL or invalid Unicode),
    whatever else the run holds; None if it can."""
    return _id_problem(item_id, "", _NO_IDS, _NO_IDS)


_NO_IDS: set[str] = set()  # read, never written


def _plain(payload: Any) -> Any:
    """A mapping payload as a dict (digested the same whatever its type); anything else,
    which ingest rejects, as it is."""
    return dict(payload) if isinstance(payload, Mapping) else payload


def _json_line(item: BatchItem) -> bytes:
    value = [item.item_id, _plain(item.payload), item.metadata]
    try:
        canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_stable_repr)
    except TypeError:  # keys that do not sort together (str and int): in their own order
        canonical = json.dumps(value, separators=(",", ":"), default=_stable_repr)
    return canonical.encode("utf-8", "surrogatepass") + b"\n"


def _stable_repr(value: object) -> str:
    """A value JSON cannot hold, for the digest: its repr, unless that holds an address
    (``<Row object at 0x...>``), which differs in every process and would refuse every
    resume; then its type."""
    text = repr(value)
    if " at 0x" in text:
        return f"<{type(value).__module__}.{type(value).__qualname__}>"
    return text


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
        build = _RowBuilder(self._store, self._provider, run_id, job, spec, packer)
        next_seq = self._store.max_item_seq(run_id) + 1
        added = 0
        started = time.monotonic()
        last_log = started
        slices = source.read_slices(run.source_checkpoint, slice_size=self._slice_size)
        try:
            while True:
                # Reading, building and committing a slice: its objects die by reference
                # counting, so the cycle collector is paused for it (see gcpause).
                with gc_paused():
                    piece = next(slices, None)
                    if piece is None:
                        break
                    rows = build.rows(piece, next_seq)
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
                    count = len(rows)
                    # Let this slice go before the next is read: holding both raised the
                    # peak RSS of a run by 2 MB.
                    del piece, rows, touched
                if packer.after_commit() and on_sealed is not None:
                    on_sealed()
                added += count
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


class _RowBuilder:
    """Turns the items of one slice into item rows and request lines (in the packer).

    Everything that is the same for every item of the run (the body builder, the body
    encoder, the request line's framing) is prepared once here: the loop in
    :meth:`rows` runs once per item, so it does only what differs per item.
    """

    def __init__(
        self,
        store: StateStore,
        provider: BatchProvider,
        run_id: str,
        job: BatchJob,
        spec: RequestSpec,
        packer: ChunkPacker,
    ) -> None:
        self._store = store
        self._run_id = run_id
        self._packer = packer
        self._make_body = body_builder(job)
        if isinstance(provider, BodyEncoding):
            self._encode = provider.body_encoder(spec)
        else:
            shape, dumps = provider.shape_body, jsoncodec.dumps
            self._encode = lambda body: dumps(shape(spec, body))
        self._line = request_line_template(spec.endpoint.encode())
        self._estimate = tokens.line_estimator()

    def rows(self, piece: SourceSlice, first_seq: int) -> list[NewItem]:
        """The rows of ``piece``'s items (then its rejected rows), numbered from
        ``first_seq``; each pending item's request line is added to the packer."""
        items = piece.items
        locations = list(piece.locations) or [""] * len(items)
        if len(locations) != len(items):
            # zip() would silently drop the items past the shorter list.
            raise SourceError(
                "the item source returned a slice with "
                f"{len(items)} items but {len(locations)} locations; locations must "
                "be empty or one per item (nothing from this slice was stored)",
                run_id=self._run_id,
            )
        ids = [str(item.item_id) for item in items]
        # Rejected rows are stored under their own ids too, so they are checked as well.
        checked = ids + [r.item_id for r in piece.rejected]
        wanted = checked if _all_storable(checked) else [i for i in checked if _storable_text(i)]
        existing = self._store.existing_item_ids(self._run_id, wanted) if wanted else set()
        # The usual slice has only valid, new, distinct ids: then no id needs a look.
        clean = (
            not existing
            and len(wanted) == len(checked)
            and (not ids or (min(map(len, ids)) > 0 and max(map(len, ids)) <= MAX_ITEM_ID_LENGTH))
            and len(set(ids)) == len(ids)
        )
        seen: set[str] = set()
        rows: list[NewItem] = []
        append = rows.append
        seq = first_seq
        # Once per item: what is looked up per item is bound to locals, and the location
        # suffix of error messages is built only for an item that has a problem.
        dumps_text, make_body, encode = jsoncodec.dumps_text, self._make_body, self._encode
        line_template, estimate, offer = self._line, self._estimate, self._packer.offer
        # The default estimate is estimate_line_tokens, one len(): computed inline.
        by_length = estimate is tokens.estimate_line_tokens
        per_token = tokens.BYTES_PER_TOKEN
        new_tuple, pending, odumps = tuple.__new__, ItemStatus.PENDING, orjson.dumps
        for item, item_id, where in zip(items, ids, locations, strict=True):
            problem = None if clean else _id_problem(item_id, where, seen, existing)
            payload_json, metadata_json = "{}", None
            if problem is None:
                try:
                    try:  # dumps_text, inline: orjson, else its standard-library fallback
                        payload_json = odumps(item.payload).decode()
                    except TypeError:
                        payload_json = dumps_text(item.payload)
                    if item.metadata is not None:
                        metadata_json = dumps_text(item.metadata)
                except (TypeError, ValueError) as exc:
                    problem = _invalid("payload is not JSON", where, detail=str(exc))
                if problem is None and payload_json[:1] != "{":
                    problem = _invalid(
                        "payload is not a JSON object",
                        where,
                        detail=f"a {type(item.payload).__name__}; BatchItem.payload must be a dict",
                    )
                if problem is None:
                    try:
                        line = line_template % (seq, encode(make_body(item)))
                    except Exception as exc:  # a user's builder may raise anything
                        problem = _invalid(
                            "building the request failed", where, "build_error", repr(exc)
                        )
                    else:
                        n_tokens = (
                            (len(line) + per_token - 1) // per_token
                            if by_length
                            else estimate(line)
                        )
                        chunk_id = offer(line, n_tokens)
                        if chunk_id is not None:
                            # NewItem(seq, item_id, payload_json, metadata_json, chunk_id),
                            # without the named tuple's Python-level __new__.
                            append(
                                new_tuple(
                                    NewItem,
                                    (
                                        seq,
                                        item_id,
                                        payload_json,
                                        metadata_json,
                                        chunk_id,
                                        pending,
                                        None,
                                    ),
                                )
                            )
                            if not clean:
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
            append(
                NewItem(seq, item_id, payload_json, metadata_json, None, ItemStatus.FAILED, problem)
            )
            if not clean:
                seen.add(item_id)
            seq += 1
        if piece.rejected:
            if clean:
                seen = {row.item_id for row in rows}
            for rejected in piece.rejected:
                rid = _storable_id(rejected.item_id, str(seq), seen, existing)
                seen.add(rid)
                append(
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


def _id_problem(item_id: str, where: str, seen: set[str], existing: set[str]) -> ItemError | None:
    """Why ``item_id`` cannot be stored as given, or None."""
    if not item_id or len(item_id) > MAX_ITEM_ID_LENGTH:
        return _invalid("item id must be 1-512 characters", where)
    if not _storable_text(item_id):
        return _invalid(f"item id {item_id!r} contains NUL or invalid Unicode", where)
    if item_id in seen or item_id in existing:
        return _invalid(f"duplicate item id {item_id!r}", where, "duplicate_id")
    return None


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
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _all_storable(values: list[str]) -> bool:
    """:func:`_storable_text` of every value, for a whole slice of ids at C speed."""
    joined = "".join(values)
    return "\x00" not in joined and (joined.isascii() or _storable_text(joined))


def _printable(value: str) -> str:
    """``value`` with NUL and invalid Unicode escaped, so it can be stored and shown."""
    if _storable_text(value):
        return value
    return value.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


def user_body(job: BatchJob, item: BatchItem) -> Mapping[str, object]:
    """The request body the job's builder makes for ``item`` (before shaping)."""
    return body_builder(job)(item)


def body_builder(job: BatchJob) -> Callable[[BatchItem], Mapping[str, object]]:
    """:func:`user_body` for ``job`` as a function of the item, with the job's choices
    (builder, endpoint) made once."""
    build = job.build_request
    if build is not None:

        def checked(item: BatchItem) -> Mapping[str, object]:
            body = build(item)
            if type(body) is not dict and not isinstance(body, Mapping):
                raise TypeError(f"build_request must return a dict, got {type(body).__name__}")
            return body

        return checked
    prompt = job.build_prompt
    assert prompt is not None
    if job.endpoint == Endpoint.RESPONSES.value:
        return lambda item: {"input": prompt(item)}
    return lambda item: {"messages": [{"role": "user", "content": prompt(item)}]}
