"""A batchor process the crash tests start, SIGKILL (via BATCHOR_CRASH_AT) and restart.

Usage: python -m tests.crash.worker DB ARTIFACTS BASE_URL RUN_ID N_ITEMS
ARTIFACTS is a directory or an object-store URL (``s3://bucket/prefix``).
Prints one JSON summary line when the run finishes.
"""

from __future__ import annotations

import json
import os
import sys
import time

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    LocalArtifactStore,
    OpenAIProviderConfig,
    PostgresStorage,
    RetryPolicy,
    RunLeasedError,
    SQLiteStorage,
)
from tests.integration.review_model import Review


def items(n: int) -> list[BatchItem]:
    """Deterministic items; some carry markers the emulator turns into faults."""
    out = []
    for i in range(n):
        marker = "flaky" if i % 9 == 4 else "badjson" if i % 11 == 6 else "plain"
        out.append(BatchItem(item_id=f"item-{i:03d}", payload={"text": f"{marker} review {i}"}))
    return out


def job() -> BatchJob:
    """The job every worker process uses (same fingerprint across restarts)."""
    return BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda item: str(item.payload["text"]),
        output_model=Review,
        chunk_policy=ChunkPolicy(max_requests=7),
        retry_policy=RetryPolicy(max_attempts=3),
    )


def main() -> None:
    db, artifacts, base_url, run_id, n = sys.argv[1:6]
    store_url = os.environ.get("BATCHOR_TEST_STORE_URL")
    runner = BatchRunner(
        storage=PostgresStorage(store_url) if store_url else SQLiteStorage(db),
        artifacts=artifacts if "://" in artifacts else LocalArtifactStore(artifacts),
        provider=OpenAIProviderConfig(api_key="sk-test", base_url=base_url, max_retries=0),
        ingest_slice_size=5,
        transient_backoff_seconds=0.0,
        token_limit_backoff_seconds=0.0,
        # The default lease TTL (120 s): a killed predecessor is detected by its liveness
        # lock, not by waiting for its lease to expire.
    )
    # Chunks of 7 collected in parts of 3: a crash can land between two parts.
    runner.stepper.collector.record_batch = 3
    deadline = time.monotonic() + 60
    while True:
        try:
            run = runner.start(job(), items=items(int(n)), run_id=run_id)
            break
        except RunLeasedError:
            # Another live worker (the concurrency test) is advancing the run.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    summary = run.wait(timeout=60, poll_interval=0.02)
    print(
        json.dumps(
            {
                "status": summary.status.value,
                "completed": summary.completed_items,
                "failed": summary.failed_items,
                "total": summary.total_items,
            }
        )
    )
    runner.close()


if __name__ == "__main__":
    main()
