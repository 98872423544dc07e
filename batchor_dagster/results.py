"""Results for downstream assets: an IO manager and ``load_results`` for plain code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import dagster as dg

from batchor_core import BatchRunner, ItemStatus, RunSummary

from .constants import DEFAULT_RESOURCE_KEY
from .resource import BatchorResource

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]

__all__ = ["BatchorResultsIOManager", "latest_collected_run", "load_results"]


def _runner_of(source: Any, resource_key: str = DEFAULT_RESOURCE_KEY) -> BatchRunner:
    if isinstance(source, BatchRunner):
        return source
    if isinstance(source, BatchorResource):
        return source.get_runner()
    resources = getattr(source, "resources", None)
    resource = getattr(resources, resource_key, None) if resources is not None else None
    if isinstance(resource, BatchorResource):
        return resource.get_runner()
    raise TypeError(
        "load_results needs a BatchRunner, a BatchorResource, or a Dagster context with "
        f"the {resource_key!r} resource, got {type(source).__name__}"
    )


def load_results(
    context_or_runner: Any,
    run_id: str,
    *,
    status: ItemStatus | str | None = None,
    resource_key: str = DEFAULT_RESOURCE_KEY,
) -> pd.DataFrame:
    """A durable run's terminal results as a ``pandas.DataFrame``, built through Arrow.

    Columns: ``item_id``, ``status``, the output model's fields (nested models as dicts),
    ``error_code``, ``error_message``, ``attempts``, ``input_tokens``, ``output_tokens``,
    ``metadata``, ``cursor``; text jobs have one ``output`` column instead of fields.

    Args:
        context_or_runner: A :class:`BatchRunner`, a :class:`BatchorResource`, or a Dagster
            context whose resources include the batchor resource.
        run_id: The durable run id.
        status: Only results with this status.
        resource_key: The batchor resource's key, when a context is given.
    """
    runner = _runner_of(context_or_runner, resource_key)
    return runner.get_run(run_id).to_pandas(status=status)


def latest_collected_run(
    runner: BatchRunner, asset_key: dg.AssetKey, partition: str | None
) -> RunSummary | None:
    """The most recently collected durable run of an asset (partition), if any."""
    runs = runner.list_runs(
        owner={"asset": asset_key.to_user_string(), "partition": partition}, collected=True
    )
    return max(runs, key=lambda s: (s.collected_at, s.run_id), default=None)


class BatchorResultsIOManager(dg.ConfigurableIOManager):
    """Loads a batchor asset's results into downstream assets as a ``pandas.DataFrame``.

    Bind it under a key (for example ``"batchor_results"``) and pass that key as
    ``io_manager_key`` to :func:`batchor_asset`; a downstream ``@asset`` that takes the
    batchor asset as a parameter then receives the results of its latest collected run
    (one frame per partition, concatenated when several partitions are loaded).

    Attributes:
        batchor: The batchor resource the results are read through.
        status: Only load results with this status (for example ``completed``).
    """

    batchor: BatchorResource
    status: str | None = None

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        """Nothing to store: the results already live in the batchor store."""
        if obj is not None:
            raise dg.Failure(
                description="BatchorResultsIOManager only serves batchor_asset outputs; "
                f"{context.asset_key.to_user_string()} returned a value"
            )

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        """The upstream asset's latest collected results (per partition loaded)."""
        import pandas as pd

        runner = self.batchor.get_runner()
        key = context.asset_key
        partitions: list[str | None] = (
            list(context.asset_partition_keys) if context.has_asset_partitions else [None]
        )
        frames = []
        for partition in partitions:
            summary = latest_collected_run(runner, key, partition)
            if summary is None:
                where = f" partition {partition!r}" if partition is not None else ""
                raise dg.Failure(
                    description=f"{key.to_user_string()}{where} has no collected batchor run "
                    "yet; materialize it (and let the sensor collect it) first"
                )
            context.log.info(
                f"batchor: loading results of run {summary.run_id!r} ({summary.total_items} items)"
            )
            frames.append(runner.get_run(summary.run_id).to_pandas(status=self.status))
        if len(frames) == 1:
            return frames[0]
        return pd.concat(frames, ignore_index=True)
