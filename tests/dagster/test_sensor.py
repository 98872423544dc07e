"""build_batchor_sensor, really evaluated on a real instance, and its requests executed."""

from __future__ import annotations

import uuid
from typing import Any

import dagster as dg
import pytest

from batchor_core import BatchJob
from batchor_dagster import (
    COLLECT_FOR_TAG,
    RUN_ID_TAG,
    BatchorResource,
    batchor_asset,
    build_batchor_sensor,
)
from tests.conftest import POSTGRES_URL, SilentServer, postgres_param
from tests.dagster.conftest import materializations, review_items, review_job

pytestmark = pytest.mark.integration


def _tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    resource: BatchorResource,
    cursor: str | None = None,
) -> dg.SensorResult:
    with dg.build_sensor_context(
        instance=instance, resources={"batchor": resource}, cursor=cursor
    ) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _execute(
    request: dg.RunRequest,
    assets: list[Any],
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
) -> dg.ExecuteInProcessResult:
    """Run a requested collecting run in process, as the daemon would launch it."""
    assert request.asset_selection
    return dg.materialize(
        assets,
        selection=request.asset_selection,
        partition_key=request.partition_key,
        run_config=request.run_config,
        tags=dict(request.tags),
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def test_in_flight_skip_then_one_request_then_one_materialization(
    instance: dg.DagsterInstance,
    resource: BatchorResource,
    resources: dict[str, Any],
    emulator: Any,
) -> None:
    asset = batchor_asset(
        name="reviews", build_job=review_job, build_items=lambda c: review_items(5)
    )
    sensor = build_batchor_sensor([asset], minimum_interval_seconds=30)
    emulator.faults.hold_batches()
    dg.materialize([asset], resources=resources, instance=instance)  # submits

    held = _tick(sensor, instance, resource)
    assert held.run_requests == []
    assert held.skip_reason is not None
    assert "1 batchor runs in flight (0/5 items done, 1 batches at the provider)" in (
        held.skip_reason.skip_message or ""
    )

    emulator.release_batches()
    done = _tick(sensor, instance, resource)
    (request,) = done.run_requests
    (run_id,) = [s.run_id for s in resource.get_runner().list_runs()]
    assert request.run_key == f"{run_id}:collect"
    assert request.asset_selection == [asset.key]
    assert request.run_config == {"ops": {"reviews": {"config": {"run_id": run_id}}}}
    assert request.tags[RUN_ID_TAG] == run_id and request.tags[COLLECT_FOR_TAG] == run_id

    again = _tick(sensor, instance, resource)
    assert [r.run_key for r in again.run_requests] == [request.run_key]  # same key: idempotent

    result = _execute(request, [asset], instance, resources)
    assert result.success
    assert len(materializations(instance, asset.key)) == 1
    after = _tick(sensor, instance, resource)
    assert after.run_requests == []
    assert after.skip_reason is not None
    assert after.skip_reason.skip_message == "no uncollected batchor runs for these assets"
    assert emulator.batch_create_count == 1


def test_a_failed_collecting_run_gets_a_new_key_up_to_the_limit(
    instance: dg.DagsterInstance,
    resource: BatchorResource,
    resources: dict[str, Any],
) -> None:
    broken = {"on": False}

    def build_job(context: Any) -> BatchJob:
        if broken["on"]:
            raise RuntimeError("the job cannot be built right now")
        return review_job()

    asset = batchor_asset(
        name="reviews", build_job=build_job, build_items=lambda c: review_items(3)
    )
    sensor = build_batchor_sensor([asset], max_collect_attempts=2)
    runner = resource.get_runner()
    runner.start(
        review_job(),
        items=review_items(3),
        run_id="outside",
        owner={"asset": "reviews", "partition": None},
    )
    broken["on"] = True
    keys = []
    for _ in range(2):
        (request,) = _tick(sensor, instance, resource).run_requests
        keys.append(request.run_key)
        assert not _execute(request, [asset], instance, resources).success
    assert keys == ["outside:collect", "outside:collect:2"]
    gave_up = _tick(sensor, instance, resource)
    assert gave_up.run_requests == []
    assert gave_up.skip_reason is not None
    assert "1 finished runs need attention" in (gave_up.skip_reason.skip_message or "")
    assert runner.get_run("outside").summary().collected_by is None  # the claim was released

    broken["on"] = False  # fixed: an operator materializes it by hand with the run id
    dg.materialize(
        [asset],
        resources=resources,
        instance=instance,
        run_config={"ops": {"reviews": {"config": {"run_id": "outside"}}}},
    )
    assert len(materializations(instance, asset.key)) == 1


def test_two_assets_never_collect_each_others_runs(
    instance: dg.DagsterInstance, resource: BatchorResource
) -> None:
    a = batchor_asset(name="alpha", build_job=review_job, build_items=lambda c: review_items(2))
    b = batchor_asset(name="beta", build_job=review_job, build_items=lambda c: review_items(2))
    runner = resource.get_runner()
    for name, run_id in (("alpha", "a-1"), ("beta", "b-1"), ("beta", "b-2"), ("gamma", "g-1")):
        runner.start(
            review_job(),
            items=review_items(2),
            run_id=run_id,
            owner={"asset": name, "partition": None},
        )
    runner.start(review_job(), items=review_items(2), run_id="nobody")
    only_a = _tick(build_batchor_sensor([a], name="sa"), instance, resource)
    only_b = _tick(build_batchor_sensor([b], name="sb"), instance, resource)
    assert {(r.run_key, tuple(r.asset_selection or ())) for r in only_a.run_requests} == {
        ("a-1:collect", (a.key,))
    }
    assert {r.run_key for r in only_b.run_requests} == {"b-1:collect", "b-2:collect"}
    assert all(r.asset_selection == [b.key] for r in only_b.run_requests)


def test_dynamic_partition_of_a_run_started_outside_dagster(
    instance: dg.DagsterInstance,
    resource: BatchorResource,
    resources: dict[str, Any],
) -> None:
    parts = dg.DynamicPartitionsDefinition(name="files")
    asset = batchor_asset(
        name="per_file",
        build_job=review_job,
        build_items=lambda c: review_items(2, prefix=c.partition_key),
        partitions_def=parts,
    )
    sensor = build_batchor_sensor([asset])
    runner = resource.get_runner()
    runner.start(
        review_job(),
        items=review_items(2, prefix="f1"),
        run_id="per_file.f1",
        owner={"asset": "per_file", "partition": "f1.csv"},
    )
    result = _tick(sensor, instance, resource)
    (request,) = result.run_requests
    assert request.partition_key == "f1.csv"
    (add,) = result.dynamic_partitions_requests or []
    assert isinstance(add, dg.AddDynamicPartitionsRequest)
    assert add.partitions_def_name == "files" and list(add.partition_keys) == ["f1.csv"]
    instance.add_dynamic_partitions("files", ["f1.csv"])  # what the daemon does with `add`
    assert _execute(request, [asset], instance, resources).success
    (mat,) = materializations(instance, asset.key)
    assert mat.partition == "f1.csv"
    again = _tick(sensor, instance, resource)
    assert again.run_requests == [] and not again.dynamic_partitions_requests


def test_round_robin_visits_every_in_flight_run_over_ticks(
    instance: dg.DagsterInstance, resource: BatchorResource, emulator: Any
) -> None:
    asset = batchor_asset(
        name="reviews", build_job=review_job, build_items=lambda c: review_items(2)
    )
    runner = resource.get_runner()
    emulator.faults.hold_batches()
    for k in range(3):
        runner.start(
            review_job(),
            items=review_items(2),
            run_id=f"rr-{k}",
            owner={"asset": "reviews", "partition": None},
        )
    sensor = build_batchor_sensor([asset], time_budget_seconds=0.0)  # one run per tick
    cursors = []
    cursor = None
    for _ in range(4):
        result = _tick(sensor, instance, resource, cursor=cursor)
        cursor = result.cursor
        cursors.append(cursor)
    assert cursors == ["rr-0", "rr-1", "rr-2", "rr-0"]
    roomy = _tick(build_batchor_sensor([asset], name="roomy"), instance, resource)
    assert roomy.cursor == "rr-2"  # a generous budget visits all of them in one tick


def test_a_collector_that_died_before_materializing_is_taken_over(
    instance: dg.DagsterInstance,
    resource: BatchorResource,
    resources: dict[str, Any],
) -> None:
    asset = batchor_asset(
        name="reviews", build_job=review_job, build_items=lambda c: review_items(2)
    )
    sensor = build_batchor_sensor([asset])
    runner = resource.get_runner()
    run = runner.start(
        review_job(),
        items=review_items(2),
        run_id="orphan",
        owner={"asset": "reviews", "partition": None},
    )
    assert run.wait(timeout=30, poll_interval=0.05).is_finished
    # A real Dagster run that failed (as a killed collecting run ends up, once Dagster's
    # run monitoring marks it failed) and holds the collection marker.
    failing = dg.materialize(
        [asset],
        resources={
            **resources,
            "batchor": BatchorResource(storage_url="postgresql://nobody@127.0.0.1:9/x"),
        },
        instance=instance,
        raise_on_error=False,
    )
    assert not failing.success
    assert run.mark_collected(failing.run_id)
    (request,) = _tick(sensor, instance, resource).run_requests
    assert request.run_key == "orphan:collect"
    assert _execute(request, [asset], instance, resources).success
    assert run.summary().collected_by != failing.run_id
    assert len(materializations(instance, asset.key)) == 1
    assert _tick(sensor, instance, resource).run_requests == []


@pytest.mark.parametrize("store_kind", ["sqlite", postgres_param()])
def test_many_runs_in_one_tick_with_parallel_workers(
    store_kind: str, instance: dg.DagsterInstance, tmp_path: Any, emulator: Any
) -> None:
    url = str(tmp_path / "many.sqlite3") if store_kind == "sqlite" else POSTGRES_URL
    assert url
    resource = BatchorResource(
        storage_url=url,
        artifact_root=str(tmp_path / "artifacts"),
        openai_api_key="sk-test",
        openai_base_url=emulator.base_url,
    )
    name = f"many_{uuid.uuid4().hex[:8]}"  # the Postgres database is shared across tests
    asset = batchor_asset(name=name, build_job=review_job, build_items=lambda c: [])
    sensor = build_batchor_sensor([asset], max_workers=4)
    runner = resource.get_runner()
    emulator.faults.hold_batches()
    ids = [f"{name}-{k:02d}" for k in range(12)]
    for run_id in ids:
        runner.start(
            review_job(),
            items=review_items(2),
            run_id=run_id,
            owner={"asset": name, "partition": None},
        )
    held = _tick(sensor, instance, resource)
    assert held.run_requests == [] and held.cursor == ids[-1]
    emulator.release_batches()
    collected = _tick(sensor, instance, resource)
    assert sorted(r.run_key for r in collected.run_requests) == [f"{i}:collect" for i in ids]
    assert emulator.batch_create_count == 12
    runner.close()


def test_a_run_that_cannot_move_says_why_in_observations_and_skip_reasons(
    instance: dg.DagsterInstance, tmp_path: Any, emulator: Any
) -> None:
    resource = BatchorResource(
        storage_url=str(tmp_path / "stuck.sqlite3"),
        artifact_root=str(tmp_path / "artifacts"),
        openai_api_key="sk-test",
        openai_base_url=emulator.base_url,
        permanent_error_budget_seconds=0.0,
    )
    resources = {"batchor": resource}
    asset = batchor_asset(
        name="reviews", build_job=review_job, build_items=lambda c: review_items(3)
    )
    sensor = build_batchor_sensor([asset])
    emulator.faults.hold_batches()
    dg.materialize([asset], resources=resources, instance=instance)
    # The provider starts answering 404 for the batch: not transient, so after its
    # (here zero) budget the run pauses, naming the call and the answer.
    emulator.faults.http_error(method="GET", path="/v1/batches/{id}", status=404, count=50)
    reasons = []
    for _ in range(3):
        result = _tick(sensor, instance, resource)
        assert result.run_requests == []
        reasons.append(result.skip_reason.skip_message if result.skip_reason else "")
    assert any("paused" in r and "404" in r for r in reasons), reasons
    paused = next(r for r in reasons if "paused" in r)
    assert "batchor resume reviews-" in paused and "in flight" not in paused
    again = dg.materialize([asset], resources=resources, instance=instance)
    (observed,) = [e for e in again.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    meta = {
        k: getattr(v, "value", v)
        for k, v in observed.event_specific_data.asset_observation.metadata.items()
    }
    assert meta["batchor/status"] == "paused"
    assert "404" in meta["batchor/status_reason"]


class _BreaksAfterOneSlice:
    """An item source whose input gives out after its first slice."""

    def identity(self) -> dict[str, Any]:
        return {"kind": "breaks-after-one-slice"}

    def read_slices(self, checkpoint: Any, *, slice_size: int) -> Any:
        from batchor_core.ports import SourceSlice

        if checkpoint is None:
            yield SourceSlice(items=review_items(2), checkpoint={"read": 2})
        raise OSError("the input share went away")


def test_a_run_whose_ingest_stopped_says_so_and_is_not_in_flight(
    instance: dg.DagsterInstance, resource: BatchorResource, emulator: Any
) -> None:
    resources = {"batchor": resource}
    asset = batchor_asset(
        name="reviews", build_job=review_job, build_items=lambda c: _BreaksAfterOneSlice()
    )
    sensor = build_batchor_sensor([asset])
    emulator.faults.hold_batches()
    failed = dg.materialize([asset], resources=resources, instance=instance, raise_on_error=False)
    assert not failed.success
    reason = _tick(sensor, instance, resource).skip_reason
    message = reason.skip_message if reason else ""
    assert "1 stopped reading their items" in message, message
    assert "reading the items stopped after 2: OSError: the input share went away" in message
    assert "materialize the asset again" in message and "in flight" not in message


def test_a_collecting_run_that_never_ends_is_reported(
    instance: dg.DagsterInstance, resource: BatchorResource
) -> None:
    asset = batchor_asset(name="reviews", build_job=review_job, build_items=lambda c: [])
    runner = resource.get_runner()
    run = runner.start(
        review_job(),
        items=review_items(1),
        run_id="claimed",
        owner={"asset": "reviews", "partition": None},
    )
    run.wait(timeout=30, poll_interval=0.05)
    # A collecting run whose worker was killed: Dagster still shows it started.
    stuck = instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED
        )
    )
    assert run.mark_collected(stuck.run_id)
    quiet = _tick(build_batchor_sensor([asset], name="quiet"), instance, resource)
    assert quiet.skip_reason is not None
    assert "need attention" not in (quiet.skip_reason.skip_message or "")
    eager = _tick(build_batchor_sensor([asset], slow_collect_seconds=0.0), instance, resource)
    assert eager.run_requests == [] and eager.skip_reason is not None
    assert "1 finished runs need attention" in (eager.skip_reason.skip_message or "")


def test_a_run_waiting_for_budget_says_so_in_observations_and_skip_reasons(
    instance: dg.DagsterInstance, tmp_path: Any, emulator: Any
) -> None:
    # A budget wait is not an error and not a pause: without saying so, the sensor only
    # ever showed "1 batches at the provider" while the rest of the run sat unsent.
    probe = BatchorResource(
        storage_url=str(tmp_path / "probe.sqlite3"),
        artifact_root=str(tmp_path / "probe"),
        openai_api_key="sk-test",
        openai_base_url=emulator.base_url,
    )
    one = probe.get_runner().estimate(review_job(), review_items(1)).input_tokens
    resource = BatchorResource(
        storage_url=str(tmp_path / "budget.sqlite3"),
        artifact_root=str(tmp_path / "artifacts"),
        openai_api_key="sk-test",
        openai_base_url=emulator.base_url,
        enqueue_token_limits={"gpt-4o-mini": one * 3 // 2},  # one request at a time
    )
    resources = {"batchor": resource}
    asset = batchor_asset(
        name="reviews", build_job=review_job, build_items=lambda c: review_items(3)
    )
    sensor = build_batchor_sensor([asset])
    emulator.faults.hold_batches()
    dg.materialize([asset], resources=resources, instance=instance)
    result = _tick(sensor, instance, resource)
    assert result.run_requests == [] and result.skip_reason is not None
    assert "waiting for enqueued-token budget" in (result.skip_reason.skip_message or "")
    again = dg.materialize([asset], resources=resources, instance=instance)
    (observed,) = [e for e in again.all_events if e.event_type_value == "ASSET_OBSERVATION"]
    meta = {
        k: getattr(v, "value", v)
        for k, v in observed.event_specific_data.asset_observation.metadata.items()
    }
    assert meta["batchor/status"] == "running"
    assert "waiting for enqueued-token budget" in meta["batchor/waiting_reason"]


def test_a_provider_that_stops_answering_holds_a_tick_inside_its_budget(
    instance: dg.DagsterInstance,
    resource: BatchorResource,
    emulator: Any,
    silent_server: SilentServer,
) -> None:
    assert resource.get_runner().provider.config.timeout_seconds == 20.0  # the default
    emulator.faults.hold_batches()
    assets = [
        batchor_asset(name=f"a{n}", build_job=review_job, build_items=lambda c: review_items(1))
        for n in range(3)
    ]
    for asset in assets:
        dg.materialize([asset], resources={"batchor": resource}, instance=instance)
    hung = BatchorResource(
        storage_url=resource.storage_url,
        artifact_root=resource.artifact_root,
        openai_api_key="sk-test",
        openai_base_url=silent_server.base_url,
        openai_timeout_seconds=2.0,
    )
    sensor = build_batchor_sensor(assets, time_budget_seconds=3.0, max_workers=1)
    result = _tick(sensor, instance, hung)
    # The first run's poll timed out at about 2 s: another call could end past the 3 s
    # budget, so none was started (there used to be one more, up to 4 s).
    assert len(silent_server.accepted) == 1
    assert result.skip_reason is not None
    assert "timed out" in result.skip_reason.skip_message
