"""A separate process running one run against a shared store and the emulator.

``python -m tests.integration.budget_worker STORE ARTIFACTS BASE_URL RUN_ID LIMIT N MODEL``:
STORE is a SQLite path or a Postgres URL; MODEL is unique to the test, so runs of other
tests in a shared Postgres database do not draw on the same budget. Prints the final
status.
"""

from __future__ import annotations

import sys

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    EnqueueLimit,
    LocalArtifactStore,
    OpenAIProviderConfig,
)
from batchor_core.defaults import open_storage


def main() -> None:
    store, artifacts, base_url, run_id, limit, n, model = sys.argv[1:8]
    runner = BatchRunner(
        storage=open_storage(store),
        artifacts=LocalArtifactStore(artifacts),
        provider=OpenAIProviderConfig(
            api_key="sk-test",
            base_url=base_url,
            enqueue_limits={model: EnqueueLimit(tokens=int(limit))},
        ),
        transient_backoff_seconds=0.0,
        token_limit_backoff_seconds=0.0,
        create_grace_seconds=0.0,
    )
    job = BatchJob(
        model=model,
        build_prompt=lambda item: f"summarise item {item.item_id} " + "words " * 20,
        chunk_policy=ChunkPolicy(max_requests=1000),
    )
    items = [BatchItem(item_id=f"{run_id}-{i}") for i in range(int(n))]
    with runner:
        run = runner.start(job, items=items, run_id=run_id)
        summary = run.wait(timeout=120, poll_interval=0.02)
        print(summary.status.value, summary.completed_items, flush=True)


if __name__ == "__main__":
    main()
