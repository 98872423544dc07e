"""Retries: copy the request lines of items that need another attempt into a new chunk.

The body bytes of each line are replayed exactly as first prepared; only the custom_id
changes (a new submission number). One retry chunk is built per step, bounded by the
chunk policy, and it is committed (items moved into it) before it is sealed.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from batchor_core import failpoints
from batchor_core.jobspec import chunk_policy
from batchor_core.packing import ChunkPacker, chunk_key, custom_id, parse_custom_id, swap_custom_id
from batchor_core.ports import ArtifactStore, ChunkState, RunRecord, StateStore
from batchor_core.tokens import line_estimator

__all__ = ["build_retry_chunk"]


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


def _line_custom_id(line: bytes) -> str:
    prefix = b'{"custom_id":"'
    if not line.startswith(prefix):
        return ""
    end = line.find(b'"', len(prefix))
    return line[len(prefix) : end].decode() if end > 0 else ""
