"""build_batchor_sensor: advance in-flight runs, request one collecting run per finished run.

Every tick lists the uncollected runs owned by the sensor's assets (in the batchor store,
not in Dagster), advances in-flight ones one bounded step each until the time budget is
spent (round-robin through a cursor, so hundreds of runs are all visited over a few
ticks), and asks Dagster for one run of the owning asset (and partition) per finished
run, with ``run_key = "<run id>:collect"``. Everything a tick does is idempotent: a tick
that timed out may already have advanced runs, and the next tick carries on.
"""

# No ``from __future__ import annotations``: Dagster inspects the sensor function.

import hashlib
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from batchor_core import BatchorError, BatchRunner, MemoryStateStore, RunLeasedError, RunSummary

from .constants import (
    COLLECT_ATTEMPT_TAG,
    COLLECT_FOR_TAG,
    DEFAULT_RESOURCE_KEY,
    MANAGED_METADATA_KEY,
    RUN_ID_TAG,
    SUPERSEDED_PREFIX,
)
from .ids import tag_value
from .metadata import observation
from .resource import BatchorResource

__all__ = ["build_batchor_sensor"]

_ACTIVE_RUN_STATUSES = frozenset(
    {
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
        dg.DagsterRunStatus.CANCELING,
    }
)
_FAILED_RUN_STATUSES = frozenset({dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED})
_ORPHAN_WINDOW = timedelta(days=2)  # how far back collections are checked for dead collectors


@dataclass(frozen=True)
class _Target:
    key: dg.AssetKey
    op_name: str
    partitions_def: dg.PartitionsDefinition | None


def build_batchor_sensor(
    assets: Sequence[dg.AssetsDefinition],
    *,
    name: str | None = None,
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    time_budget_seconds: float = 40.0,
    max_collect_attempts: int = 3,
    resource_key: str = DEFAULT_RESOURCE_KEY,
    description: str | None = None,
    max_workers: int = 4,
    slow_collect_seconds: float = 3600.0,
) -> dg.SensorDefinition:
    """A sensor that drives the batchor runs of ``assets`` between Dagster runs.

    Args:
        assets: Assets built by :func:`batchor_asset`; runs owned by other assets are
            never touched.
        name: Sensor name (default ``<asset>_batchor_sensor`` for one asset, else
            ``batchor_sensor_<digest of the asset keys>``, so two sensors never clash).
        minimum_interval_seconds: Seconds between ticks.
        default_status: Whether the sensor runs as soon as the code location loads.
        time_budget_seconds: How long a tick may spend advancing runs (Dagster stops a
            tick after 60 s by default); the slowest single step can add to it.
        max_collect_attempts: Collecting runs requested per finished run before the
            sensor gives up on it and says so (a failed one gets a new ``run_key``).
        resource_key: Key of the :class:`BatchorResource`.
        description: Sensor description.
        max_workers: Runs advanced at once (threads; each run is one store transaction
            and provider call after another, so waiting overlaps).
        slow_collect_seconds: A collecting run still going after this long is reported
            in the tick (a killed worker stays "started" until run monitoring fails it).
    """
    if not assets:
        raise dg.DagsterInvalidDefinitionError("build_batchor_sensor needs at least one asset")
    if max_workers < 1:
        raise dg.DagsterInvalidDefinitionError("max_workers must be at least 1")
    if max_collect_attempts < 1:
        raise dg.DagsterInvalidDefinitionError("max_collect_attempts must be at least 1")
    targets = _targets(assets)

    @dg.sensor(
        name=name or _default_name(targets),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        asset_selection=[t.key for t in targets.values()],
        required_resource_keys={resource_key},
        description=description
        or "Advances in-flight batchor runs and requests one collecting run per finished run.",
    )
    def _batchor_sensor(context: dg.SensorEvaluationContext, **_given: Any) -> dg.SensorResult:
        # Direct invocation (tests, ``sensor(context)``) also passes the required resources
        # as keyword arguments; the daemon does not. Both read it from the context.
        resource: BatchorResource = getattr(context.resources, resource_key)
        tick = _Tick(
            context=context,
            runner=resource.get_runner(),
            targets=targets,
            deadline=time.monotonic() + time_budget_seconds,
            max_attempts=max_collect_attempts,
            slow_collect_seconds=slow_collect_seconds,
            # The memory store is one connection: advance its runs one at a time.
            workers=1
            if isinstance(resource.get_runner().storage, MemoryStateStore)
            else max_workers,
        )
        return tick.evaluate()

    return _batchor_sensor


def _default_name(targets: dict[str, _Target]) -> str:
    if len(targets) == 1:
        (only,) = targets.values()
        return f"{'__'.join(only.key.path)}_batchor_sensor"
    digest = hashlib.sha256("\n".join(sorted(targets)).encode()).hexdigest()[:8]
    return f"batchor_sensor_{digest}"


def _targets(assets: Sequence[dg.AssetsDefinition]) -> dict[str, _Target]:
    targets: dict[str, _Target] = {}
    for asset in assets:
        if not isinstance(asset, dg.AssetsDefinition) or len(asset.keys) != 1:
            raise dg.DagsterInvalidDefinitionError(
                f"build_batchor_sensor takes assets built by batchor_asset, got {asset!r}"
            )
        if not asset.metadata_by_key[asset.key].get(MANAGED_METADATA_KEY):
            raise dg.DagsterInvalidDefinitionError(
                f"asset {asset.key.to_user_string()} was not built by batchor_asset"
            )
        targets[asset.key.to_user_string()] = _Target(
            asset.key, asset.op.name, asset.partitions_def
        )
    return targets


@dataclass
class _Tick:
    context: dg.SensorEvaluationContext
    runner: BatchRunner
    targets: dict[str, _Target]
    deadline: float
    max_attempts: int
    slow_collect_seconds: float = 3600.0
    workers: int = 1

    def evaluate(self) -> dg.SensorResult:
        mine = [s for s in self.runner.list_runs(collected=False) if self._target(s)]
        live = [s for s in mine if not s.status.is_terminal]
        refreshed, events, cursor = self._advance(live)
        current = [refreshed.get(s.run_id, s) for s in mine]
        finished = [s for s in current if s.status.is_terminal]
        orphans, slow = self._orphaned_collections()
        finished.extend(orphans)
        requests: list[dg.RunRequest] = []
        adds: dict[str, set[str]] = {}
        given_up: list[str] = list(slow)
        for summary in finished:
            request = self._collect_request(summary)
            if request is None:
                continue
            if isinstance(request, str):
                given_up.append(request)
                continue
            requests.append(request)
            self._add_partition_if_missing(summary, adds)
        for line in given_up:
            self.context.log.warning(line)
        return dg.SensorResult(
            run_requests=requests,
            skip_reason=None if requests else self._skip_reason(current, given_up),
            cursor=cursor,
            dynamic_partitions_requests=[
                dg.AddDynamicPartitionsRequest(partitions_def_name=n, partition_keys=sorted(k))
                for n, k in sorted(adds.items())
            ],
            asset_events=events,
        )

    # ------------------------------------------------------------------ advancing

    def _advance(
        self, live: list[RunSummary]
    ) -> tuple[dict[str, RunSummary], list[dg.AssetObservation], str | None]:
        """Refresh runs round-robin from the cursor until the budget is spent (at least
        one per tick, so a tick always moves something), ``workers`` at a time."""
        refreshed: dict[str, RunSummary] = {}
        cursor = self.context.cursor
        order = _rotate(live, cursor)
        # After the first round (one run per worker, side by side), a run is not started
        # when a provider that stopped answering could hold it past the budget (a poll
        # gives up at the first call with no answer, so about one call's timeout): the
        # tick ends near its budget and says why, instead of running into Dagster's
        # limit and being cut off with its side effects done and its reason lost.
        config = getattr(self.runner.provider, "config", None)
        call = float(getattr(config, "timeout_seconds", 0.0) or 0.0)
        if len(order) > self.workers and call >= self.deadline - time.monotonic():
            self.context.log.warning(
                f"batchor: the tick's budget is not longer than one provider call's timeout "
                f"({call:g} s): it advances {min(self.workers, len(order))} of "
                f"{len(order)} runs; give the sensor a longer time_budget_seconds or the "
                "resource a shorter openai_timeout_seconds"
            )
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="batchor") as pool:
            pending: dict[Future[RunSummary], RunSummary] = {}
            queue = iter(order)
            started = 0
            while True:
                while len(pending) < self.workers and (
                    started == 0 or self._may_start(started, call)
                ):
                    summary = next(queue, None)
                    if summary is None:
                        break
                    pending[pool.submit(self._refresh_one, summary)] = summary
                    cursor = summary.run_id
                    started += 1
                if not pending:
                    break
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    before = pending.pop(future)
                    refreshed[before.run_id] = future.result()
        events = []
        for before in order:
            after = refreshed.get(before.run_id)
            if after is None or after.status.is_terminal or not _progressed(before, after):
                continue
            target = self._target(after)
            assert target is not None
            partition = _partition(after) if target.partitions_def else None
            events.append(observation(target.key, partition, after))
        return refreshed, events, cursor

    def _may_start(self, started: int, call: float) -> bool:
        """Whether another run may be advanced in this tick: within the budget, and
        after the first round of workers (side by side, at no extra wall time) only when
        one more provider call would still end inside it."""
        left = self.deadline - time.monotonic()
        return left > 0 and (started < self.workers or call < left)

    def _refresh_one(self, summary: RunSummary) -> RunSummary:
        try:
            return self.runner.get_run(summary.run_id).refresh(max_collect=1)
        except RunLeasedError:
            return summary  # someone else is advancing it
        except BatchorError as exc:
            self.context.log.warning(f"batchor: run {summary.run_id!r}: {exc.message}")
            return summary

    # ------------------------------------------------------------------ collecting

    def _collect_request(self, summary: RunSummary) -> dg.RunRequest | str | None:
        """The collecting run to request, None while one is under way, or a line saying
        the sensor gave up on the run."""
        target = self._target(summary)
        assert target is not None
        tag = tag_value(summary.run_id)
        previous = self.context.instance.get_runs(
            filters=dg.RunsFilter(tags={COLLECT_FOR_TAG: tag})
        )
        if any(r.status in _ACTIVE_RUN_STATUSES for r in previous):
            return None
        attempt = len(previous) + 1
        if attempt > self.max_attempts:
            last = previous[0].run_id if previous else "?"
            return (
                f"batchor: run {summary.run_id!r} finished but {len(previous)} collecting runs "
                f"did not materialize it (last: Dagster run {last}); fix the cause and "
                f"materialize {target.key.to_user_string()} with run config run_id="
                f"{summary.run_id!r}"
            )
        partition = _partition(summary) if target.partitions_def is not None else None
        return dg.RunRequest(
            run_key=f"{summary.run_id}:collect" + (f":{attempt}" if attempt > 1 else ""),
            asset_selection=[target.key],
            partition_key=partition,
            run_config={"ops": {target.op_name: {"config": {"run_id": summary.run_id}}}},
            tags={
                RUN_ID_TAG: tag,
                COLLECT_FOR_TAG: tag,
                COLLECT_ATTEMPT_TAG: str(attempt),
            },
        )

    def _orphaned_collections(self) -> tuple[list[RunSummary], list[str]]:
        """Recently collected runs whose collecting Dagster run failed or was cancelled
        before it recorded the materialization (the asset takes such runs over), and lines
        about collecting runs that have been going for suspiciously long (a killed worker
        stays "started" until Dagster's run monitoring marks it failed)."""
        since = datetime.now(UTC) - _ORPHAN_WINDOW
        recent = [
            s
            for s in self.runner.list_runs(collected=True, collected_after=since)
            if self._target(s) and not (s.collected_by or "").startswith(SUPERSEDED_PREFIX)
        ][-200:]
        if not recent:
            return [], []
        holders = {s.collected_by for s in recent if s.collected_by}
        records = self.context.instance.get_run_records(
            filters=dg.RunsFilter(run_ids=sorted(holders))
        )
        failed = {
            r.dagster_run.run_id for r in records if r.dagster_run.status in _FAILED_RUN_STATUSES
        }
        now = time.time()
        slow = [
            f"batchor: collecting run {r.dagster_run.run_id} has been "
            f"{r.dagster_run.status.value.lower()} for {(now - started) / 60:.0f} min; if its "
            "process died, mark the run failed (or enable run monitoring) and the next tick "
            "takes the batchor run over"
            for r in records
            if r.dagster_run.status in _ACTIVE_RUN_STATUSES
            and (started := r.start_time or r.create_timestamp.timestamp())
            and now - started > self.slow_collect_seconds
        ]
        orphans = []
        for summary in recent:
            if summary.collected_by not in failed:
                continue
            target = self._target(summary)
            assert target is not None and summary.collected_by is not None
            logs = self.context.instance.all_logs(
                summary.collected_by, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            )
            if not any(
                e.dagster_event is not None and e.dagster_event.asset_key == target.key
                for e in logs
            ):
                orphans.append(replace(summary, collected_by=None))
        return orphans, slow

    def _add_partition_if_missing(self, summary: RunSummary, adds: dict[str, set[str]]) -> None:
        target = self._target(summary)
        partitions = target.partitions_def if target else None
        partition = _partition(summary)
        if not isinstance(partitions, dg.DynamicPartitionsDefinition) or partition is None:
            return
        assert partitions.name is not None
        if not self.context.instance.has_dynamic_partition(partitions.name, partition):
            adds.setdefault(partitions.name, set()).add(partition)

    # ------------------------------------------------------------------ reporting

    def _skip_reason(self, runs: Iterable[RunSummary], given_up: list[str]) -> str:
        runs = list(runs)
        live = [s for s in runs if not s.status.is_terminal]
        if not runs and not given_up:
            return "no uncollected batchor runs for these assets"
        total = sum(s.total_items for s in live)
        done = sum(s.total_items - s.pending_items for s in live)
        parts = []
        paused = [s for s in live if s.status.value == "paused"]
        # A run whose ingest stopped (bad input, a failed build_items) moves only when
        # its asset is materialized again: not in flight.
        stopped = [s for s in live if s.status.value == "ingesting" and s.status_reason]
        moving = [s for s in live if s not in paused and s not in stopped]
        if moving:
            parts.append(
                f"{len(moving)} batchor runs in flight ({done}/{total} items done, "
                f"{sum(s.batches_in_flight for s in live)} batches at the provider)"
            )
        if paused:
            first = paused[0]
            parts.append(
                f"{len(paused)} paused (e.g. {first.run_id!r}: {first.status_reason}; once "
                f"the cause is fixed: batchor resume {first.run_id})"
            )
        if stopped:
            first = stopped[0]
            parts.append(
                f"{len(stopped)} stopped reading their items (e.g. {first.run_id!r}: "
                f"{first.status_reason}); materialize the asset again to go on"
            )
        budget = [s for s in live if s.waiting_reason]
        if budget:
            first = budget[0]
            parts.append(f"{len(budget)} waiting (e.g. {first.run_id!r}: {first.waiting_reason})")
        waiting = len(runs) - len(live) - sum(1 for g in given_up if "finished but" in g)
        if waiting > 0:
            parts.append(f"{waiting} finished, collecting runs under way")
        if given_up:
            parts.append(f"{len(given_up)} finished runs need attention (see the tick log)")
            parts.append(given_up[0].removeprefix("batchor: "))
        stalled = [s for s in live if s.last_error and s.status.value != "paused"]
        if stalled:
            first = stalled[0]
            parts.append(
                f"{len(stalled)} retrying after provider errors (e.g. {first.run_id!r}: "
                f"{first.last_error})"
            )
        return "; ".join(parts) or "nothing to do"

    def _target(self, summary: RunSummary) -> _Target | None:
        owner: Any = summary.owner or {}
        return self.targets.get(str(owner.get("asset"))) if isinstance(owner, dict) else None


def _partition(summary: RunSummary) -> str | None:
    owner: Any = summary.owner or {}
    value = owner.get("partition") if isinstance(owner, dict) else None
    return None if value is None else str(value)


def _rotate(runs: list[RunSummary], cursor: str | None) -> list[RunSummary]:
    """Runs after the cursor first, then the rest: every run gets its turn."""
    ordered = sorted(runs, key=lambda s: s.run_id)
    if not cursor:
        return ordered
    return [s for s in ordered if s.run_id > cursor] + [s for s in ordered if s.run_id <= cursor]


def _progressed(before: RunSummary, after: RunSummary) -> bool:
    return (
        before.status != after.status
        or before.pending_items != after.pending_items
        or before.batches_in_flight != after.batches_in_flight
        or before.batches_total != after.batches_total
    )
