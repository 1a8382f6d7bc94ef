"""Retry backoff: exponential with jitter, so failing jobs neither hammer a broken
dependency nor retry in lock-step."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delay before attempt n+1 after attempt n failed.

    The un-jittered delay is ``base * factor ** (n - 1)``, capped at ``cap``; the
    actual delay is drawn uniformly from its upper half ("equal jitter"), so it is
    never shorter than half the nominal delay and never longer than the cap.
    """

    base: timedelta = timedelta(seconds=1)
    factor: float = 2.0
    cap: timedelta = timedelta(minutes=5)

    def nominal_delay(self, attempt: int) -> timedelta:
        if attempt < 1:
            raise ValueError(f"attempt must be at least 1, got {attempt}")
        cap_s = self.cap.total_seconds()
        exponent = attempt - 1
        # Past ~1,000 doublings the float overflows; the cap applies long before.
        seconds = cap_s if exponent > 1000 else self.base.total_seconds() * self.factor**exponent
        return timedelta(seconds=min(seconds, cap_s))

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        nominal = self.nominal_delay(attempt).total_seconds()
        draw = (rng or _rng).uniform(0.5, 1.0)
        return timedelta(seconds=nominal * draw)


_rng = random.Random()

DEFAULT_RETRY_POLICY = RetryPolicy()
