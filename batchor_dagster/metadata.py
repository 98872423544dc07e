"""What a batchor run looks like in Dagster: observation and materialization metadata."""

from __future__ import annotations

from typing import Any

import dagster as dg

from batchor_core import Run, RunSummary

from .constants import RUN_ID_METADATA_KEY, RUN_ID_TAG
from .ids import tag_value

__all__ = ["materialization_metadata", "observation", "observation_metadata", "preview_markdown"]


def _counts(summary: RunSummary) -> dict[str, Any]:
    return {
        "batchor/status": summary.status.value,
        "batchor/items_total": summary.total_items,
        "batchor/items_completed": summary.completed_items,
        "batchor/items_failed": summary.failed_items,
        "batchor/items_cancelled": summary.cancelled_items,
        "batchor/items_pending": summary.pending_items,
    }


def observation_metadata(summary: RunSummary, *, note: str | None = None) -> dict[str, Any]:
    """Metadata of an observation while a run is in flight (cheap, from the summary)."""
    done = summary.total_items - summary.pending_items
    metadata: dict[str, Any] = {
        RUN_ID_METADATA_KEY: dg.MetadataValue.text(summary.run_id),
        **_counts(summary),
        "batchor/batches_total": summary.batches_total,
        "batchor/batches_in_flight": summary.batches_in_flight,
        "batchor/batch_ids": dg.MetadataValue.json(list(summary.batch_ids)),
        "batchor/progress": dg.MetadataValue.float(
            round(done / summary.total_items, 4) if summary.total_items else 0.0
        ),
    }
    if summary.status_reason:
        metadata["batchor/status_reason"] = dg.MetadataValue.text(summary.status_reason)
    if summary.waiting_reason:
        metadata["batchor/waiting_reason"] = dg.MetadataValue.text(summary.waiting_reason)
    if summary.last_error:
        metadata["batchor/last_error"] = dg.MetadataValue.text(summary.last_error)
        metadata["batchor/stalled_chunks"] = summary.stalled_chunks
    if note:
        metadata["batchor/note"] = dg.MetadataValue.text(note)
    return metadata


def observation(
    key: dg.AssetKey, partition: str | None, summary: RunSummary, *, note: str | None = None
) -> dg.AssetObservation:
    """The observation of a run that is not (or not newly) materialized."""
    return dg.AssetObservation(
        asset_key=key,
        partition=partition,
        metadata=observation_metadata(summary, note=note),
        tags={RUN_ID_TAG: tag_value(summary.run_id)},
    )


def materialization_metadata(
    run: Run,
    summary: RunSummary,
    *,
    partitioned: bool,
    export_path: str | None,
    preview_rows: int,
) -> dict[str, Any]:
    """Metadata of the one materialization of a finished run."""
    finished = summary.updated_at
    metadata: dict[str, Any] = {
        RUN_ID_METADATA_KEY: dg.MetadataValue.text(summary.run_id),
        "batchor/run_id_tag": dg.MetadataValue.text(tag_value(summary.run_id)),
        **_counts(summary),
        "batchor/model": dg.MetadataValue.text(summary.model or ""),
        "batchor/endpoint": dg.MetadataValue.text(summary.endpoint or ""),
        "batchor/batch_ids": dg.MetadataValue.json(list(summary.batch_ids)),
        "batchor/batches_total": summary.batches_total,
        "batchor/input_tokens": summary.usage.input_tokens,
        "batchor/output_tokens": summary.usage.output_tokens,
        "batchor/total_tokens": summary.usage.total_tokens,
        "batchor/cached_input_tokens": summary.usage.cached_input_tokens,
        "batchor/reasoning_tokens": summary.usage.reasoning_tokens,
        "batchor/started_at": dg.MetadataValue.timestamp(summary.created_at),
        "batchor/finished_at": dg.MetadataValue.timestamp(finished),
        "batchor/duration_seconds": dg.MetadataValue.float(
            round((finished - summary.created_at).total_seconds(), 3)
        ),
        "batchor/error_codes": dg.MetadataValue.json(run.error_counts()),
        ("dagster/partition_row_count" if partitioned else "dagster/row_count"): (
            summary.total_items
        ),
    }
    if summary.status_reason:
        metadata["batchor/status_reason"] = dg.MetadataValue.text(summary.status_reason)
    if summary.cost is not None:
        metadata["batchor/cost_usd"] = dg.MetadataValue.float(round(summary.cost, 6))
    if summary.cost_note:
        metadata["batchor/cost_note"] = dg.MetadataValue.text(summary.cost_note)
    if export_path is not None:
        metadata["dagster/uri"] = dg.MetadataValue.path(export_path)
        metadata["batchor/results_path"] = dg.MetadataValue.path(export_path)
    if preview_rows > 0:
        metadata["batchor/preview"] = dg.MetadataValue.md(preview_markdown(run, preview_rows))
    return metadata


def preview_markdown(run: Run, rows: int) -> str:
    """A markdown table of the first ``rows`` results (long cells cut)."""
    head: list[dict[str, Any]] = []
    for result in run.results(page_size=max(rows, 1)):
        output: Any = result.output
        if hasattr(output, "model_dump"):
            output = output.model_dump(mode="json")
        row: dict[str, Any] = {"item_id": result.item_id, "status": result.status.value}
        if isinstance(output, dict):
            row.update({str(k): v for k, v in output.items()})
        elif output is not None:
            row["output"] = output
        if result.error is not None:
            row["error"] = result.error.code
        head.append(row)
        if len(head) >= rows:
            break
    if not head:
        return "_no results_"
    columns: list[str] = []
    for row in head:
        columns.extend(c for c in row if c not in columns)
    lines = [
        "| " + " | ".join(columns) + " |",
        "| " + " | ".join("---" for _ in columns) + " |",
    ]
    for row in head:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."
