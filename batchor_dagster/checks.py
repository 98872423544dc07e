"""Asset checks over a batchor asset's latest materialization.

They are separate ``@asset_check`` definitions on purpose: inline check specs fail an
``output_required=False`` asset run that records only an observation.
"""

# No ``from __future__ import annotations``: Dagster inspects the check function.

from typing import Any

import dagster as dg

from batchor_core import RunSummary

from .constants import DEFAULT_RESOURCE_KEY, RUN_ID_METADATA_KEY, SUPERSEDED_PREFIX
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
    """A check that passes when fewer than ``threshold`` of the latest run's items failed
    (for a partitioned asset: of each partition's latest run; the worst one is reported).

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
        or f"Fewer than {threshold:.1%} of the items of the asset's latest batchor run "
        "(of each partition's, when partitioned) failed.",
        required_resource_keys={resource_key},
        blocking=blocking,
    )
    def _failed_fraction(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        resource: BatchorResource = getattr(context.resources, resource_key)
        latest = _latest_per_partition(resource, key)
        if not latest:
            return dg.AssetCheckResult(
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"{key.to_user_string()} has no batchor materialization yet",
            )

        def fraction(s: RunSummary) -> float:
            return s.failed_items / s.total_items if s.total_items else 0.0

        worst = max(latest.values(), key=fraction)
        worst_fraction = fraction(worst)
        bad = [s for s in latest.values() if not _passes(fraction(s), threshold)]
        where = ""
        if len(latest) > 1 or _partition(worst) is not None:
            where = f" in partition {_partition(worst)!r} (worst of {len(latest)})"
        return dg.AssetCheckResult(
            passed=not bad,
            description=(
                f"{worst.failed_items} of {worst.total_items} items failed "
                f"({worst_fraction:.2%}){where}; threshold {threshold:.2%}"
            ),
            metadata={
                RUN_ID_METADATA_KEY: dg.MetadataValue.text(worst.run_id),
                "failed_fraction": dg.MetadataValue.float(round(worst_fraction, 6)),
                "failed_items": worst.failed_items,
                "total_items": worst.total_items,
                "threshold": dg.MetadataValue.float(threshold),
                "partitions_checked": len(latest),
                "partitions_failing": dg.MetadataValue.json(
                    sorted(str(_partition(s)) for s in bad)
                ),
            },
        )

    return _failed_fraction


def _passes(fraction: float, threshold: float) -> bool:
    # "below the threshold"; no failures at all always pass (so threshold=0 means none)
    return fraction < threshold or fraction == 0.0


def _partition(summary: RunSummary) -> str | None:
    owner: Any = summary.owner or {}
    value = owner.get("partition") if isinstance(owner, dict) else None
    return None if value is None else str(value)


def _latest_per_partition(resource: BatchorResource, key: dg.AssetKey) -> dict[Any, RunSummary]:
    """The latest collected (materialized) run of each partition of the asset."""
    latest: dict[Any, RunSummary] = {}
    runs = resource.get_runner().list_runs(owner={"asset": key.to_user_string()}, collected=True)
    for summary in runs:
        if (summary.collected_by or "").startswith(SUPERSEDED_PREFIX):
            continue
        partition = _partition(summary)
        known = latest.get(partition)
        if known is None or (summary.collected_at or summary.created_at) >= (
            known.collected_at or known.created_at
        ):
            latest[partition] = summary
    return latest
