"""batchor_asset, really materialized: submit, observe while in flight, collect once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow.parquet as pq
import pytest

from batchor_core import BatchItem, BatchJob, BatchRunner
from batchor_dagster import (
    RUN_ID_METADATA_KEY,
    RUN_ID_TAG,
    BatchorResource,
    batchor_asset,
)
from batchor_dagster.ids import content_run_id, is_tag_safe, items_digest
from tests.dagster.conftest import (
    events_of,
    materializations,
    review_items,
    review_job,
)

pytestmark = pytest.mark.integration

OBS = "ASSET_OBSERVATION"
MAT = "ASSET_MATERIALIZATION"


def _meta(event: Any) -> dict[str, Any]:
    data = event.event_specific_data
    entry = getattr(data, "materialization", None) or getattr(data, "asset_observation", None)
    return {k: getattr(v, "value", v) for k, v in entry.metadata.items()}


def _tags(event: Any) -> dict[str, str]:
    data = event.event_specific_data
    entry = getattr(data, "materialization", None) or getattr(data, "asset_observation", None)
    return dict(entry.tags or {})


def test_submit_observe_collect_exactly_one_materialization(
    instance: dg.DagsterInstance, resources: dict[str, Any], emulator: Any
) -> None:
    items = review_items(6)
    asset = batchor_asset(name="reviews", build_job=review_job, build_items=lambda ctx: items)
    emulator.faults.hold_batches()

    first = dg.materialize([asset], resources=resources, instance=instance)
    assert first.success
    assert events_of(first, MAT) == []
    (observed,) = events_of(first, OBS)
    meta = _meta(observed)
    run_id = meta[RUN_ID_METADATA_KEY]
    assert is_tag_safe(run_id) and run_id.startswith("reviews-")
    assert _tags(observed)[RUN_ID_TAG] == run_id
    assert meta["batchor/status"] == "running" and meta["batchor/items_total"] == 6
    assert meta["batchor/batches_in_flight"] == 1 and len(meta["batchor/batch_ids"]) == 1

    second = dg.materialize([asset], resources=resources, instance=instance)
    assert events_of(second, MAT) == []
    assert _meta(events_of(second, OBS)[0])[RUN_ID_METADATA_KEY] == run_id  # same durable run
    assert emulator.batch_create_count == 1

    emulator.release_batches()
    third = dg.materialize([asset], resources=resources, instance=instance)
    (materialized,) = events_of(third, MAT)
    meta = _meta(materialized)
    assert meta[RUN_ID_METADATA_KEY] == run_id
    assert _tags(materialized)[RUN_ID_TAG] == run_id
    assert meta["batchor/status"] == "completed"
    assert meta["batchor/items_total"] == meta["batchor/items_completed"] == 6
    assert meta["batchor/items_failed"] == meta["batchor/items_cancelled"] == 0
    assert meta["dagster/row_count"] == 6
    assert meta["batchor/model"] == "gpt-4o-mini"
    assert meta["batchor/endpoint"] == "/v1/chat/completions"
    assert meta["batchor/input_tokens"] > 0 and meta["batchor/output_tokens"] > 0
    assert (
        meta["batchor/total_tokens"] == meta["batchor/input_tokens"] + meta["batchor/output_tokens"]
    )
    assert meta["batchor/finished_at"] >= meta["batchor/started_at"]
    assert meta["batchor/duration_seconds"] >= 0
    assert meta["batchor/error_codes"] == {}
    # Usage in detail and the cost (gpt-4o-mini is in the price table).
    assert meta["batchor/cached_input_tokens"] <= meta["batchor/input_tokens"]
    assert 0 <= meta["batchor/reasoning_tokens"] <= meta["batchor/output_tokens"]
    assert meta["batchor/cost_usd"] > 0 and "gpt-4o-mini" in meta["batchor/cost_note"]
    assert len(meta["batchor/batch_ids"]) == 1
    assert "| item_id | status | sentiment | complaint |" in meta["batchor/preview"]
    exported = Path(meta["dagster/uri"])
    assert pq.read_table(exported).num_rows == 6

    fourth = dg.materialize([asset], resources=resources, instance=instance)
    assert events_of(fourth, MAT) == []
    note = _meta(events_of(fourth, OBS)[0])["batchor/note"]
    assert note == f"already materialized by Dagster run {third.run_id}"
    assert len(materializations(instance, asset.key)) == 1
    assert emulator.batch_create_count == 1


def test_finished_at_once_materializes_in_the_same_run(
    instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    asset = batchor_asset(
        name="quick", build_job=review_job, build_items=lambda ctx: review_items(3)
    )
    result = dg.materialize([asset], resources=resources, instance=instance)
    # The instant emulator finishes the batch within the first step, so no sensor tick
    # is needed; the run still materializes exactly once.
    assert len(events_of(result, MAT)) + len(events_of(result, OBS)) == 1
    for _ in range(5):
        if materializations(instance, asset.key):
            break
        dg.materialize([asset], resources=resources, instance=instance)
    assert len(materializations(instance, asset.key)) == 1


def test_changed_items_start_a_new_durable_run_and_same_items_resume(
    instance: dg.DagsterInstance, resources: dict[str, Any], emulator: Any
) -> None:
    emulator.faults.hold_batches()
    current = {"items": review_items(4)}
    asset = batchor_asset(
        name="reviews", build_job=review_job, build_items=lambda ctx: current["items"]
    )
    first = _meta(
        events_of(dg.materialize([asset], resources=resources, instance=instance), OBS)[0]
    )
    again = _meta(
        events_of(dg.materialize([asset], resources=resources, instance=instance), OBS)[0]
    )
    assert again[RUN_ID_METADATA_KEY] == first[RUN_ID_METADATA_KEY]
    current["items"] = review_items(5)
    changed = _meta(
        events_of(dg.materialize([asset], resources=resources, instance=instance), OBS)[0]
    )
    assert changed[RUN_ID_METADATA_KEY] != first[RUN_ID_METADATA_KEY]
    assert emulator.batch_create_count == 2


def _review_job_with(output_model: Any) -> BatchJob:
    job = review_job()
    return BatchJob(model=job.model, build_prompt=job.build_prompt, output_model=output_model)


def test_moving_the_output_model_to_another_module_resumes_the_same_run(
    instance: dg.DagsterInstance, resources: dict[str, Any], emulator: Any
) -> None:
    """A script made a package moves the model's module, not what the job does: the run
    in flight is resumed, not superseded and paid for again."""
    emulator.faults.hold_batches()
    model = review_job().output_model
    assert model is not None
    moved = type(
        model.__name__, (model,), {"__module__": "elsewhere.defs", "__doc__": model.__doc__}
    )
    current = {"job": review_job()}
    asset = batchor_asset(
        name="reviews",
        build_job=lambda ctx: current["job"],
        build_items=lambda ctx: review_items(4),
    )
    first = _meta(
        events_of(dg.materialize([asset], resources=resources, instance=instance), OBS)[0]
    )
    current["job"] = _review_job_with(moved)
    again = _meta(
        events_of(dg.materialize([asset], resources=resources, instance=instance), OBS)[0]
    )
    assert again[RUN_ID_METADATA_KEY] == first[RUN_ID_METADATA_KEY]
    assert again["batchor/status"] == "running"
    assert emulator.batch_create_count == 1

    # What the job does still names the run: another output schema is another run.
    fields = {
        "__module__": "elsewhere.defs",
        "__doc__": model.__doc__,
        "__annotations__": {"extra": int},
    }
    current["job"] = _review_job_with(type(model.__name__, (model,), fields))
    changed = _meta(
        events_of(dg.materialize([asset], resources=resources, instance=instance), OBS)[0]
    )
    assert changed[RUN_ID_METADATA_KEY] != first[RUN_ID_METADATA_KEY]
    assert emulator.batch_create_count == 2


def test_run_config_and_run_id_fn_name_the_durable_run(
    instance: dg.DagsterInstance, resources: dict[str, Any], resource: BatchorResource
) -> None:
    asset = batchor_asset(
        name="reviews",
        build_job=review_job,
        build_items=lambda ctx: review_items(2),
        run_id_fn=lambda ctx: "from-fn",
    )
    dg.materialize([asset], resources=resources, instance=instance)
    dg.materialize(
        [asset],
        resources=resources,
        instance=instance,
        run_config={"ops": {"reviews": {"config": {"run_id": "from-config"}}}},
    )
    runner = resource.get_runner()
    owned = {s.run_id: s.owner for s in runner.list_runs(owner={"asset": "reviews"})}
    assert owned == {
        "from-fn": {"asset": "reviews", "partition": None},
        "from-config": {"asset": "reviews", "partition": None},
    }


def test_a_run_owned_by_another_asset_is_refused(
    instance: dg.DagsterInstance, resources: dict[str, Any], resource: BatchorResource
) -> None:
    runner = resource.get_runner()
    runner.start(review_job(), items=review_items(2), run_id="shared", owner={"asset": "other"})
    asset = batchor_asset(
        name="reviews", build_job=review_job, build_items=lambda ctx: review_items(2)
    )
    result = dg.materialize(
        [asset],
        resources=resources,
        instance=instance,
        run_config={"ops": {"reviews": {"config": {"run_id": "shared"}}}},
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and "belongs to {'asset': 'other'}" in failure.message
    assert "Traceback" not in (failure.message or "")


def test_partitions_map_to_durable_runs_and_foreign_runs_are_refused(
    instance: dg.DagsterInstance, resources: dict[str, Any], resource: BatchorResource
) -> None:
    parts = dg.StaticPartitionsDefinition(["2026-10", "2026-11"])
    asset = batchor_asset(
        name="monthly",
        build_job=review_job,
        build_items=lambda ctx: review_items(3, prefix=ctx.partition_key),
        partitions_def=parts,
    )
    for key in ("2026-10", "2026-11"):
        dg.materialize([asset], resources=resources, instance=instance, partition_key=key)
    runner = resource.get_runner()
    ids = sorted(s.run_id for s in runner.list_runs(owner={"asset": "monthly"}))
    assert ids == ["monthly.2026-10", "monthly.2026-11"]
    for _ in range(3):
        for key in ("2026-10", "2026-11"):
            dg.materialize([asset], resources=resources, instance=instance, partition_key=key)
    mats = materializations(instance, asset.key)
    assert sorted(m.partition for m in mats) == ["2026-10", "2026-11"]
    assert all(_plain(m.metadata)["dagster/partition_row_count"] == 3 for m in mats)

    # A run under a partition's id that no asset owns is not adopted silently.
    runner.start(review_job(), items=review_items(1), run_id="monthly.2026-12", owner=None)
    wider = batchor_asset(
        name="monthly",
        build_job=review_job,
        build_items=lambda ctx: review_items(1),
        partitions_def=dg.StaticPartitionsDefinition(["2026-12"]),
    )
    result = dg.materialize(
        [wider],
        resources=resources,
        instance=instance,
        partition_key="2026-12",
        raise_on_error=False,
    )
    error = result.get_step_failure_events()[0].step_failure_data.error
    assert error is not None and "belongs to no asset" in error.message


def _plain(metadata: Any) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in metadata.items()}


def test_the_api_key_never_reaches_dagster(
    instance: dg.DagsterInstance, resources: dict[str, Any], tmp_path: Path
) -> None:
    secret = "sk-test-dagster"
    assert secret not in repr(resources["batchor"])
    asset = batchor_asset(
        name="reviews", build_job=review_job, build_items=lambda ctx: review_items(2)
    )
    for _ in range(3):
        dg.materialize([asset], resources=resources, instance=instance)
    records = instance.get_records_for_run(run_id=instance.get_runs()[0].run_id).records
    for run in instance.get_runs():
        for entry in instance.all_logs(run.run_id):
            assert secret not in json.dumps(entry.user_message or "")
            assert secret not in repr(entry.dagster_event)
    assert records
    for file in tmp_path.rglob("*"):
        if file.is_file():
            assert secret.encode() not in file.read_bytes(), file


def test_resource_outside_a_run_and_its_settings(tmp_path: Path, emulator: Any) -> None:
    resource = BatchorResource(
        storage_url=f"sqlite:///{tmp_path / 'x.sqlite3'}",
        openai_base_url=emulator.base_url,
        enqueue_token_limits={"gpt-4o-mini": 90_000},
    )
    runner = resource.get_runner()
    assert isinstance(runner, BatchRunner)
    assert runner.provider.enqueue_limit("gpt-4o-mini") == 90_000
    assert runner.provider.enqueue_limit("gpt-4o") is None
    assert Path(resource.export_dir()) == tmp_path / "artifacts" / "exports"
    runner.close()


def test_a_run_another_process_is_ingesting_is_observed_not_failed(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    resource: BatchorResource,
    tmp_path: Path,
) -> None:
    items = review_items(3)
    gate = threading.Event()
    reading = threading.Event()

    def slow() -> Iterator[BatchItem]:
        yield items[0]
        reading.set()
        gate.wait(timeout=30)
        yield from items[1:]

    other = BatchRunner.from_settings(
        store=resource.storage_url,
        artifacts=resource.artifact_root,
        api_key="sk-test-dagster",
        base_url=resource.openai_base_url,
        ingest_slice_size=1,
    )
    owner = {"asset": "reviews", "partition": None}
    worker = threading.Thread(
        target=lambda: other.start(review_job(), items=slow(), run_id="busy", owner=owner)
    )
    worker.start()
    try:
        assert reading.wait(timeout=30)
        asset = batchor_asset(
            name="reviews",
            build_job=review_job,
            build_items=lambda ctx: items,
            run_id_fn=lambda ctx: "busy",
        )
        result = dg.materialize([asset], resources=resources, instance=instance)
        assert result.success
        (observed,) = events_of(result, OBS)
        assert _meta(observed)["batchor/note"] == (
            "another process is reading this run's items right now"
        )
    finally:
        gate.set()
        worker.join(timeout=60)
        other.close()


def test_bad_builder_answers_fail_with_a_message_naming_the_builder(
    instance: dg.DagsterInstance, resources: dict[str, Any], tmp_path: Path
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"run_id_fn": lambda ctx: ""}, "run_id_fn gave ''; a durable run id is a non-empty"),
        ({"run_id_fn": lambda ctx: 42}, "run_id_fn gave 42"),
        (
            {"build_job": lambda ctx: None},
            "build_job must return a batchor_core.BatchJob, got NoneType",
        ),
        ({"build_items": lambda ctx: None}, "build_items returned None"),
    ]
    for overrides, expected in cases:
        kwargs: dict[str, Any] = {
            "name": "reviews",
            "build_job": review_job,
            "build_items": lambda ctx: review_items(2),
            **overrides,
        }
        result = dg.materialize(
            [batchor_asset(**kwargs)], resources=resources, instance=instance, raise_on_error=False
        )
        error = result.get_step_failure_events()[0].step_failure_data.error
        assert error is not None and expected in error.message, (expected, error.message)

    memory = {"batchor": BatchorResource(storage_url="memory", openai_api_key="k")}
    asset = batchor_asset(
        name="reviews", build_job=review_job, build_items=lambda c: review_items(1)
    )
    result = dg.materialize([asset], resources=memory, instance=instance, raise_on_error=False)
    assert not result.success
    assert "storage_url='memory'" in str(
        [e.event_specific_data for e in result.all_events if e.is_failure]
    )


def test_a_partition_started_outside_dagster_is_that_partitions_run(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    resource: BatchorResource,
    emulator: Any,
) -> None:
    parts = dg.StaticPartitionsDefinition(["brand new", "other"])
    asset = batchor_asset(
        name="up",
        key_prefix="raw",
        build_job=review_job,
        build_items=lambda ctx: review_items(2, prefix=ctx.partition_key),
        partitions_def=parts,
    )
    runner = resource.get_runner()
    runner.start(
        review_job(),
        items=review_items(2, prefix="x"),
        run_id="made-by-a-script",
        owner={"asset": "raw/up", "partition": "brand new"},
    )
    for _ in range(3):
        dg.materialize([asset], resources=resources, instance=instance, partition_key="brand new")
    (mat,) = materializations(instance, asset.key)
    assert _plain(mat.metadata)[RUN_ID_METADATA_KEY] == "made-by-a-script"
    assert emulator.batch_create_count == 1


class _Opaque:
    """A payload value whose text holds its address."""


def test_the_items_digest_is_the_same_in_every_process_and_takes_any_payload() -> None:
    from decimal import Decimal

    def items() -> list[BatchItem]:
        return [
            BatchItem("a", {"text": "t", "object": _Opaque(), "price": Decimal("1.50")}),
            BatchItem("b", "not a mapping"),  # type: ignore[arg-type]
            BatchItem("c", {1: "int key", "s": "str key"}),  # type: ignore[dict-item]
        ]

    first, second = items_digest(items())[1], items_digest(items())[1]
    assert first == second  # new objects, new addresses: the same run id
    changed = items()
    changed[0] = BatchItem("a", {"text": "t", "object": _Opaque(), "price": Decimal("1.51")})
    assert items_digest(changed)[1] != first


def _prompted(template: str) -> BatchJob:
    job = review_job()
    return BatchJob(
        model=job.model,
        build_prompt=lambda item: template.format(**item.payload),
        output_model=job.output_model,
    )


def _switchable(n: int) -> tuple[dict[str, BatchJob], dg.AssetsDefinition]:
    """An asset whose job is ``current["job"]`` (set it to change the prompt)."""
    current = {"job": _prompted("Classify: {text}")}
    asset = batchor_asset(
        name="reviews",
        build_job=lambda ctx: current["job"],
        build_items=lambda ctx: review_items(n),
    )
    return current, asset


def _materialize_until_done(
    asset: Any, resources: dict[str, Any], instance: dg.DagsterInstance
) -> dict[str, Any]:
    for _ in range(10):
        found = events_of(dg.materialize([asset], resources=resources, instance=instance), MAT)
        if found:
            return _meta(found[0])
    raise AssertionError("never materialized")


def test_a_reverted_prompt_makes_its_results_the_assets_value_again(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    resource: BatchorResource,
    emulator: Any,
) -> None:
    from batchor_dagster.results import latest_collected_run

    current, asset = _switchable(3)
    first = _materialize_until_done(asset, resources, instance)[RUN_ID_METADATA_KEY]
    current["job"] = _prompted("Summarise: {text}")
    other = _materialize_until_done(asset, resources, instance)[RUN_ID_METADATA_KEY]
    assert other != first
    current["job"] = _prompted("Classify: {text}")  # reverted
    again = _materialize_until_done(asset, resources, instance)  # was "already materialized"
    assert again[RUN_ID_METADATA_KEY] == first
    assert emulator.batch_create_count == 2  # the first run's results, not a new batch
    latest = latest_collected_run(resource.get_runner(), asset.key, None)
    assert latest is not None and latest.run_id == first
    assert len(materializations(instance, asset.key)) == 3


def test_a_reverted_prompt_whose_run_was_cut_short_runs_again(
    instance: dg.DagsterInstance, resources: dict[str, Any], emulator: Any
) -> None:
    emulator.faults.hold_batches()
    current, asset = _switchable(3)

    def observed() -> dict[str, Any]:
        return _meta(
            events_of(dg.materialize([asset], resources=resources, instance=instance), OBS)[0]
        )

    first = observed()[RUN_ID_METADATA_KEY]
    current["job"] = _prompted("Summarise: {text}")
    other = observed()[RUN_ID_METADATA_KEY]  # supersedes the first, which is cancelled
    current["job"] = _prompted("Classify: {text}")
    again = observed()
    assert again[RUN_ID_METADATA_KEY] not in (first, other)  # was the cancelled first run
    assert again["batchor/status"] == "running"
    assert emulator.batch_create_count == 3
    assert observed()[RUN_ID_METADATA_KEY] == again[RUN_ID_METADATA_KEY]  # and it resumes
    emulator.release_batches()
    done = _materialize_until_done(asset, resources, instance)
    assert done[RUN_ID_METADATA_KEY] == again[RUN_ID_METADATA_KEY]
    assert done["batchor/items_completed"] == 3


def test_a_superseded_run_named_in_run_config_is_never_materialized(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    resource: BatchorResource,
    emulator: Any,
) -> None:
    """A collecting run queued for a run that a later job then superseded (the sensor's
    request, with the run id in run config) does not make the old job the asset's value."""
    emulator.faults.hold_batches()
    current, asset = _switchable(2)
    old = _meta(events_of(dg.materialize([asset], resources=resources, instance=instance), OBS)[0])
    old_id = old[RUN_ID_METADATA_KEY]
    emulator.release_batches()
    runner = resource.get_runner()
    for _ in range(20):
        if runner.get_run(old_id).refresh().status.value == "completed":
            break
    current["job"] = _prompted("Summarise: {text}")
    emulator.faults.hold_batches()
    dg.materialize([asset], resources=resources, instance=instance)  # supersedes old_id
    queued = dg.materialize(
        [asset],
        resources=resources,
        instance=instance,
        run_config={"ops": {"reviews": {"config": {"run_id": old_id}}}},
    )
    assert events_of(queued, MAT) == []
    note = _meta(events_of(queued, OBS)[0])["batchor/note"]
    assert note.startswith("superseded by run")
    assert materializations(instance, asset.key) == []


def test_reverting_a_prompt_stops_the_later_jobs_run_still_in_flight(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    resource: BatchorResource,
    emulator: Any,
) -> None:
    from batchor_dagster.results import latest_collected_run

    current, asset = _switchable(2)
    first = _materialize_until_done(asset, resources, instance)[RUN_ID_METADATA_KEY]
    emulator.faults.hold_batches()
    current["job"] = _prompted("Summarise: {text}")
    later = _meta(
        events_of(dg.materialize([asset], resources=resources, instance=instance), OBS)[0]
    )[RUN_ID_METADATA_KEY]
    current["job"] = _prompted("Classify: {text}")  # reverted while the later run is going
    dg.materialize([asset], resources=resources, instance=instance)
    stopped = resource.get_runner().get_run(later).summary()
    assert stopped.status.value in ("cancelling", "cancelled")  # no more spend on it
    assert (stopped.collected_by or "").startswith("superseded-by:")
    latest = latest_collected_run(resource.get_runner(), asset.key, None)
    assert latest is not None and latest.run_id == first


@pytest.mark.parametrize("moved", [False, True], ids=["same-module", "moved-module"])
def test_a_run_named_the_old_way_is_kept(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    resource: BatchorResource,
    emulator: Any,
    moved: bool,
) -> None:
    """Runs named before run ids stopped digesting the output model's module (by the
    full fingerprint) keep their id, also once the model moved to another module."""
    emulator.faults.hold_batches()
    items = review_items(3)
    runner = resource.get_runner()
    earlier = content_run_id(
        ["reviews"], runner.job_fingerprint(review_job()), items_digest(items)[1]
    )
    runner.start(
        review_job(), items=items, run_id=earlier, owner={"asset": "reviews", "partition": None}
    )
    model = review_job().output_model
    assert model is not None
    if moved:
        model = type(model.__name__, (model,), {"__module__": "pkg.defs", "__doc__": model.__doc__})
    asset = batchor_asset(
        name="reviews", build_job=lambda ctx: _review_job_with(model), build_items=lambda ctx: items
    )
    seen = _meta(events_of(dg.materialize([asset], resources=resources, instance=instance), OBS)[0])
    assert seen[RUN_ID_METADATA_KEY] == earlier
    assert emulator.batch_create_count == 1
