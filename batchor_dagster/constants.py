"""Names shared by the resource, the asset factory, the sensor and the checks."""

from __future__ import annotations

__all__ = [
    "COLLECT_ATTEMPT_TAG",
    "COLLECT_FOR_TAG",
    "DEFAULT_RESOURCE_KEY",
    "MANAGED_METADATA_KEY",
    "RUN_ID_METADATA_KEY",
    "RUN_ID_TAG",
]

DEFAULT_RESOURCE_KEY = "batchor"
"""The resource key the asset factory, sensor and checks look for by default."""

RUN_ID_TAG = "batchor/run_id"
"""Tag on materializations and collect runs: the durable run id (in its tag-safe form)."""

RUN_ID_METADATA_KEY = "batchor/run_id"
"""Metadata key holding the exact durable run id."""

COLLECT_FOR_TAG = "batchor/collect_for"
"""Tag the sensor puts on the Dagster runs it requests to collect a durable run."""

COLLECT_ATTEMPT_TAG = "batchor/collect_attempt"
"""Which attempt at collecting the durable run a requested Dagster run is (1, 2, ...)."""

MANAGED_METADATA_KEY = "batchor/managed"
"""Definition metadata marking an asset built by :func:`batchor_asset`."""
