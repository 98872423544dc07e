"""batchor_asset: an asset whose every Dagster run submits or collects, in seconds.

A run of the asset never waits on the provider. It finds the asset's durable run (by the
id in run config, ``run_id_fn``, the partition key, or a digest of the job and items):

- absent (or half-ingested): start it, and record an observation;
- in flight: advance it one bounded step, and record an observation;
- finished and not yet collected: claim it and report the one materialization.

The batch state stays in the batchor store; :func:`build_batchor_sensor` advances runs
between Dagster runs and requests the collecting run when one finishes.
"""

# No ``from __future__ import annotations`` in this module: Dagster reads the asset
# function's annotations when it is decorated, to inject the context and the config.

import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchorError,
    BatchRunner,
    ConfigurationError,
    JobChangedError,
    Run,
    RunConflictError,
    RunLeasedError,
    RunNotFoundError,
    RunSummary,
)
from batchor_core.jobspec import content_fingerprint, job_spec
from batchor_core.ports import ItemSource

from .constants import DEFAULT_RESOURCE_KEY, MANAGED_METADATA_KEY, RUN_ID_TAG, SUPERSEDED_PREFIX
from .ids import (
    asset_slug,
    content_run_id,
    items_digest,
    partition_run_id,
    source_digest,
    tag_value,
)
from .metadata import materialization_metadata, observation
from .resource import BatchorResource
from .results import latest_collected_run

__all__ = ["BatchorRunConfig", "batchor_asset"]

log = logging.getLogger("batchor.dagster")

BuildJob = Callable[[dg.AssetExecutionContext], BatchJob]
BuildItems = Callable[[dg.AssetExecutionContext], Iterable[BatchItem] | ItemSource]
RunIdFn = Callable[[dg.AssetExecutionContext], str]

_FAILED_RUN_STATUSES = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


class BatchorRunConfig(dg.Config):
    """Run config of a batchor asset.

    Attributes:
        run_id: The durable run to submit or collect (the sensor sets it on the runs it
            requests). Empty: derived from ``run_id_fn``, the partition key, or the job
            and items.
    """

    run_id: str | None = None


@dataclass(frozen=True)
class _Plan:
    build_job: BuildJob
    build_items: BuildItems
    run_id_fn: RunIdFn | None
    resource_key: str
    export_format: str | None
    preview_rows: int
    max_collect: int


def batchor_asset(
    *,
    name: str,
    build_job: BuildJob,
    build_items: BuildItems,
    key_prefix: str | Sequence[str] | None = None,
    group_name: str | None = None,
    deps: Iterable[Any] | None = None,
    partitions_def: dg.PartitionsDefinition | None = None,
    run_id_fn: RunIdFn | None = None,
    description: str | None = None,
    tags: Mapping[str, str] | None = None,
    owners: Sequence[str] | None = None,
    kinds: set[str] | None = None,
    pool: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    automation_condition: dg.AutomationCondition[Any] | None = None,
    resource_key: str = DEFAULT_RESOURCE_KEY,
    io_manager_key: str | None = None,
    export_format: str | None = "parquet",
    preview_rows: int = 5,
    max_collect_per_step: int = 4,
) -> dg.AssetsDefinition:
    """An asset that runs a batchor job: submit-or-collect, one materialization per run.

    Args:
        name: Asset name.
        build_job: ``build_job(context) -> BatchJob``.
        build_items: ``build_items(context)`` -> an iterable of :class:`BatchItem`, or an
            item source (``CsvSource``, ``JsonlSource``, ``ParquetSource``, ...). Called
            only when the run has to be started (or its id derived from its items).
        key_prefix: Asset key prefix.
        group_name: Asset group.
        deps: Upstream assets this one depends on without loading them.
        partitions_def: Partitions; each partition is one durable run.
        run_id_fn: ``run_id_fn(context) -> str``: your own durable run id.
        description: Asset description.
        tags: Asset definition tags.
        owners: Asset owners.
        kinds: Kinds shown in the UI (default ``{"openai"}``).
        pool: Concurrency pool.
        metadata: Definition metadata.
        automation_condition: Declarative automation condition.
        resource_key: Key of the :class:`BatchorResource`.
        io_manager_key: IO manager downstream assets load results with (for example
            ``"batchor_results"`` bound to :class:`BatchorResultsIOManager`).
        export_format: Results file written at materialization (``parquet``, ``jsonl``,
            ``csv``) and shown as ``dagster/uri``; None writes none.
        preview_rows: Rows in the markdown preview of the materialization.
        max_collect_per_step: Most finished batches one Dagster run downloads.

    Returns:
        The asset definition (run config: :class:`BatchorRunConfig`).
    """
    if export_format not in (None, "parquet", "jsonl", "csv"):
        raise ConfigurationError(
            f"export_format must be parquet, jsonl, csv or None, not {export_format!r}"
        )
    plan = _Plan(
        build_job=build_job,
        build_items=build_items,
        run_id_fn=run_id_fn,
        resource_key=resource_key,
        export_format=export_format,
        preview_rows=preview_rows,
        max_collect=max_collect_per_step,
    )

    @dg.asset(
        name=name,
        key_prefix=key_prefix,
        group_name=group_name,
        deps=deps,
        partitions_def=partitions_def,
        description=description or f"OpenAI Batch results, run durably by batchor ({name}).",
        tags=dict(tags) if tags else None,
        owners=owners,
        kinds={"openai"} if kinds is None else set(kinds),
        pool=pool,
        metadata={**(metadata or {}), MANAGED_METADATA_KEY: True},
        automation_condition=automation_condition,
        output_required=False,
        required_resource_keys={resource_key},
        io_manager_key=io_manager_key,
    )
    def _batchor_asset(
        context: dg.AssetExecutionContext, config: BatchorRunConfig
    ) -> Iterator[dg.MaterializeResult[Any] | dg.AssetObservation]:
        yield from _submit_or_collect(context, config, plan)

    return _batchor_asset


# --------------------------------------------------------------------------- one run


def _submit_or_collect(
    context: dg.AssetExecutionContext, config: BatchorRunConfig, plan: _Plan
) -> Iterator[dg.MaterializeResult[Any] | dg.AssetObservation]:
    resource: BatchorResource = getattr(context.resources, plan.resource_key)
    runner = resource.get_runner()
    key = context.asset_key
    partition = context.partition_key if context.has_partition_key else None
    owner = {"asset": key.to_user_string(), "partition": partition}
    job = _build_job(context, plan)
    items: Any = None
    run_id = _given_run_id(context, config, plan)
    if run_id is None and partition is not None:
        # A partition has one durable run: one started outside Dagster for this
        # partition (core API, CLI) is that run; else it is named after the partition.
        run_id = _owned_run_id(runner, owner) or partition_run_id(key.path, partition)
    # Named from the job and items in the code now (not given, not a partition's): this
    # run is the asset's value to be, whatever an earlier job left.
    current = run_id is None
    if run_id is None:
        items, digest = _identify(_build_items(context, plan))
        run_id = _content_run_id(runner, key.path, owner, job, digest)
    summary = _find(runner, run_id)
    if summary is not None:
        _check_owner(summary, owner)
    note: str | None = None
    if summary is None or (not summary.ingest_complete and not summary.status.is_terminal):
        if items is None:
            items = _build_items(context, plan)
        try:
            run = _start(context, runner, job, items, run_id, owner)
        except RunLeasedError:
            note = "another process is reading this run's items right now"
            context.log.info(f"batchor: {note} (run {run_id!r})")
            run = runner.get_run(run_id)
    else:
        run = _handle(context, runner, run_id, job)
        if not summary.status.is_terminal:
            try:
                run.refresh(max_collect=plan.max_collect)
            except RunLeasedError:
                note = "another process is advancing this run right now"
            except BatchorError as exc:
                raise _failure(f"could not advance durable run {run_id!r}", exc) from exc
    if summary is None or current:
        # A new run, or the run the code names now (a reverted job too): the asset's
        # other runs not collected yet will never be its value.
        _supersede(context, runner, owner, run_id)
    summary = run.summary()
    if summary.status.is_terminal:
        yield from _collect(
            context,
            resource,
            run,
            summary,
            plan,
            partitioned=partition is not None,
            current=current,
        )
        return
    _log_progress(context, summary)
    yield observation(key, partition, summary, note=note)


def _build_job(context: dg.AssetExecutionContext, plan: _Plan) -> BatchJob:
    job = plan.build_job(context)
    if not isinstance(job, BatchJob):
        raise dg.Failure(
            description=f"build_job must return a batchor_core.BatchJob, got {type(job).__name__}"
        )
    return job


def _build_items(context: dg.AssetExecutionContext, plan: _Plan) -> Any:
    try:
        items = plan.build_items(context)
    except BatchorError as exc:  # e.g. a missing or unreadable input file
        raise _failure("build_items failed", exc) from exc
    if items is None:
        raise dg.Failure(
            description="build_items returned None; return BatchItem objects or an item "
            "source (CsvSource, JsonlSource, ParquetSource, ...)"
        )
    return items


def _given_run_id(
    context: dg.AssetExecutionContext, config: BatchorRunConfig, plan: _Plan
) -> str | None:
    """The run id from run config, else from ``run_id_fn``; None when neither gives one."""
    if config.run_id is not None:
        given: object = config.run_id
        source = "run config run_id"
    elif plan.run_id_fn is not None:
        given = plan.run_id_fn(context)
        source = "run_id_fn"
    else:
        return None
    if not isinstance(given, str) or not given.strip():
        raise dg.Failure(
            description=f"{source} gave {given!r}; a durable run id is a non-empty string "
            "(the same id resumes the same run)"
        )
    return given


def _owned_run_id(runner: BatchRunner, owner: Mapping[str, Any]) -> str | None:
    """The newest live-or-collected run owned by exactly this asset partition, if any."""
    runs = [
        s
        for s in runner.list_runs(owner=owner)
        if not (s.collected_by or "").startswith(SUPERSEDED_PREFIX)
    ]
    return runs[-1].run_id if runs else None


def _supersede(
    context: dg.AssetExecutionContext,
    runner: BatchRunner,
    owner: Mapping[str, Any],
    current: str,
) -> None:
    """Older uncollected runs of this asset partition will never be its latest data:
    mark them so no sensor collects them, and cancel those still spending."""
    for old in runner.list_runs(owner=owner, collected=False):
        if old.run_id == current:
            continue
        handle = runner.get_run(old.run_id)
        if not handle.mark_collected(f"{SUPERSEDED_PREFIX}{current}"):
            continue
        if not old.status.is_terminal:
            try:
                handle.cancel(f"superseded by run {current} (its inputs changed)")
            except BatchorError as exc:
                context.log.warning(f"batchor: could not cancel superseded run: {exc.message}")
        context.log.info(
            f"batchor: run {old.run_id!r} is superseded by {current!r} and will not be materialized"
        )


def _identify(source: Any) -> tuple[Any, str]:
    """The items to start with, and a digest of what they are."""
    if hasattr(source, "read_slices") and hasattr(source, "identity"):
        return source, source_digest(source.identity())
    if isinstance(source, (str, bytes, Mapping)):
        raise dg.Failure(
            description="build_items must return BatchItem objects or an item source "
            f"(CsvSource, JsonlSource, ...), not {type(source).__name__}"
        )
    try:
        return items_digest(source)
    except TypeError as exc:
        raise dg.Failure(description=str(exc)) from exc


def _content_run_id(
    runner: BatchRunner,
    path: Sequence[str],
    owner: Mapping[str, Any],
    job: BatchJob,
    digest: str,
) -> str:
    """The run id of an unpartitioned asset's job and items. It digests what the job
    does, not where its output model is defined: moving the model to another module
    (a script made a package) resumes the run instead of submitting it again. A run
    named by the full fingerprint, as before that, is kept.

    A run of this job and items that a later job superseded before it finished (its
    batches were cancelled) cannot give the asset this job's results: the job back in
    the code (a reverted prompt) starts the next run of it instead.
    """
    spec, _ = job_spec(job, runner.provider)
    content = content_fingerprint(spec)
    run_id = content_run_id(path, content, digest)
    found = _find(runner, run_id)
    if found is None:
        earlier = _named_the_earlier_way(runner, path, owner, content, digest)
        if earlier is not None and not _cut_short_by_a_later_job(earlier):
            return earlier.run_id
    for generation in range(2, 1000):
        if found is None or not _cut_short_by_a_later_job(found):
            return run_id
        run_id = content_run_id(path, f"{content}/{generation}", digest)
        found = _find(runner, run_id)
    return run_id


def _named_the_earlier_way(
    runner: BatchRunner, path: Sequence[str], owner: Mapping[str, Any], content: str, digest: str
) -> RunSummary | None:
    """This job and items' run as named before run ids left out the output model's
    module (by its full fingerprint, module included, whichever module that was)."""
    for summary in reversed(runner.list_runs(owner=owner)):
        record = runner.storage.load_run(summary.run_id)
        if (
            record is not None
            and summary.run_id == content_run_id(path, record.job_fingerprint, digest)
            and content_fingerprint(record.job_spec) == content
        ):
            return summary
    return None


def _cut_short_by_a_later_job(summary: RunSummary) -> bool:
    return (summary.collected_by or "").startswith(SUPERSEDED_PREFIX) and (
        summary.status.value == "cancelled" or summary.cancelled_items > 0
    )


def _find(runner: BatchRunner, run_id: str) -> RunSummary | None:
    try:
        return runner.get_run(run_id).summary()
    except RunNotFoundError:
        return None


def _check_owner(summary: RunSummary, owner: Mapping[str, Any]) -> None:
    actual = dict(summary.owner or {})
    if actual.get("asset") == owner["asset"] and actual.get("partition") == owner["partition"]:
        return
    whose = f"belongs to {actual}" if actual else "belongs to no asset"
    raise dg.Failure(
        description=(
            f"durable run {summary.run_id!r} {whose}, not to {dict(owner)}; give this asset "
            "its own run id (or start the run with owner=" + repr(dict(owner)) + ")"
        )
    )


def _start(
    context: dg.AssetExecutionContext,
    runner: BatchRunner,
    job: BatchJob,
    items: Any,
    run_id: str,
    owner: Mapping[str, Any],
) -> Run:
    context.log.info(f"batchor: starting durable run {run_id!r}")

    def progress(summary: RunSummary) -> None:
        context.log.info(
            f"batchor: run {run_id!r} ingested {summary.total_items} items "
            f"({summary.batches_total} batches prepared)"
        )

    try:
        return runner.start(
            job, items=items, run_id=run_id, owner=dict(owner), on_progress=progress
        )
    except RunLeasedError:
        raise  # someone else is reading its items: not a failure of this run
    except RunConflictError as exc:
        raise _failure(
            f"durable run {run_id!r} already exists with other inputs; resume it with the "
            "original job and items, or pass a new run id (run config run_id)",
            exc,
        ) from exc
    except BatchorError as exc:
        raise _failure(f"could not start durable run {run_id!r}", exc) from exc


def _handle(
    context: dg.AssetExecutionContext, runner: BatchRunner, run_id: str, job: BatchJob
) -> Run:
    try:
        return runner.get_run(run_id, job=job)
    except JobChangedError as exc:
        # The run keeps the job it started with; a new job only applies to new runs.
        context.log.warning(
            f"batchor: the job differs from the one run {run_id!r} started with "
            f"({exc.message.split(': ', 1)[-1].split('. Use the', 1)[0]}); the run keeps "
            "its own job, and a new job applies to new runs"
        )
        return runner.get_run(run_id)


def _failure(what: str, exc: BatchorError) -> dg.Failure:
    message = exc.message
    if "OPENAI_API_KEY" in message:
        message += (
            " (with Dagster: BatchorResource(openai_api_key=dg.EnvVar('OPENAI_API_KEY')), or "
            "set OPENAI_API_KEY where the runs execute)"
        )
    return dg.Failure(description=f"{what}: {message}")


def _log_progress(context: dg.AssetExecutionContext, summary: RunSummary) -> None:
    done = summary.total_items - summary.pending_items
    line = (
        f"batchor: run {summary.run_id!r} is {summary.status.value}: {done}/"
        f"{summary.total_items} items done, {summary.batches_in_flight} batches in flight"
    )
    if summary.status.value == "paused":
        context.log.warning(
            f"{line}; reason: {summary.status_reason}. Once the cause is fixed, resume it: "
            f"batchor resume {summary.run_id} (or runner.resume(run_id) in Python)"
        )
    elif summary.status_reason:
        context.log.warning(f"{line}; reason: {summary.status_reason}")
    elif summary.last_error:
        context.log.warning(f"{line}; retrying after: {summary.last_error}")
    else:
        context.log.info(line + "; the sensor collects it when it finishes")


# --------------------------------------------------------------------------- collect


def _collect(
    context: dg.AssetExecutionContext,
    resource: BatchorResource,
    run: Run,
    summary: RunSummary,
    plan: _Plan,
    *,
    partitioned: bool,
    current: bool = False,
) -> Iterator[dg.MaterializeResult[Any] | dg.AssetObservation]:
    me = context.run.run_id
    key = context.asset_key
    partition = context.partition_key if partitioned else None
    replace: str | None = None
    holder = summary.collected_by
    if holder is not None and holder != me:
        if current and _not_the_assets_value(context, resource, run, summary, holder, partition):
            # This job and items are what the code asks for now, and their results are
            # whole, but the asset holds a later job's (a prompt changed, then reverted):
            # materialize them again, at no cost at the provider.
            context.log.info(
                f"batchor: run {run.run_id!r} is materialized again: the asset holds "
                "another run's results"
            )
            replace = holder
        elif not _failed_without_materializing(context.instance, holder, key):
            note = _holder_note(context.instance, holder)
            context.log.info(f"batchor: run {run.run_id!r} is {note}")
            yield observation(key, partition, summary, note=note)
            return
        else:
            replace = holder  # that collector died before it materialized: take over
    if not run.mark_collected(me, replace=replace):
        now = run.summary()
        note = f"collected concurrently by {now.collected_by}"
        yield observation(key, partition, now, note=note)
        return
    try:
        export_path = _export(resource, run, key, plan.export_format)
        metadata = materialization_metadata(
            run,
            summary,
            partitioned=partitioned,
            export_path=export_path,
            preview_rows=plan.preview_rows,
        )
    except BaseException:
        run.release_collection(me)  # let the next attempt collect it
        raise
    context.log.info(
        f"batchor: run {run.run_id!r} {summary.status.value}: {summary.completed_items} "
        f"completed, {summary.failed_items} failed, {summary.cancelled_items} cancelled"
    )
    yield dg.MaterializeResult(metadata=metadata, tags={RUN_ID_TAG: tag_value(run.run_id)})


def _not_the_assets_value(
    context: dg.AssetExecutionContext,
    resource: BatchorResource,
    run: Run,
    summary: RunSummary,
    holder: str,
    partition: str | None,
) -> bool:
    """Whether a collected run with whole results is not the asset's current value: it
    was superseded, or another run was collected after it."""
    if summary.status.value != "completed" or summary.cancelled_items:
        return False
    if holder.startswith(SUPERSEDED_PREFIX):
        return True  # never materialized
    try:
        record = context.instance.get_run_by_id(holder)
    except Exception:  # not a run id this instance knows how to read
        return False
    if record is None or record.status != dg.DagsterRunStatus.SUCCESS:
        return False  # collected outside Dagster, or its collector is still at it
    latest = latest_collected_run(resource.get_runner(), context.asset_key, partition)
    return latest is not None and latest.run_id != run.run_id


def _holder_note(instance: dg.DagsterInstance, holder: str) -> str:
    """Who collected the run, in words."""
    if holder.startswith(SUPERSEDED_PREFIX):
        return f"superseded by run {holder[len(SUPERSEDED_PREFIX) :]!r}; not materialized"
    try:
        record = instance.get_run_by_id(holder)
    except Exception:
        record = None
    if record is None:
        return f"already collected by {holder}"
    if record.status == dg.DagsterRunStatus.SUCCESS:
        return f"already materialized by Dagster run {holder}"
    return f"being materialized by Dagster run {holder} ({record.status.value})"


def _failed_without_materializing(
    instance: dg.DagsterInstance, holder: str, key: dg.AssetKey
) -> bool:
    """Whether the collector ``holder`` is a Dagster run that ended badly before it
    recorded the materialization (a marker set outside Dagster is always respected)."""
    if holder.startswith(SUPERSEDED_PREFIX):
        return False
    try:
        record = instance.get_run_by_id(holder)
    except Exception:  # not a run id this instance knows how to read
        return False
    if record is None or record.status not in _FAILED_RUN_STATUSES:
        return False
    events = instance.all_logs(holder, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return not any(e.dagster_event is not None and e.dagster_event.asset_key == key for e in events)


def _export(resource: BatchorResource, run: Run, key: dg.AssetKey, fmt: str | None) -> str | None:
    if fmt is None:
        return None
    name = f"{tag_value(run.run_id)}.{fmt}"
    artifacts = resource.get_runner().artifacts
    url_for = getattr(artifacts, "url_for", None)
    if getattr(artifacts, "root", None) is not None or url_for is None:
        directory = Path(resource.export_dir()) / asset_slug(key.path)
        return str(run.export(directory / name, format=fmt).path)
    # Object-store artifacts: this collect run may be a short-lived pod, so the export
    # goes beside the artifacts (written locally first: Parquet needs a seekable file).
    artifact_key = f"exports/{asset_slug(key.path)}/{name}"
    with tempfile.TemporaryDirectory(prefix="batchor-export-") as scratch:
        report = run.export(Path(scratch) / name, format=fmt)
        with open(report.path, "rb") as fh:
            artifacts.write_stream(artifact_key, iter(lambda: fh.read(1024 * 1024), b""))
    return str(url_for(artifact_key))
