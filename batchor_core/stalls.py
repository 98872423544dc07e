"""How long a chunk may keep failing at the provider before the run pauses with a reason.

A run must never loop silently. Every provider error a step meets is charged to the
chunk it concerns; the chunk remembers when its current streak of errors began
(``first_error_at``, cleared by the next success), so the bound survives restarts:

- a transient fault (429, 5xx, dropped connection, timeout) backs off (``Retry-After``
  when given) until the streak is ``transient_budget_seconds`` old, then the run pauses;
- a permanent one (another 4xx, an answer of the wrong shape) is retried a few times
  within ``permanent_budget_seconds``, then the run pauses;
- an error no retry fixes (bad credentials, no quota) pauses the run at once.

The pause reason names the call, the HTTP status and the provider's message; ``resume()``
clears the streaks, so the run retries at once after the cause is fixed.

Artifact-store failures met while advancing a chunk (S3 unreachable, a full disk) are
charged the same way: a retryable :class:`ArtifactError` is transient (the run pauses
once the store has been failing for the transient budget), one no retry fixes (committed
bytes lost, a corrupt part, a vanished file) is permanent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from batchor_core.errors import ArtifactError, ProviderError, RateLimitedError

__all__ = ["StallDecision", "StallError", "StallPolicy"]

StallError = ProviderError | ArtifactError
"""An error charged to a chunk: the provider's, or the artifact store's."""

_PAUSE_AT_ONCE_STATUSES = frozenset({401, 403})
_PAUSE_AT_ONCE_CODES = frozenset({"insufficient_quota"})
_PERMANENT_TRIES = 4  # retries of a permanent error spread over its budget


@dataclass(frozen=True, slots=True)
class StallDecision:
    """What to do after a provider error.

    Attributes:
        delay_seconds: How long the chunk waits before the call is tried again.
        pause_reason: Pause the run with this reason, or None to keep retrying.
    """

    delay_seconds: float
    pause_reason: str | None


@dataclass(frozen=True, slots=True)
class StallPolicy:
    """Bounds on retrying provider errors, per chunk.

    Attributes:
        transient_backoff_seconds: Wait after a transient error without ``Retry-After``.
        transient_budget_seconds: How long a chunk may keep meeting transient errors.
        permanent_budget_seconds: How long a permanent error is retried before pausing.
    """

    transient_backoff_seconds: float = 5.0
    transient_budget_seconds: float = 1800.0
    permanent_budget_seconds: float = 60.0

    def decide(
        self, exc: StallError, *, first_error_at: datetime | None, now: datetime, what: str
    ) -> StallDecision:
        """Decide on ``exc``, met while ``what`` (``"chunk c0003"``), for a streak so far.

        Args:
            exc: The provider's (or the artifact store's) error.
            first_error_at: When the chunk's streak began (None: this is the first error).
            now: The current time.
            what: What the error concerns, for the pause reason.
        """
        elapsed = (now - first_error_at).total_seconds() if first_error_at else 0.0
        if exc.retryable:
            delay = self.transient_backoff_seconds
            if isinstance(exc, RateLimitedError) and exc.retry_after_seconds is not None:
                delay = max(exc.retry_after_seconds, 0.0)
            if elapsed >= self.transient_budget_seconds and isinstance(exc, ArtifactError):
                return StallDecision(
                    delay,
                    f"{what}: artifact store unreachable for {_minutes(elapsed)} (budget "
                    f"{_minutes(self.transient_budget_seconds)}): {exc.message}; fix it and "
                    "resume() the run.",
                )
            if elapsed >= self.transient_budget_seconds:
                return StallDecision(
                    delay,
                    f"{what}: still failing after {_minutes(elapsed)} of transient errors "
                    f"(budget {_minutes(self.transient_budget_seconds)}); last error: "
                    f"{exc.message}. resume() retries at once.",
                )
            return StallDecision(delay, None)
        if isinstance(exc, ProviderError) and (
            exc.status_code in _PAUSE_AT_ONCE_STATUSES or exc.code in _PAUSE_AT_ONCE_CODES
        ):
            return StallDecision(self.transient_backoff_seconds, f"{what}: {exc.message}")
        delay = max(
            self.transient_backoff_seconds, self.permanent_budget_seconds / _PERMANENT_TRIES
        )
        if elapsed >= self.permanent_budget_seconds:
            return StallDecision(
                delay,
                f"{what}: {exc.message} (retried for {_minutes(elapsed)}; fix the cause, then "
                "resume() the run)",
            )
        return StallDecision(delay, None)


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f} min"
