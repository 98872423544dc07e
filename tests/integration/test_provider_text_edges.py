"""Provider text that a store cannot keep as it is must not stall a run.

The provider's error messages reach the items table verbatim. Postgres text (and the
JSON rows its outcome update is sent as) refuses NUL, so an error line whose message holds
one made every collection of its batch fail: the run never went on. Each store must keep
the same, escaped, message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from batchor_core import BatchItem, BatchJob, BatchRunner, ItemStatus, RetryPolicy, RunStatus
from batchor_core.storage import SQLStateStore

pytestmark = pytest.mark.integration


def test_an_error_message_with_nul_is_recorded_escaped_on_every_store(
    make_runner: Callable[..., BatchRunner], store: SQLStateStore, emulator: Any, run_id: str
) -> None:
    emulator.faults.line_fault(contains="doomed", kind="error", message="bad\x00thing")
    job = BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda item: str(item.payload["text"]),
        retry_policy=RetryPolicy(max_attempts=1),
    )
    items = [
        BatchItem(item_id="ok", payload={"text": "fine"}),
        BatchItem(item_id="bad", payload={"text": "doomed"}),
    ]
    run = make_runner(storage=store).start(job, items=items, run_id=run_id)
    summary = run.wait(timeout=30, poll_interval=0.05)
    assert summary.status is RunStatus.COMPLETED
    assert (summary.completed_items, summary.failed_items) == (1, 1)
    bad = run.item("bad")
    assert bad is not None and bad.status is ItemStatus.FAILED and bad.error is not None
    assert "bad\\x00thing" in bad.error.message and "\x00" not in bad.error.message
