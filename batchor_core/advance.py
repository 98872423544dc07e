"""One bounded step of a run: recover, submit, poll, collect, retry, finish.

A step never sleeps and downloads at most ``max_collect`` finished batches, so a Dagster
sensor tick or a CLI loop can call it as often as it likes. Every side effect with the
provider is preceded by an intent written to the store (``uploading``, ``submitting``),
and an ambiguous batch creation is reconciled by looking the batch up by its metadata
before anything is created again. Provider and artifact-store errors are charged to the
chunk they concern (:mod:`batchor_core.stalls`): it backs off while the others move on.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from typing import NoReturn

from pydantic import BaseModel

from batchor_core import failpoints
from batchor_core.admission import SubmissionGate
from batchor_core.collect import RECORD_BATCH
from batchor_core.collector import ChunkCollector
from batchor_core.errors import (
    ArtifactError,
    ConfigurationError,
    ProviderError,
    RateLimitedError,
)
from batchor_core.jobspec import chunk_policy
from batchor_core.lease import LeaseKeeper
from batchor_core.models import RunStatus
from batchor_core.packing import (
    batch_metadata,
    chunk_key,
    request_file_problem,
    seal_chunk,
    upload_name,
)
from batchor_core.ports import (
    UNSUBMITTED_CHUNK_STATES,
    ArtifactStore,
    BatchProvider,
    ChunkRecord,
    ChunkState,
    Clock,
    ProviderBatch,
    RunRecord,
    StateStore,
)
from batchor_core.retries import build_retry_chunk
from batchor_core.stalls import StallError, StallPolicy

__all__ = ["RunStepper"]

log = logging.getLogger("batchor.run")
_STOPPING = frozenset({"cancelling", "cancelled", "completed", "failed", "expired"})
_AT_PROVIDER = (ChunkState.SUBMITTING, ChunkState.SUBMITTED)  # a batch may exist for these


class RunStepper:
    """Advances runs one bounded step at a time.

    Args:
        store: Control-plane store.
        artifacts: Artifact store.
        provider: Batch provider.
        clock: Time source.
        lease: The lease keeper (renewed before side effects and during downloads).
        stalls: How long provider errors are retried before the run pauses.
        token_limit_backoff_seconds: Wait before resubmitting a batch that hit the
            enqueued-token limit.
        create_grace_seconds: After an ambiguous batch create, how long a missing batch
            is looked for again before it is concluded "not created".
        record_batch: Outcomes recorded per transaction while a chunk is collected.
    """

    def __init__(
        self,
        *,
        store: StateStore,
        artifacts: ArtifactStore,
        provider: BatchProvider,
        clock: Clock,
        lease: LeaseKeeper,
        stalls: StallPolicy | None = None,
        token_limit_backoff_seconds: float = 60.0,
        create_grace_seconds: float = 60.0,
        record_batch: int = RECORD_BATCH,
    ) -> None:
        self.lease = lease
        self.store = store
        self.artifacts = artifacts
        self.provider = provider
        self.clock = clock
        self.stalls = stalls if stalls is not None else StallPolicy()
        self.token_limit_backoff_seconds = token_limit_backoff_seconds
        self.create_grace_seconds = create_grace_seconds
        idle = lease.ttl_seconds  # a run whose lease lapsed this long is not being advanced
        self.gate = SubmissionGate(
            store=store,
            provider=provider,
            pause=self._pause,
            changed=self._changed,
            artifacts=artifacts,
            idle=idle,
        )
        self.collector = ChunkCollector(
            store=store,
            artifacts=artifacts,
            provider=provider,
            clock=clock,
            lease=lease,
            token_limit_backoff_seconds=token_limit_backoff_seconds,
            record_batch=record_batch,
        )

    # ------------------------------------------------------------------ step

    def step(
        self, run: RunRecord, output_model: type[BaseModel] | None, *, max_collect: int
    ) -> bool:
        """Advance ``run`` once under its lease; return whether anything changed.

        Raises:
            RunLeasedError: Another process is advancing this run right now.
        """
        if run.status.is_terminal:
            return False
        with self.lease.held(run.run_id):
            run = self.store.load_run(run.run_id) or run  # re-read under the lease
            if run.status.is_terminal:
                return False
            return self._step(run, output_model, max_collect=max_collect)

    def _step(
        self, run: RunRecord, output_model: type[BaseModel] | None, *, max_collect: int
    ) -> bool:
        progress = self._recover(run)
        if run.status is RunStatus.CANCELLING:
            progress |= self._cancel_in_flight(run)
        progress |= self._poll_and_collect(run, output_model, max_collect=max_collect)
        current = self.store.load_run(run.run_id) or run
        if current.status is RunStatus.RUNNING:
            try:
                progress |= self._build_retry_chunk(current)
                blocked = None
            except ArtifactError as exc:  # nothing was committed; the next step tries again
                blocked = f"retries wait for the artifact store: {exc.message}"
                log.warning("run %s: %s", run.run_id, blocked)
                if not exc.retryable:  # a request file lost: no retry can be prepared
                    self._pause(current, f"preparing retries: {exc.message}")
            progress |= self._submit(current, blocked=blocked)
        if current.status is RunStatus.CANCELLING:
            progress |= self._finish_cancel(current)
        progress |= self._maybe_complete(run.run_id)
        return progress

    def submit_ready(self, run_id: str) -> bool:
        """Submit sealed chunks now (called during ingest, so batches start early)."""
        run = self.store.load_run(run_id)
        if run is None or run.status not in (RunStatus.INGESTING, RunStatus.RUNNING):
            return False
        with self.lease.held(run_id):
            return self._submit(run)

    def clear_stalls(self, run_id: str) -> None:
        """Forget every chunk's error streak and backoff (on resume: retry now, fresh
        budget); a submitting chunk keeps its not_before (an ambiguous create's grace)."""
        for chunk in self.store.list_chunks(run_id):
            if chunk.first_error_at is None or chunk.state is ChunkState.COLLECTED:
                continue
            keep = chunk.not_before if chunk.state is ChunkState.SUBMITTING else None
            self.store.save_chunk(
                dataclasses.replace(chunk, first_error_at=None, not_before=keep),
                expected=chunk.state,
            )

    def next_wake(self, run_id: str) -> datetime | None:
        """Earliest time a backoff in this run ends (for callers deciding how long to wait)."""
        times = [c.not_before for c in self.store.list_chunks(run_id) if c.not_before]
        times += [t for t in (self.store.next_retry_time(run_id),) if t is not None]
        return min(times) if times else None

    # ------------------------------------------------------------------ recovery

    def _recover(self, run: RunRecord) -> bool:
        chunks = self.store.list_chunks(run.run_id)
        progress = False
        building = [c for c in chunks if c.state is ChunkState.BUILDING]
        closable = building if run.ingest_complete else building[:-1]
        now = self.clock.now()
        for chunk in closable:
            if chunk.request_count > 0:
                if chunk.not_before is not None and chunk.not_before > now:
                    continue
                try:
                    seal_chunk(self.store, self.artifacts, chunk)
                except ArtifactError as exc:
                    self._stall(run, chunk, exc, f"sealing chunk {chunk.chunk_id}")
                    continue
            else:
                self.store.save_chunk(
                    dataclasses.replace(chunk, state=ChunkState.COLLECTED),
                    expected=ChunkState.BUILDING,
                )
            progress = True
        for chunk in chunks:
            if chunk.state is ChunkState.UPLOADING:
                # We may or may not have uploaded. Delete any orphan upload, then upload
                # again (the bytes are the artifact, so the new file is identical). If the
                # clean-up itself fails, try again later rather than leave an orphan.
                if chunk.not_before is not None and chunk.not_before > self.clock.now():
                    continue
                try:
                    for file_id in self.provider.find_files(upload_name(run.run_id, chunk)):
                        self.provider.delete_file(file_id)
                except ProviderError as exc:
                    self._stall(run, chunk, exc, f"recovering the upload of chunk {chunk.chunk_id}")
                    continue
                self._move(chunk, ChunkState.UPLOADING, state=ChunkState.SEALED)
                progress = True
            elif chunk.state is ChunkState.SUBMITTING:
                progress |= self._reconcile_create(run, chunk)
        return progress

    def _reconcile_create(self, run: RunRecord, chunk: ChunkRecord) -> bool:
        try:
            found = self.provider.find_batches(batch_metadata(run.run_id, chunk))
        except ProviderError as exc:
            self._stall(run, chunk, exc, f"looking for the batch of chunk {chunk.chunk_id}")
            return False
        if found:
            batch = found[0]
            self._mark_submitted(chunk, batch)
            log.info(
                "run %s: chunk %s was already created as %s",
                run.run_id,
                chunk.chunk_id,
                batch.batch_id,
            )
        elif chunk.not_before is not None and chunk.not_before > self.clock.now():
            # The create was attempted moments ago: a batch the provider commits late
            # may not be listed yet. Creating again now could make a second batch.
            return False
        else:
            self._move(chunk, ChunkState.SUBMITTING, state=ChunkState.UPLOADED, not_before=None)
        return True

    # ------------------------------------------------------------------ submit

    def _submit(self, run: RunRecord, *, blocked: str | None = None) -> bool:
        """Upload and create the batches of ready chunks, in order, within the budget;
        ``blocked`` says why retries could not be prepared (shown if nothing else waits)."""
        policy = chunk_policy(run.job_spec)
        chunks = self.store.list_chunks(run.run_id)
        in_flight = sum(1 for c in chunks if c.state is ChunkState.SUBMITTED)
        now = self.clock.now()
        progress = False
        waiting: str | None = None
        for chunk in chunks:
            if chunk.state not in (ChunkState.SEALED, ChunkState.UPLOADED):
                continue
            if policy.max_inflight_batches is not None and in_flight >= policy.max_inflight_batches:
                break
            if chunk.not_before is not None and chunk.not_before > now:
                break  # batches go out in order: later chunks wait behind a deferred one
            try:
                if self.gate.unpack_if_oversized(run, chunk, now):
                    progress = True
                    continue
                if self.gate.over_cost_cap(run, chunk):
                    break
                waiting = self.gate.upload_wait(run, chunk)
                if waiting is not None:
                    break
                if chunk.state is ChunkState.SEALED:
                    if problem := request_file_problem(self.artifacts, chunk):
                        self._pause(run, problem)  # no retry fixes it; say so in summary()
                        break
                    chunk = self._upload(run, chunk)
                    progress = True
                waiting = self._create(run, chunk)
                if waiting is not None:
                    break
                in_flight += 1
                progress = True
            except ProviderError as exc:
                if self._handle_submit_error(run, chunk, exc):
                    progress = True
                break  # the provider is unhappy: do not hammer it with the next chunk
            except ArtifactError as exc:  # the store is unhappy: the next chunks wait too
                self._stall(run, self._reload(chunk), exc, f"preparing chunk {chunk.chunk_id}")
                break
        self.gate.note_waiting(run, waiting or blocked)
        return progress

    def _upload(self, run: RunRecord, chunk: ChunkRecord) -> ChunkRecord:
        key = chunk_key(run.run_id, chunk.chunk_id)
        self.lease.renew(run.run_id)  # before the side effect; raises if the lease was lost
        chunk = self._move(chunk, ChunkState.SEALED, state=ChunkState.UPLOADING)
        with self.artifacts.open_read(key) as stream:
            # On failure the chunk stays "uploading": the next step's recovery deletes any
            # file the provider kept anyway, then puts the chunk back to "sealed".
            file_id = self.provider.upload_file(stream, filename=upload_name(run.run_id, chunk))
        failpoints.reach("submit.uploaded")
        return self._move(
            chunk,
            ChunkState.UPLOADING,
            state=ChunkState.UPLOADED,
            file_id=file_id,
            first_error_at=None,
        )

    def _create(self, run: RunRecord, chunk: ChunkRecord) -> str | None:
        """Create the chunk's batch, or return why it waits for budget (None: created)."""
        self.lease.renew(run.run_id)  # before the side effect; raises if the lease was lost
        # A submitting chunk's not_before ends the grace period in which a batch not found
        # is not yet "not created" (durable: a crash after the create cannot shorten it).
        grace_until = self.clock.now() + timedelta(seconds=self.create_grace_seconds)
        chunk = dataclasses.replace(chunk, state=ChunkState.SUBMITTING, not_before=grace_until)
        waiting = self.gate.reserve(run, chunk)
        if waiting is not None:
            return waiting
        assert chunk.file_id is not None
        try:
            batch = self.provider.create_batch(
                file_id=chunk.file_id,
                endpoint=run.job_spec["endpoint"],
                completion_window=run.job_spec.get("completion_window", "24h"),
                metadata=batch_metadata(run.run_id, chunk),
            )
        except ProviderError as exc:
            if exc.retryable and not isinstance(exc, RateLimitedError):
                # Ambiguous: the batch may exist. Look before anything is created again.
                self._reconcile_create(run, self._reload(chunk))
            else:  # refused outright (4xx, 429): certainly not created
                self._move(chunk, ChunkState.SUBMITTING, state=ChunkState.UPLOADED, not_before=None)
            raise
        failpoints.reach("submit.created")
        self._mark_submitted(chunk, batch)
        log.info(
            "run %s: submitted chunk %s as %s (%d requests, ~%d tokens)",
            run.run_id,
            chunk.chunk_id,
            batch.batch_id,
            chunk.request_count,
            chunk.est_tokens,
        )
        return None

    def _handle_submit_error(self, run: RunRecord, chunk: ChunkRecord, exc: ProviderError) -> bool:
        current = self._reload(chunk)
        if current.state is ChunkState.SUBMITTED:
            return True  # the ambiguous create did happen; reconciling adopted the batch
        delay = self._stall(run, current, exc, f"submitting chunk {chunk.chunk_id}")
        if isinstance(exc, RateLimitedError):
            # A 429 is about the account, not this chunk: hold back every unsubmitted
            # chunk of the run for as long as the provider asked (without charging them).
            unsent = [ChunkState.SEALED, ChunkState.UPLOADED]
            for other in self.store.list_chunks(run.run_id, unsent):
                if other.chunk_id != current.chunk_id:
                    self._defer(other, exc, delay, first_error_at=other.first_error_at)
        return True

    def _pause(self, run: RunRecord, reason: str) -> None:
        """Pause on a fault no retry will fix (no quota, bad key); resume() continues."""
        if self.store.set_status(
            run.run_id, RunStatus.PAUSED, reason=reason[:2000], expected=[RunStatus.RUNNING]
        ):
            log.warning("run %s paused: %s", run.run_id, reason)

    # ------------------------------------------------------------------ poll + collect

    def _poll_and_collect(
        self, run: RunRecord, output_model: type[BaseModel] | None, *, max_collect: int
    ) -> bool:
        progress = False
        collected = 0
        now = self.clock.now()
        cancelling = run.status is RunStatus.CANCELLING
        for chunk in self.store.list_chunks(run.run_id, [ChunkState.SUBMITTED]):
            if collected >= max_collect:
                break
            if chunk.not_before is not None and chunk.not_before > now and not cancelling:
                continue
            assert chunk.batch_id is not None
            try:
                batch = self.provider.get_batch(chunk.batch_id)
            except ProviderError as exc:
                self._stall(run, chunk, exc, f"reading batch {chunk.batch_id}")
                if exc.retryable and exc.status_code is None:
                    # No answer at all (a timeout, a refused or dropped connection): the
                    # other batches would wait as long, each up to the client's whole
                    # timeout, so they wait for the next step instead and a step stays
                    # bounded by about one call. (A batch the provider answers with an
                    # error for does not hold the others back.)
                    break
                continue
            if not batch.is_terminal:
                if batch.status != chunk.provider_status or chunk.first_error_at is not None:
                    self._move(
                        chunk,
                        ChunkState.SUBMITTED,
                        provider_status=batch.status,
                        first_error_at=None,
                        last_error=None,
                        not_before=None,
                    )
                    progress = True
                continue
            try:
                self.collector.collect(run, chunk, batch, output_model, cancelling=cancelling)
                self.gate.count_token_limit_strikes(run.run_id, batch)
            except ProviderError as exc:
                self._stall(run, chunk, exc, f"collecting batch {batch.batch_id}")
                continue
            except ArtifactError as exc:  # storing or reading its files; others go on
                what = f"collecting batch {batch.batch_id}"
                self._stall(run, self._reload(chunk), exc, what)
                continue
            collected += 1
            progress = True
        return progress

    # ------------------------------------------------------------------ retries

    def _build_retry_chunk(self, run: RunRecord) -> bool:
        now, max_tokens = self.clock.now(), self.gate.chunk_tokens(run)
        queued = build_retry_chunk(
            store=self.store, artifacts=self.artifacts, now=now, run=run, max_tokens=max_tokens
        )
        if queued:
            log.info("run %s: %d items queued for another attempt", run.run_id, queued)
        return queued > 0

    # ------------------------------------------------------------------ finish

    def _cancel_in_flight(self, run: RunRecord) -> bool:
        """Ask the provider to stop every batch still running (including one adopted by
        reconciliation after the cancel was requested); collection keeps their finished rows.
        """
        progress = False
        for chunk in self.store.list_chunks(run.run_id, [ChunkState.SUBMITTED]):
            if chunk.batch_id and chunk.provider_status not in _STOPPING:
                try:
                    batch = self.provider.cancel_batch(chunk.batch_id)
                except ProviderError as exc:
                    log.info("run %s: cancelling %s: %s", run.run_id, chunk.batch_id, exc)
                    continue
                self._move(chunk, ChunkState.SUBMITTED, provider_status=batch.status)
                progress = True
        return progress

    def _finish_cancel(self, run: RunRecord) -> bool:
        chunks = self.store.list_chunks(run.run_id)
        if any(c.state in _AT_PROVIDER for c in chunks):  # an unresolved create too
            return False
        for chunk in chunks:
            if chunk.state in UNSUBMITTED_CHUNK_STATES or chunk.state is ChunkState.BUILDING:
                self.store.save_chunk(
                    dataclasses.replace(
                        chunk, state=ChunkState.COLLECTED, provider_status="not_submitted"
                    ),
                    expected=chunk.state,
                )
        self.store.cancel_pending(run.run_id, reason=run.status_reason or "run cancelled")
        self.store.set_status(
            run.run_id,
            RunStatus.CANCELLED,
            reason=run.status_reason,
            expected=[RunStatus.CANCELLING],
        )
        return True

    def _maybe_complete(self, run_id: str) -> bool:
        run = self.store.load_run(run_id)
        if (
            run is None
            or not run.ingest_complete
            or run.status not in (RunStatus.RUNNING, RunStatus.PAUSED)
        ):
            return False
        done = run.completed_items + run.failed_items + run.cancelled_items
        if done < run.total_items:
            return False
        return self.store.set_status(
            run_id, RunStatus.COMPLETED, expected=[RunStatus.RUNNING, RunStatus.PAUSED]
        )

    # ------------------------------------------------------------------ helpers

    def _move(self, chunk: ChunkRecord, expected: ChunkState, **changes: object) -> ChunkRecord:
        updated = dataclasses.replace(chunk, **changes)  # type: ignore[arg-type]
        if not self.store.save_chunk(updated, expected=expected):
            self._changed(chunk, expected)
        return updated

    def _changed(self, chunk: ChunkRecord, expected: ChunkState) -> NoReturn:
        """A compare-and-set on ``chunk`` failed: a lost lease is a RunLeasedError, anything
        else another process working on the run."""
        self.lease.renew(chunk.run_id)
        raise ConfigurationError(
            f"chunk {chunk.chunk_id} of run {chunk.run_id} changed under us "
            f"(expected {expected.value}); is another process working on this run?",
            run_id=chunk.run_id,
        )

    def _mark_submitted(self, chunk: ChunkRecord, batch: ProviderBatch) -> None:
        self._move(
            chunk,
            ChunkState.SUBMITTING,
            state=ChunkState.SUBMITTED,
            batch_id=batch.batch_id,
            provider_status=batch.status,
            last_error=None,
            not_before=None,
            first_error_at=None,
        )

    def _reload(self, chunk: ChunkRecord) -> ChunkRecord:
        found = (c for c in self.store.list_chunks(chunk.run_id) if c.chunk_id == chunk.chunk_id)
        return next(found, chunk)

    def _stall(self, run: RunRecord, chunk: ChunkRecord, exc: StallError, what: str) -> float:
        """Charge a provider or artifact-store error to ``chunk``: back off, or pause the
        run when its streak of errors is over budget (see :mod:`batchor_core.stalls`); return the
        backoff in seconds."""
        now = self.clock.now()
        started = chunk.first_error_at or now
        decision = self.stalls.decide(exc, first_error_at=chunk.first_error_at, now=now, what=what)
        self._defer(chunk, exc, decision.delay_seconds, first_error_at=started)
        if decision.pause_reason is not None:
            if run.status is RunStatus.CANCELLING and chunk.state in _AT_PROVIDER:
                # A run being cancelled cannot pause: it would never finish cancelling. Give
                # the batch (unreadable, or not found) up; its items are cancelled too.
                self._abandon(chunk, decision.pause_reason)
            else:
                self._pause(run, decision.pause_reason)
        return decision.delay_seconds

    def _abandon(self, chunk: ChunkRecord, reason: str) -> None:
        current = self._reload(chunk)
        if current.state in _AT_PROVIDER and self.store.save_chunk(
            dataclasses.replace(
                current, state=ChunkState.COLLECTED, provider_status="abandoned", not_before=None
            ),
            expected=current.state,
        ):
            log.warning(
                "run %s: gave up batch %s while cancelling: %s",
                chunk.run_id,
                chunk.batch_id,
                reason,
            )

    def _defer(
        self,
        chunk: ChunkRecord,
        exc: StallError,
        delay: float,
        *,
        first_error_at: datetime | None,
    ) -> None:
        not_before = self.clock.now() + timedelta(seconds=delay)
        if chunk.state is ChunkState.SUBMITTING and chunk.not_before is not None:
            not_before = max(not_before, chunk.not_before)  # keep the create's grace period
        deferred = dataclasses.replace(
            chunk,
            not_before=not_before,
            last_error=exc.message[:2000],
            first_error_at=first_error_at,
        )
        self.store.save_chunk(deferred, expected=chunk.state)
        log.info(
            "run %s: chunk %s deferred %.1fs: %s", chunk.run_id, chunk.chunk_id, delay, exc.message
        )
