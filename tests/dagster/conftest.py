"""Dagster fixtures: a real instance, the batchor resource on a SQLite file, the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from pydantic import BaseModel

from batchor_core import BatchItem, BatchJob
from batchor_dagster import BatchorResource, BatchorResultsIOManager


class Review(BaseModel):
    """The structured output the test jobs ask for."""

    sentiment: str
    complaint: bool


def review_job(context: Any = None) -> BatchJob:
    return BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda item: f"Classify: {item.payload['text']}",
        output_model=Review,
    )


def review_items(n: int = 6, *, prefix: str = "r") -> list[BatchItem]:
    return [BatchItem(f"{prefix}{i}", {"text": f"review number {i}"}) for i in range(n)]


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as made:
        yield made


@pytest.fixture
def resource(tmp_path: Path, emulator: Any) -> BatchorResource:
    return BatchorResource(
        storage_url=str(tmp_path / "batchor.sqlite3"),
        artifact_root=str(tmp_path / "artifacts"),
        openai_api_key="sk-test-dagster",
        openai_base_url=emulator.base_url,
    )


@pytest.fixture
def resources(resource: BatchorResource) -> dict[str, Any]:
    return {"batchor": resource, "batchor_results": BatchorResultsIOManager(batchor=resource)}


def events_of(result: dg.ExecuteInProcessResult, kind: str) -> list[Any]:
    """The asset events (``ASSET_MATERIALIZATION`` or ``ASSET_OBSERVATION``) of a run."""
    return [e for e in result.all_events if e.event_type_value == kind]


def materializations(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[Any]:
    records = instance.fetch_materializations(key, limit=100).records
    return [r.asset_materialization for r in records]
