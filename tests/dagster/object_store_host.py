"""A Dagster collect run on a host of its own: Postgres store, S3 artifacts, no shared disk.

Usage: python -m tests.dagster.object_store_host DAGSTER_HOME REQUEST_JSON
with ``BATCHOR_TEST_STORE_URL``, ``BATCHOR_TEST_ARTIFACTS`` and ``BATCHOR_TEST_BASE_URL``
set. Executes the run request the sensor made, as a run launcher's pod would, and prints
one JSON line: whether it succeeded and the materialization's results path.
"""

from __future__ import annotations

import json
import os
import sys

import dagster as dg

from batchor_dagster import BatchorResource, BatchorResultsIOManager, batchor_asset
from tests.dagster.conftest import review_items, review_job


def asset(name: str) -> dg.AssetsDefinition:
    """The batchor asset both processes define (named per test: Postgres is shared)."""
    return batchor_asset(
        name=name, build_job=review_job, build_items=lambda context: review_items(5)
    )


def resource() -> BatchorResource:
    """The resource every process builds from the same settings (no credentials in them)."""
    return BatchorResource(
        storage_url=os.environ["BATCHOR_TEST_STORE_URL"],
        artifact_root=os.environ["BATCHOR_TEST_ARTIFACTS"],
        openai_api_key="sk-test-dagster",
        openai_base_url=os.environ["BATCHOR_TEST_BASE_URL"],
    )


def main() -> None:
    home, request_json = sys.argv[1:3]
    request = json.loads(request_json)
    batchor = resource()
    reviews = asset(request["asset"][-1])
    with dg.instance_for_test(temp_dir=home) as instance:
        result = dg.materialize(
            [reviews],
            selection=[dg.AssetKey(request["asset"])],
            run_config=request["run_config"],
            tags=request["tags"],
            instance=instance,
            resources={
                "batchor": batchor,
                "batchor_results": BatchorResultsIOManager(batchor=batchor),
            },
            raise_on_error=False,
        )
        events = result.asset_materializations_for_node(reviews.op.name)
        path = events[0].metadata["batchor/results_path"].value if events else None
        print(json.dumps({"success": result.success, "results_path": path}))


if __name__ == "__main__":
    main()
