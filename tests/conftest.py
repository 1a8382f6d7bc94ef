"""Shared fixtures: a controllable clock and real stores on real files."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest


class ManualClock:
    """A clock tests move by hand, so leases, backoff and reaping need no sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        with self._lock:
            self._now += delta
            return self._now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()
