"""Product reviews -> OpenAI Batch classification (batchor) -> a summary table -> a check.

``dagster dev`` in this folder shows it. Materialize ``reviews_classified``: the first run
submits the batch and records an observation; the sensor advances the batch between runs
and, once it is done, requests the one run that materializes it; ``review_summary`` then
reads the results as a DataFrame.
"""

# No ``from __future__ import annotations``: Dagster reads the asset functions' annotations.

import os
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from batchor_core import BatchItem, BatchJob
from batchor_core.sources import CsvSource
from batchor_dagster import (
    BatchorResultsIOManager,
    batchor_asset,
    build_batchor_sensor,
    failed_fraction_below,
)
from example_project.emulator import ExampleBatchorResource, default_base_url
from example_project.models import ReviewLabel

PROJECT = Path(__file__).resolve().parent.parent
REVIEWS_CSV = PROJECT / "data" / "reviews.csv"
HOME = Path(os.environ.get("BATCHOR_EXAMPLE_HOME", str(PROJECT / ".batchor")))

SYSTEM_PROMPT = (
    "You label product reviews. Give the sentiment, the main topic, and whether the "
    "reviewer reports a problem."
)


def review_request(item: BatchItem) -> dict[str, Any]:
    """The chat request for one review row."""
    row = item.payload
    text = f"Product: {row['product']} ({row['stars']} stars)\n{row['text']}"
    return {
        "messages": [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": text},
        ]
    }


def build_job(context: dg.AssetExecutionContext) -> BatchJob:
    """The classification job."""
    return BatchJob(
        model="gpt-4o-mini",
        build_request=review_request,
        output_model=ReviewLabel,
        request_options={"temperature": 0},
    )


def build_items(context: dg.AssetExecutionContext) -> CsvSource:
    """Every row of the reviews file (its content identifies the durable run)."""
    return CsvSource(REVIEWS_CSV, id_column="review_id")


reviews_classified = batchor_asset(
    name="reviews_classified",
    build_job=build_job,
    build_items=build_items,
    group_name="reviews",
    io_manager_key="batchor_results",
    description="Each product review classified (sentiment, topic, complaint) via the Batch API.",
)


@dg.asset(group_name="reviews", kinds={"pandas"})
def review_summary(
    context: dg.AssetExecutionContext, reviews_classified: pd.DataFrame
) -> dg.MaterializeResult:
    """Reviews per topic and sentiment, and the complaint rate per topic."""
    done = reviews_classified[reviews_classified["status"] == "completed"]
    table = (
        done.groupby(["topic", "sentiment"]).size().unstack(fill_value=0).sort_index()
        if len(done)
        else pd.DataFrame()
    )
    complaints = done.groupby("topic")["complaint"].mean().round(3) if len(done) else pd.Series()
    context.log.info(f"summarised {len(done)} classified reviews")
    return dg.MaterializeResult(
        metadata={
            "reviews": len(reviews_classified),
            "classified": len(done),
            "by_topic_and_sentiment": dg.MetadataValue.md(table.to_markdown()),
            "complaint_rate_by_topic": dg.MetadataValue.json(complaints.to_dict()),
        }
    )


few_failures = failed_fraction_below(reviews_classified, threshold=0.05)

batchor_sensor = build_batchor_sensor(
    [reviews_classified],
    minimum_interval_seconds=int(os.environ.get("BATCHOR_EXAMPLE_SENSOR_INTERVAL", "30")),
    default_status=dg.DefaultSensorStatus.RUNNING,  # so `dagster dev` collects on its own
)

_base_url = os.environ.get("BATCHOR_EXAMPLE_BASE_URL")
batchor = ExampleBatchorResource(
    storage_url=str(HOME / "batchor.sqlite3"),
    artifact_root=str(HOME / "artifacts"),
    openai_base_url=default_base_url(),
    # No key is needed for the emulator; a real endpoint reads OPENAI_API_KEY itself.
    openai_api_key=None if os.environ.get("OPENAI_API_KEY") else "emulator",
    start_emulator=_base_url is None,
)

defs = dg.Definitions(
    assets=[reviews_classified, review_summary],
    asset_checks=[few_failures],
    sensors=[batchor_sensor],
    resources={
        "batchor": batchor,
        "batchor_results": BatchorResultsIOManager(batchor=batchor),
    },
)
