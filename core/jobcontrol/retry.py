"""Retry backoff: exponential with jitter, so failing jobs neither hammer a broken
dependency nor retry in lock-step."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Delay before attempt n+1 after attempt n failed.

    The un-jittered delay is ``base * factor ** (n - 1)``, capped at ``cap``; the
    actual delay is drawn uniformly from its upper half ("equal jitter"), so it is
    never shorter than half the nominal delay and never longer than the cap.

    The store applies one policy to every job; a handler may name its own for its
    type (``@handler("x", retry=RetryPolicy(base=timedelta(seconds=10)))``).
    Invalid values raise ValueError or TypeError when the policy is made.
    """

    base: timedelta = timedelta(seconds=1)
    factor: float = 2.0
    cap: timedelta = timedelta(minutes=5)

    def __post_init__(self) -> None:
        for name in ("base", "cap"):
            value = getattr(self, name)
            if not isinstance(value, timedelta):
                raise TypeError(f"RetryPolicy {name} must be a datetime.timedelta, got {value!r}")
            if value < timedelta(0):
                raise ValueError(f"RetryPolicy {name} must not be negative, got {value}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            raise TypeError(f"RetryPolicy factor must be a number, got {self.factor!r}")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"RetryPolicy factor must be at least 1, got {self.factor}")

    def nominal_delay(self, attempt: int) -> timedelta:
        if attempt < 1:
            raise ValueError(f"attempt must be at least 1, got {attempt}")
        cap_s = self.cap.total_seconds()
        try:
            seconds = self.base.total_seconds() * self.factor ** (attempt - 1)
        except OverflowError:  # the cap applies long before a float runs out
            seconds = cap_s
        return timedelta(seconds=min(seconds, cap_s))

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        nominal = self.nominal_delay(attempt).total_seconds()
        draw = (rng or _rng).uniform(0.5, 1.0)
        return timedelta(seconds=nominal * draw)


_rng = random.Random()

DEFAULT_RETRY_POLICY = RetryPolicy()
