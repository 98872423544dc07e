"""Retries: copy the request lines of items that need another attempt into a new chunk.

The body bytes of each line are replayed exactly as first prepared; only the custom_id
changes (a new submission number). One retry chunk is built per step, bounded by the
chunk policy, and it is committed (items moved into it) before it is sealed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from datetime import datetime

from batchor_core import failpoints
from batchor_core.errors import ProviderError
from batchor_core.jobspec import chunk_policy
from batchor_core.models import ItemError, ItemStatus
from batchor_core.packing import ChunkPacker, chunk_key, custom_id, parse_custom_id, swap_custom_id
from batchor_core.ports import (
    ArtifactStore,
    BatchProvider,
    ChunkRecord,
    ChunkState,
    ItemOutcome,
    RunRecord,
    StateStore,
)
from batchor_core.tokens import line_estimator

__all__ = ["build_retry_chunk", "unpack_oversized"]

log = logging.getLogger("batchor.run")


def build_retry_chunk(
    *,
    store: StateStore,
    artifacts: ArtifactStore,
    now: datetime,
    run: RunRecord,
    max_tokens: int | None = None,
) -> int:
    """Build, commit and seal one chunk of retries; return how many items it holds.

    With ``max_tokens`` (the run's effective enqueued-token limit) the chunk holds at
    most that many estimated tokens, so a batch rejected for the token limit comes back
    split into smaller ones.
    """
    policy = chunk_policy(run.job_spec)
    candidates = store.retry_candidates(run.run_id, now=now, limit=policy.max_requests)
    if not candidates:
        return 0
    chunks = store.list_chunks(run.run_id)
    if any(c.state is ChunkState.BUILDING for c in chunks) and not run.ingest_complete:
        return 0  # let the ingest finish its open chunk first
    by_chunk: dict[str, dict[int, int]] = defaultdict(dict)
    for cand in candidates:
        by_chunk[cand.chunk_id][cand.seq] = cand.submission + 1
    packer = ChunkPacker(
        run_id=run.run_id,
        store=store,
        artifacts=artifacts,
        policy=policy,
        open_chunk=None,
        next_chunk_seq=(chunks[-1].seq + 1) if chunks else 0,
        now=now,
        model=run.job_spec.get("model"),
        max_tokens=max_tokens,
    )
    estimate = line_estimator()
    rows: list[tuple[int, int]] = []
    try:
        for source_chunk, wanted in by_chunk.items():
            with artifacts.open_read(chunk_key(run.run_id, source_chunk)) as fh:
                for line in fh:
                    ids = parse_custom_id(_line_custom_id(line))
                    if ids is None or ids[0] not in wanted:
                        continue
                    new_line = swap_custom_id(line, custom_id(ids[0], wanted[ids[0]]))
                    n_tokens = estimate(new_line)
                    if rows and packer.would_open_new(new_line, n_tokens):
                        break
                    packer.add(new_line, n_tokens)
                    rows.append((ids[0], wanted[ids[0]]))
        if not rows:
            packer.abandon()
            return 0
        (chunk,) = packer.sync()
        failpoints.reach("retry.written")
        store.assign_retries(run.run_id, rows, chunk=chunk)
        packer.finish()
    except BaseException:
        packer.abandon()
        raise
    return len(rows)


def unpack_oversized(
    *,
    store: StateStore,
    artifacts: ArtifactStore,
    provider: BatchProvider,
    now: datetime,
    chunk: ChunkRecord,
    limit: int,
) -> int:
    """Give up an unsent chunk that holds more estimated tokens than the whole
    enqueued-token ``limit`` (it was packed for a higher one, since lowered): it could
    never go out. Its items are queued again without spending an attempt, so the next
    retry chunks repack them within the limit; an item whose request alone is over the
    limit fails with ``request_too_large``, as it would have at ingest. Returns how many
    items changed.
    """
    estimate = line_estimator()
    queued = {q.seq: q.submission for q in store.queued_items(chunk.run_id, chunk.chunk_id)}
    outcomes: list[ItemOutcome] = []
    with artifacts.open_read(chunk_key(chunk.run_id, chunk.chunk_id)) as fh:
        for line in fh:
            ids = parse_custom_id(_line_custom_id(line))
            if ids is None or queued.get(ids[0]) != ids[1]:
                continue
            tokens = estimate(line)
            if tokens > limit:
                error = ItemError(
                    "request_too_large",
                    f"request is about {tokens} tokens, more than the enqueued-token limit "
                    f"of {limit} for {chunk.model}",
                )
                outcomes.append(ItemOutcome(ids[0], ids[1], ItemStatus.FAILED, error=error))
            else:
                error = ItemError(
                    "repacked",
                    f"batch {chunk.chunk_id} (~{chunk.est_tokens} tokens) no longer fits the "
                    f"enqueued-token limit of {limit}; repacked",
                )
                outcomes.append(
                    ItemOutcome(
                        ids[0],
                        ids[1],
                        ItemStatus.PENDING,
                        error=error,
                        spend_attempt=False,
                        retry_not_before=now,
                    )
                )
    done = dataclasses.replace(
        chunk, state=ChunkState.COLLECTED, provider_status="repacked", not_before=None
    )
    changed = store.record_outcomes(chunk.run_id, done, outcomes, expected=chunk.state)
    if changed and chunk.file_id:
        try:  # the uploaded file will never be used; an orphan is only clutter
            provider.delete_file(chunk.file_id)
        except ProviderError as exc:
            log.info("run %s: deleting unused file %s: %s", chunk.run_id, chunk.file_id, exc)
    log.warning(
        "run %s: batch %s (~%d tokens) is over the enqueued-token limit %d (lowered since "
        "it was packed): its %d requests are repacked",
        chunk.run_id,
        chunk.chunk_id,
        chunk.est_tokens,
        limit,
        len(outcomes),
    )
    return changed


def _line_custom_id(line: bytes) -> str:
    prefix = b'{"custom_id":"'
    if not line.startswith(prefix):
        return ""
    end = line.find(b'"', len(prefix))
    return line[len(prefix) : end].decode() if end > 0 else ""
