"""StallPolicy on artifact-store errors: transient ones get the 30 min budget, the rest
about a minute; provider errors keep their rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from batchor_core.errors import ArtifactError, ProviderError
from batchor_core.stalls import StallPolicy

_NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _after(seconds: float) -> datetime:
    return _NOW - timedelta(seconds=seconds)


def test_an_unreachable_store_backs_off_until_the_transient_budget_then_pauses() -> None:
    policy = StallPolicy()
    exc = ArtifactError("cannot read s3://b/p/runs/x: EndpointConnectionError")
    assert exc.retryable
    early = policy.decide(exc, first_error_at=_after(1799), now=_NOW, what="collecting batch b1")
    assert early.pause_reason is None and early.delay_seconds == 5.0
    late = policy.decide(exc, first_error_at=_after(1800), now=_NOW, what="collecting batch b1")
    assert late.pause_reason == (
        "collecting batch b1: artifact store unreachable for 30 min (budget 30 min): "
        "cannot read s3://b/p/runs/x: EndpointConnectionError; fix it and resume() the run."
    )


def test_an_artifact_error_no_retry_fixes_pauses_after_the_permanent_budget() -> None:
    policy = StallPolicy()
    exc = ArtifactError("part is corrupt", retryable=False)
    assert policy.decide(exc, first_error_at=_after(59), now=_NOW, what="w").pause_reason is None
    reason = policy.decide(exc, first_error_at=_after(60), now=_NOW, what="sealing chunk c1")
    assert reason.pause_reason is not None
    assert reason.pause_reason.startswith("sealing chunk c1: part is corrupt (retried for 60s")


def test_provider_errors_keep_their_rules() -> None:
    policy = StallPolicy()
    denied = ProviderError("HTTP 401: bad key", status_code=401)
    assert policy.decide(denied, first_error_at=None, now=_NOW, what="w").pause_reason
    flaky = ProviderError("HTTP 503", status_code=503, retryable=True)
    reason = policy.decide(flaky, first_error_at=_after(1800), now=_NOW, what="w").pause_reason
    assert reason is not None and "transient errors" in reason
    assert "artifact store" not in reason
