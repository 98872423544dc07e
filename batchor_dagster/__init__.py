"""batchor_dagster: run batchor jobs from Dagster.

The names::

    BatchorResource          the runner as a resource (settings only; built per run)
    batchor_asset            asset factory: each Dagster run submits or collects, in seconds
    BatchorRunConfig         run config of those assets (the durable run id)
    build_batchor_sensor     advances in-flight runs, requests one collecting run each
    BatchorResultsIOManager  downstream assets receive results as a pandas DataFrame
    load_results             the same for plain code
    failed_fraction_below    asset check on the latest run's failure rate
    BatchorBatchComponent    the asset and sensor from a ``defs.yaml`` (``dg``)

Dagster schedules; the batchor store owns batch state. One durable run maps to exactly one
materialization.
"""

from batchor_dagster.asset import BatchorRunConfig, batchor_asset
from batchor_dagster.checks import failed_fraction_below
from batchor_dagster.component import BatchorBatchComponent, PromptTemplate
from batchor_dagster.constants import (
    COLLECT_ATTEMPT_TAG,
    COLLECT_FOR_TAG,
    RUN_ID_METADATA_KEY,
    RUN_ID_TAG,
)
from batchor_dagster.resource import BatchorResource
from batchor_dagster.results import BatchorResultsIOManager, load_results
from batchor_dagster.sensor import build_batchor_sensor

__all__ = [
    "COLLECT_ATTEMPT_TAG",
    "COLLECT_FOR_TAG",
    "RUN_ID_METADATA_KEY",
    "RUN_ID_TAG",
    "BatchorBatchComponent",
    "BatchorResource",
    "BatchorResultsIOManager",
    "BatchorRunConfig",
    "PromptTemplate",
    "batchor_asset",
    "build_batchor_sensor",
    "failed_fraction_below",
    "load_results",
]
