"""Collecting one finished batch: download its files, record its outcomes in parts.

The rules that turn lines into outcomes live in :mod:`batchor_core.collect`; this is the
I/O around them. A chunk's output file (up to 50,000 lines) is read line by line and its
outcomes are recorded :data:`~batchor_core.collect.RECORD_BATCH` at a time, each part in
its own transaction fenced by the run's lease, so memory stays flat however large the
chunk. The chunk stays ``submitted`` until its last part, which marks it collected: a
collection interrupted between parts is done again from the stored files, and the parts
already recorded change nothing the second time (only items still queued with the same
submission change).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel

from batchor_core import failpoints
from batchor_core.collect import RECORD_BATCH, LineSorter, OutcomeBuilder
from batchor_core.gcpause import gc_paused
from batchor_core.jobspec import retry_policy
from batchor_core.lease import LeaseKeeper
from batchor_core.models import ItemError, RetryPolicy, Usage
from batchor_core.packing import output_key
from batchor_core.ports import (
    ArtifactStore,
    BatchProvider,
    ChunkRecord,
    ChunkState,
    Clock,
    ItemOutcome,
    ProviderBatch,
    RunRecord,
    StateStore,
)

__all__ = ["ChunkCollector"]

log = logging.getLogger("batchor.run")


@dataclasses.dataclass
class _Part:
    """What every part of one chunk's collection shares."""

    run: RunRecord
    chunk: ChunkRecord
    batch: ProviderBatch
    policy: RetryPolicy
    cancelling: bool
    renewed_at: datetime


class ChunkCollector:
    """Turns a finished provider batch into recorded item outcomes.

    Args:
        store: Control-plane store.
        artifacts: Where the downloaded files are kept.
        provider: Batch provider (downloads, line parsing).
        clock: Time source.
        lease: The lease keeper (renewed while a file is downloaded and recorded).
        token_limit_backoff_seconds: Wait before resubmitting items of a batch that hit
            the enqueued-token limit.
        record_batch: Outcomes recorded per transaction.
    """

    def __init__(
        self,
        *,
        store: StateStore,
        artifacts: ArtifactStore,
        provider: BatchProvider,
        clock: Clock,
        lease: LeaseKeeper,
        token_limit_backoff_seconds: float = 60.0,
        record_batch: int = RECORD_BATCH,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self.provider = provider
        self.clock = clock
        self.lease = lease
        self.token_limit_backoff_seconds = token_limit_backoff_seconds
        self.record_batch = record_batch

    def collect(
        self,
        run: RunRecord,
        chunk: ChunkRecord,
        batch: ProviderBatch,
        output_model: type[BaseModel] | None,
        *,
        cancelling: bool,
    ) -> None:
        """Record the outcomes of ``batch`` (finished) for ``chunk`` and mark it collected.

        Downloads the output and error files into the artifact store first (once: a
        collection done again reads the stored copies).

        Raises:
            ProviderError: A download failed (nothing is marked collected).
            RunLeasedError: This process lost the run's lease (a part may be recorded;
                the new holder collects the chunk again).
        """
        spec = run.job_spec
        # Without the output model (an operator's shell, a model defined in the starting
        # script) outputs are checked against the stored strict schema instead: cancel,
        # resume and wait work in any process.
        output_schema = spec.get("output_schema") if output_model is None else None
        sorter = LineSorter(
            # Bound once: this runs for every line of files of up to 50,000 lines.
            parse=functools.partial(self.provider.parse_line, spec["endpoint"]),
            output_model=output_model,
            output_schema=output_schema,
        )
        part = _Part(run, chunk, batch, retry_policy(spec), cancelling, self.clock.now())
        for kind, file_id in (("output", batch.output_file_id), ("error", batch.error_file_id)):
            if not file_id:
                continue
            key = output_key(run.run_id, chunk.chunk_id, batch.batch_id, kind)
            if not self.artifacts.exists(key):
                stream = self.lease.renewing(run.run_id, self.provider.download_file(file_id))
                self.artifacts.write_stream(key, stream)
                failpoints.reach("collect.downloaded")
            # A file's lines are parsed into objects that die by reference counting:
            # the cycle collector is paused while it is read (see gcpause).
            with self.artifacts.open_read(key) as fh, gc_paused():
                # Recorded in parts; the lines after the last full part are left for
                # the last part: the items of a chunk never all finish before the
                # chunk is marked collected.
                for successes, failures in sorter.parts(fh, size=self.record_batch):
                    self._record_part(part, successes, failures)
        if sorter.corrupt_lines:
            log.warning("run %s: %s", run.run_id, sorter.last_corrupt)
        # Items of the chunk still queued, apart from those whose lines are not recorded
        # yet, got no line at all (recorded parts changed every item they had a line for).
        held = sorter.pending_seqs()
        missing = [
            (q.seq, q.submission)
            for q in self.store.queued_items(run.run_id, chunk.chunk_id)
            if q.seq not in held
        ]
        size = self.record_batch
        last = len(missing) - (len(missing) % size or size) if missing else 0
        for start in range(0, last, size):
            self._record_part(part, [], [], missing[start : start + size])
        done = dataclasses.replace(
            chunk,
            state=ChunkState.COLLECTED,
            provider_status=batch.status,
            not_before=None,
            first_error_at=None,
        )
        self._record_part(part, *sorter.take(), missing[last:], done=done)
        failpoints.reach("collect.recorded")
        log.info(
            "run %s: collected %s (%s): %d lines, %d without a line",
            run.run_id,
            batch.batch_id,
            batch.status,
            sorter.lines,
            len(missing),
        )

    def _record_part(
        self,
        part: _Part,
        successes: list[ItemOutcome],
        failures: list[tuple[int, int, ItemError, Usage | None]],
        missing: Sequence[tuple[int, int]] = (),
        *,
        done: ChunkRecord | None = None,
    ) -> None:
        """Record one part of a chunk's outcomes; ``done`` (the last part) also marks the
        chunk collected. Fenced by the lease: a process that lost it commits nothing."""
        run_id = part.run.run_id
        now = self.clock.now()
        if (now - part.renewed_at).total_seconds() >= self.lease.ttl_seconds / 3:
            # A long collection must not outlive the lease (the parts are fenced on it).
            self.lease.renew(run_id)
            part.renewed_at = now
        needs = [f[0] for f in failures] + [m[0] for m in missing]
        builder = OutcomeBuilder(
            policy=part.policy,
            attempts=self.store.item_attempts(run_id, needs) if needs else {},
            now=now,
            cancelling=part.cancelling,
        )
        outcomes = successes
        outcomes.extend(
            builder.from_error(seq, sub, err, usage) for seq, sub, err, usage in failures
        )
        if missing:
            outcomes.extend(
                builder.for_missing(
                    missing,
                    part.batch.status,
                    part.batch.errors,
                    token_limit_backoff_seconds=self.token_limit_backoff_seconds,
                )
            )
        self.store.record_outcomes(
            run_id,
            done or part.chunk,
            outcomes,
            final=done is not None,
            lease_owner=self.lease.owner,
        )
        if done is None:
            failpoints.reach("collect.part_recorded")
