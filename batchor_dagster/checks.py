"""Asset checks over a batchor asset's latest materialization.

They are separate ``@asset_check`` definitions on purpose: inline check specs fail an
``output_required=False`` asset run that records only an observation.
"""

# No ``from __future__ import annotations``: Dagster inspects the check function.

from typing import Any

import dagster as dg

from batchor_core import RunNotFoundError

from .constants import DEFAULT_RESOURCE_KEY, RUN_ID_METADATA_KEY
from .resource import BatchorResource

__all__ = ["failed_fraction_below"]


def failed_fraction_below(
    asset: Any,
    threshold: float = 0.05,
    *,
    name: str = "failed_fraction_below",
    resource_key: str = DEFAULT_RESOURCE_KEY,
    blocking: bool = False,
    description: str | None = None,
) -> dg.AssetChecksDefinition:
    """A check that passes when fewer than ``threshold`` of the latest run's items failed.

    Args:
        asset: The batchor asset (an ``AssetsDefinition``, ``AssetKey`` or key string).
        threshold: Largest tolerated failed fraction, exclusive (0.05 = under 5%).
        name: Check name (unique per asset).
        resource_key: Key of the :class:`BatchorResource`.
        blocking: Whether a failed check blocks downstream assets in the same run.
        description: Check description.
    """
    if not 0.0 <= threshold <= 1.0:
        raise dg.DagsterInvalidDefinitionError("threshold must be between 0 and 1")
    key = asset.key if isinstance(asset, dg.AssetsDefinition) else dg.AssetKey.from_coercible(asset)

    @dg.asset_check(
        asset=key,
        name=name,
        description=description
        or f"Fewer than {threshold:.1%} of the latest batchor run's items failed.",
        required_resource_keys={resource_key},
        blocking=blocking,
    )
    def _failed_fraction(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        resource: BatchorResource = getattr(context.resources, resource_key)
        event = context.instance.get_latest_materialization_event(key)
        materialization = event.asset_materialization if event is not None else None
        value = materialization.metadata.get(RUN_ID_METADATA_KEY) if materialization else None
        run_id = getattr(value, "value", None)
        if not isinstance(run_id, str):
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"{key.to_user_string()} has no batchor materialization yet",
            )
        try:
            summary = resource.get_runner().get_run(run_id).summary()
        except RunNotFoundError:
            return dg.AssetCheckResult(
                passed=False,
                description=f"durable run {run_id!r} is not in the batchor store",
            )
        total = summary.total_items
        fraction = summary.failed_items / total if total else 0.0
        return dg.AssetCheckResult(
            passed=fraction < threshold,
            description=(
                f"{summary.failed_items} of {total} items failed ({fraction:.2%}); "
                f"threshold {threshold:.2%}"
            ),
            metadata={
                RUN_ID_METADATA_KEY: dg.MetadataValue.text(run_id),
                "failed_fraction": dg.MetadataValue.float(round(fraction, 6)),
                "failed_items": summary.failed_items,
                "total_items": total,
                "threshold": dg.MetadataValue.float(threshold),
            },
        )

    return _failed_fraction
