"""Clocks: the real one, and a fake one for tests that never sleeps."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

__all__ = ["FakeClock", "SystemClock"]


class SystemClock:
    """Wall-clock time in aware UTC; ``sleep`` really sleeps."""

    def now(self) -> datetime:
        """The current time."""
        return datetime.now(UTC)

    def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` (non-positive values return at once)."""
        if seconds > 0:
            time.sleep(seconds)


class FakeClock:
    """A clock that only moves when told to, or when something sleeps on it.

    Args:
        start: Initial time (defaults to 2026-01-01 UTC).
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self.slept: list[float] = []

    def now(self) -> datetime:
        """The fake current time."""
        return self._now

    def sleep(self, seconds: float) -> None:
        """Advance time by ``seconds`` instead of sleeping."""
        self.slept.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        """Move time forward."""
        self._now += timedelta(seconds=max(0.0, seconds))
