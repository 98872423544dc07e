"""A process that takes a run's lease and then waits to be killed (restart tests).

Usage: python -m tests.crash.lease_holder DB ARTIFACTS BASE_URL RUN_ID [--own-handler]
       [--owner=OWNER_ID] [--ttl=SECONDS]
ARTIFACTS is a directory or an object-store URL.
Prints ``held <true|false>`` (whether SIGTERM still has the program's own handler) once
it holds the lease, then sleeps.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

from batchor_core import (
    BatchRunner,
    LocalArtifactStore,
    OpenAIProviderConfig,
    PostgresStorage,
    SQLiteStorage,
)
from tests.crash.worker import items, job


def _own_handler(_signum: int, _frame: FrameType | None) -> None:
    sys.exit(7)


def main() -> None:
    db, artifacts, base_url, run_id = sys.argv[1:5]
    own = "--own-handler" in sys.argv
    if own:
        signal.signal(signal.SIGTERM, _own_handler)
    store_url = os.environ.get("BATCHOR_TEST_STORE_URL")
    owner = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--owner=")), None)
    ttl = next((float(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--ttl=")), 120.0)
    runner = BatchRunner(
        owner_id=owner,
        lease_ttl_seconds=ttl,
        storage=PostgresStorage(store_url) if store_url else SQLiteStorage(db),
        artifacts=artifacts if "://" in artifacts else LocalArtifactStore(artifacts),
        provider=OpenAIProviderConfig(api_key="sk-test", base_url=base_url, max_retries=0),
    )
    runner.start(job(), items=items(8), run_id=run_id)
    runner.stepper.lease.acquire(run_id)  # held until the process ends
    kept = signal.getsignal(signal.SIGTERM) is _own_handler
    print(f"held {str(kept).lower()}", flush=True)
    time.sleep(120)


if __name__ == "__main__":
    main()
