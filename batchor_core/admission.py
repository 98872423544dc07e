"""What may go out next: the enqueued-token budget and the cost cap, checked before
each submission (see :mod:`batchor_core.budget` for the rules).
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from batchor_core.budget import (
    MAX_TOKEN_LIMIT_STRIKES,
    chunk_cost_estimate,
    effective_limit,
    enqueue_limit,
    output_per_request,
)
from batchor_core.ports import (
    ArtifactStore,
    BatchProvider,
    BudgetHolder,
    ChunkRecord,
    ChunkState,
    ProviderBatch,
    RunRecord,
    StateStore,
)
from batchor_core.pricing import cost_of, format_usd
from batchor_core.retries import unpack_oversized

__all__ = ["SubmissionGate"]

log = logging.getLogger("batchor.run")


class SubmissionGate:
    """Decides whether a chunk may be submitted now, and tracks token-limit rejections.

    Args:
        store: Control-plane store (its reservation makes the budget atomic).
        provider: Gives the configured enqueued-token limits and prices.
        pause: Pauses a run with a reason.
        changed: Raises for a chunk whose compare-and-set failed (a lost lease, or
            another process working on the run).
        artifacts: Request files (to repack a chunk that no longer fits the limit).
        idle: Seconds after which a run holding budget that no process advances (the
            lease TTL) is named as such in the waiting reason.
    """

    def __init__(
        self,
        *,
        store: StateStore,
        provider: BatchProvider,
        pause: Callable[[RunRecord, str], None],
        changed: Callable[[ChunkRecord, ChunkState], NoReturn],
        artifacts: ArtifactStore | None = None,
        idle: float = 120.0,
    ) -> None:
        self.store = store
        self.provider = provider
        self.artifacts = artifacts
        self._idle_after = timedelta(seconds=idle)
        self._pause_run = pause
        self._changed = changed

    def token_limits(self, run: RunRecord) -> tuple[int, int] | None:
        """``(effective limit, full limit)`` of the run's model, or None (no limit)."""
        limit = enqueue_limit(run, self.provider)
        if limit is None:
            return None
        return effective_limit(limit, run.token_limit_strikes), limit

    def chunk_tokens(self, run: RunRecord) -> int | None:
        """Most estimated tokens a new (retry) chunk of the run may hold, or None."""
        limits = self.token_limits(run)
        return limits[0] if limits else None

    def reserve(self, run: RunRecord, intent: ChunkRecord) -> str | None:
        """Move ``intent`` (the chunk, now ``submitting``) into the store if the budget has
        room; return why it must wait instead (None: reserved).

        The intent doubles as the reservation: ``submitting`` chunks count as in flight,
        so the check and the move are one atomic store operation.
        """
        limits = self.token_limits(run) if intent.model is not None else None
        granted = self.store.reserve_submit(
            intent,
            expected=ChunkState.UPLOADED,
            limit=limits[0] if limits else None,
            full_limit=limits[1] if limits else None,
        )
        if granted.granted:
            return None
        waiting = self.budget_wait(run, intent, lambda _model: granted.in_flight_tokens)
        if waiting is not None:
            return waiting
        self._changed(intent, ChunkState.UPLOADED)

    def unpack_if_oversized(self, run: RunRecord, chunk: ChunkRecord, now: datetime) -> bool:
        """Give up an unsent chunk that is over the run's whole enqueued-token limit (it
        was packed for a higher limit, since lowered), so its items are repacked; it
        would otherwise wait for budget forever. Return whether it did."""
        limits = self.token_limits(run)
        if (
            limits is None
            or chunk.model is None
            or chunk.est_tokens <= limits[1]
            or self.artifacts is None
            or chunk.state not in (ChunkState.SEALED, ChunkState.UPLOADED)
        ):
            return False
        unpack_oversized(
            store=self.store,
            artifacts=self.artifacts,
            provider=self.provider,
            now=now,
            chunk=chunk,
            limit=limits[1],
        )
        return True

    def note_waiting(self, run: RunRecord, waiting: str | None) -> None:
        """Record why the run waits for budget (or that it no longer does), on change."""
        if waiting != run.waiting_reason:
            self.store.set_waiting(run.run_id, waiting)
            if waiting is not None:
                log.info("run %s: %s", run.run_id, waiting)

    def upload_wait(self, run: RunRecord, chunk: ChunkRecord) -> str | None:
        """Why a sealed chunk should not be uploaded yet (None: go ahead).

        A chunk is uploaded only once there is budget for its batch (checked again,
        atomically, when the batch is created), so no file waits at the provider for long.
        """
        if chunk.state is not ChunkState.SEALED:
            return None
        return self.budget_wait(run, chunk, self.store.in_flight_tokens)

    def budget_wait(
        self, run: RunRecord, chunk: ChunkRecord, in_flight_of: Callable[[str], int]
    ) -> str | None:
        """Why ``chunk`` cannot go out now for lack of enqueued-token budget, or None."""
        limits = self.token_limits(run)
        if limits is None or chunk.model is None:
            return None
        limit, full = limits
        in_flight = in_flight_of(chunk.model)
        if in_flight + chunk.est_tokens <= limit or (in_flight == 0 and chunk.est_tokens <= full):
            return None
        holders = self.store.budget_holders(chunk.model)
        now = datetime.now(UTC)
        idle = {
            h.run_id: None if h.last_advanced is None else now - h.last_advanced
            for h in holders
            if not h.advancing
            and h.run_id != run.run_id
            and (h.last_advanced is None or now - h.last_advanced > self._idle_after)
        }
        return waiting_message(
            chunk, in_flight, limit, full, holders=holders, idle=idle, run_id=run.run_id
        )

    def over_cost_cap(self, run: RunRecord, chunk: ChunkRecord) -> bool:
        """Pause the run (and say so) when submitting ``chunk`` could take the run's cost
        above its ``max_cost_usd``; return whether it did."""
        cap = (run.limits or {}).get("max_cost_usd")
        if cap is None:
            return False
        price, note = self.provider.price(str(run.job_spec.get("model")))
        if price is None:
            self._pause_run(run, f"max_cost_usd is set but the cost cannot be computed: {note}")
            return True
        usage = run.usage
        actual = cost_of(usage, price) or 0.0
        per_request = output_per_request(run, usage)
        in_flight = self.store.list_chunks(
            run.run_id, [ChunkState.SUBMITTING, ChunkState.SUBMITTED]
        )
        flying = chunk_cost_estimate(in_flight, price, per_request) or 0.0
        this = chunk_cost_estimate([chunk], price, per_request) or 0.0
        if actual + flying + this <= float(cap):
            return False
        usd = format_usd
        self._pause_run(
            run,
            f"the next batch would exceed max_cost_usd {usd(float(cap))} USD: cost so far "
            f"{usd(actual)} USD + batches in flight ~{usd(flying)} USD + next batch "
            f"({chunk.chunk_id}, {chunk.request_count} requests) ~{usd(this)} USD = "
            f"~{usd(actual + flying + this)} USD. Raise it to go on: "
            f"runner.resume({run.run_id!r}, max_cost_usd=...) or "
            f"batchor resume {shlex.quote(run.run_id)} --max-cost-usd USD.",
        )
        return True

    def count_token_limit_strikes(self, run_id: str, batch: ProviderBatch) -> None:
        """Count batches rejected in a row for the enqueued-token limit: each halves the
        run's effective limit (its retries are packed smaller); past the bound the run
        pauses with a reason. An accepted batch resets the count."""
        run = self.store.load_run(run_id)
        if run is None:
            return
        rejected = batch.status == "failed" and any(
            e.code == "token_limit_exceeded" for e in batch.errors
        )
        if not rejected:
            if run.token_limit_strikes and batch.status in ("completed", "expired"):
                self.store.set_token_limit_strikes(run_id, 0)
            return
        strikes = run.token_limit_strikes + 1
        self.store.set_token_limit_strikes(run_id, strikes)
        limits = self.token_limits(dataclasses.replace(run, token_limit_strikes=strikes))
        shown = f"; this run now packs batches of at most {limits[0]} tokens" if limits else ""
        log.warning(
            "run %s: batch %s rejected for the enqueued-token limit (%d in a row)%s",
            run_id,
            batch.batch_id,
            strikes,
            shown,
        )
        if strikes >= MAX_TOKEN_LIMIT_STRIKES:
            detail = "; ".join(e.message for e in batch.errors)[:500]
            self._pause_run(
                run,
                f"the provider rejected {strikes} batches in a row with token_limit_exceeded "
                f"({detail}). Other batches of this model (outside this store?) may fill the "
                "organisation's queue, or EnqueueLimit is above your tier's limit: lower it, "
                "or wait for batches to finish, then resume().",
            )


_SHOWN_HOLDERS = 3


def waiting_message(
    chunk: ChunkRecord,
    in_flight: int,
    limit: int,
    full: int,
    *,
    holders: Sequence[BudgetHolder] = (),
    idle: Mapping[str, timedelta | None] | None = None,
    run_id: str | None = None,
) -> str:
    """The ``waiting_reason`` of a run whose next batch does not fit the budget.

    It names the runs holding the budget. A batch's tokens are released only when its
    run collects it, so a run that no process advances (its process is gone, or it is
    paused and nothing waits on it) holds its share even after the provider finished
    the batch, until it is waited on or resumed (or 25 h pass): ``idle`` holds those
    runs (how long since a process last advanced them; None: not known), and saying so
    is what keeps that wait from being silent.
    """
    idle = idle or {}
    shrunk = f" (shrunk from {full} after token_limit_exceeded)" if limit != full else ""
    text = (
        f"waiting for enqueued-token budget: batch {chunk.chunk_id} needs ~{chunk.est_tokens} "
        f"tokens, {in_flight} of {limit}{shrunk} are in flight for {chunk.model} across runs "
        "in this store"
    )
    parts = []
    for holder in holders[:_SHOWN_HOLDERS]:
        who = "this run" if holder.run_id == run_id else f"run {holder.run_id!r}"
        batches = f"{holder.batches} batch{'es' if holder.batches != 1 else ''}"
        part = f"{who}: ~{holder.tokens} in {batches}, {holder.status}"
        if holder.run_id in idle:
            since = idle[holder.run_id]
            part += ", no process is advancing it" + (
                f" (last advanced {int(since.total_seconds()) // 60} min ago)" if since else ""
            )
        parts.append(part)
    if len(holders) > _SHOWN_HOLDERS:
        parts.append(f"{len(holders) - _SHOWN_HOLDERS} more runs")
    if parts:
        text += f" ({'; '.join(parts)})"
    text += "; it goes out as those batches are collected"
    if idle:
        text += (
            ". A run no process advances releases its share only once it is waited on "
            "or resumed (run.wait(), batchor wait RUN_ID), or 25 h after its batch last changed"
        )
    return text
