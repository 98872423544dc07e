"""Downstream assets receive results as a DataFrame; the failed-fraction asset check."""

# No `from __future__ import annotations`: Dagster reads asset function annotations.

from typing import Any

import dagster as dg
import pandas as pd
import pytest

from batchor_core import BatchJob, RetryPolicy
from batchor_dagster import (
    BatchorResource,
    batchor_asset,
    failed_fraction_below,
    load_results,
)
from tests.dagster.conftest import Review, materializations, review_items, review_job

pytestmark = pytest.mark.integration


def _until_materialized(
    asset: Any, instance: dg.DagsterInstance, resources: dict[str, Any], **kw: Any
) -> None:
    for _ in range(20):
        if materializations(instance, asset.key):
            return
        dg.materialize([asset], resources=resources, instance=instance, **kw)
    raise AssertionError("never materialized")


def test_a_downstream_asset_receives_the_results_as_a_dataframe(
    instance: dg.DagsterInstance, resources: dict[str, Any], resource: BatchorResource
) -> None:
    reviews = batchor_asset(
        name="reviews",
        build_job=review_job,
        build_items=lambda c: review_items(7),
        io_manager_key="batchor_results",
    )
    seen: dict[str, Any] = {}

    @dg.asset
    def review_summary(reviews: pd.DataFrame) -> dg.MaterializeResult:
        seen["frame"] = reviews
        return dg.MaterializeResult(metadata={"rows": len(reviews)})

    missing = dg.materialize(
        [reviews, review_summary],
        selection=[review_summary.key],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    assert not missing.success  # nothing collected yet: a clear failure, not empty data
    error = missing.get_step_failure_events()[0].step_failure_data.error
    assert error is not None and "has no collected batchor run yet" in error.message

    _until_materialized(reviews, instance, resources)
    done = dg.materialize(
        [reviews, review_summary],
        selection=[review_summary.key],
        resources=resources,
        instance=instance,
    )
    assert done.success
    frame = seen["frame"]
    assert list(frame.columns)[:4] == ["item_id", "status", "sentiment", "complaint"]
    assert {"error_code", "error_message", "attempts", "input_tokens", "output_tokens"} <= set(
        frame.columns
    )
    assert sorted(frame["item_id"]) == sorted(f"r{i}" for i in range(7))
    assert (frame["status"] == "completed").all()
    assert frame["complaint"].dtype == bool

    (summary,) = resource.get_runner().list_runs(owner={"asset": "reviews"})
    plain = load_results(resource, summary.run_id)
    assert plain.equals(frame)
    from_runner = load_results(resource.get_runner(), summary.run_id, status="failed")
    assert len(from_runner) == 0


def test_partitions_load_per_partition_and_together(
    instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    parts = dg.StaticPartitionsDefinition(["a", "b"])
    reviews = batchor_asset(
        name="reviews",
        build_job=review_job,
        build_items=lambda c: review_items(3, prefix=c.partition_key),
        partitions_def=parts,
        io_manager_key="batchor_results",
    )
    seen: dict[str, pd.DataFrame] = {}

    @dg.asset(partitions_def=parts)
    def per_partition(context: dg.AssetExecutionContext, reviews: pd.DataFrame) -> None:
        seen[context.partition_key] = reviews

    @dg.asset
    def everything(reviews: pd.DataFrame) -> None:
        seen["all"] = reviews

    for key in ("a", "b"):
        for _ in range(5):
            dg.materialize([reviews], resources=resources, instance=instance, partition_key=key)
    dg.materialize(
        [reviews, per_partition],
        selection=[per_partition.key],
        partition_key="b",
        resources=resources,
        instance=instance,
    )
    assert sorted(seen["b"]["item_id"]) == ["b0", "b1", "b2"]
    dg.materialize(
        [reviews, everything], selection=[everything.key], resources=resources, instance=instance
    )
    assert sorted(seen["all"]["item_id"]) == ["a0", "a1", "a2", "b0", "b1", "b2"]


def test_failed_fraction_check_on_the_latest_materialization(
    instance: dg.DagsterInstance, resources: dict[str, Any], emulator: Any
) -> None:
    emulator.faults.line_fault(contains="review number 1", kind="error")
    emulator.faults.line_fault(contains="review number 2", kind="error")

    def job(context: Any) -> BatchJob:
        return BatchJob(
            model="gpt-4o-mini",
            build_prompt=lambda item: item.payload["text"],
            output_model=Review,
            retry_policy=RetryPolicy(max_attempts=1),
        )

    reviews = batchor_asset(name="reviews", build_job=job, build_items=lambda c: review_items(10))
    strict = failed_fraction_below(reviews, threshold=0.1, name="strict")
    lenient = failed_fraction_below(reviews, threshold=0.5, name="lenient")

    before = dg.materialize(
        [reviews, strict],
        selection=dg.AssetSelection.checks(strict),
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )
    (early,) = before.get_asset_check_evaluations()
    assert not early.passed and "no batchor materialization yet" in (early.description or "")

    _until_materialized(reviews, instance, resources)
    result = dg.materialize(
        [reviews, strict, lenient],
        selection=dg.AssetSelection.checks(strict, lenient),
        resources=resources,
        instance=instance,
    )
    outcome = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not outcome["strict"].passed and outcome["lenient"].passed
    meta = {k: getattr(v, "value", v) for k, v in outcome["strict"].metadata.items()}
    assert meta["failed_items"] == 2 and meta["total_items"] == 10
    assert meta["failed_fraction"] == pytest.approx(0.2)
    assert "2 of 10 items failed" in (outcome["strict"].description or "")
