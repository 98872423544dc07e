"""Ingest a file source through the runner (the crash tests SIGKILL it mid-ingest).

Usage: python -m tests.crash.source_worker DB ARTIFACTS BASE_URL RUN_ID KIND PATH
Prints one JSON summary line when the run finishes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from batchor_core import (
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    LocalArtifactStore,
    OpenAIProviderConfig,
    SQLiteStorage,
)
from batchor_core.ports import ItemSource
from batchor_core.sources import CsvSource, JsonlSource, ParquetSource


def source(kind: str, path: Path) -> ItemSource:
    """The same source definition in every process."""
    if kind == "csv":
        return CsvSource(path, id_column="id", payload_columns=["text"])
    if kind == "jsonl":
        return JsonlSource(path, id_field="id", payload_fields=["text"])
    return ParquetSource(path, id_column="id", payload_columns=["text"], batch_rows=7)


def job() -> BatchJob:
    """The job every worker process uses."""
    return BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda item: str(item.payload["text"]),
        chunk_policy=ChunkPolicy(max_requests=40),
    )


def main() -> None:
    db, artifacts, base_url, run_id, kind, path = sys.argv[1:7]
    with BatchRunner(
        storage=SQLiteStorage(db),
        artifacts=LocalArtifactStore(artifacts),
        provider=OpenAIProviderConfig(api_key="sk-test", base_url=base_url, max_retries=0),
        ingest_slice_size=10,
    ) as runner:
        run = runner.start(job(), items=source(kind, Path(path)), run_id=run_id)
        summary = run.wait(timeout=60, poll_interval=0.02)
        print(
            json.dumps(
                {
                    "status": summary.status.value,
                    "total": summary.total_items,
                    "completed": summary.completed_items,
                    "failed": summary.failed_items,
                }
            )
        )


if __name__ == "__main__":
    main()
