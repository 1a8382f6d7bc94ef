"""Riding out store failures: backoff between retries, and logging by episode.

A worker must outlive any failure of its store, expected (StoreUnavailable) or not (a
driver error nobody mapped, a bug). Each call site retries with capped, jittered
exponential backoff and reports a run of failures as one episode: a line when it
starts and one when the store answers again, never a line per retry, so an outage of
an hour costs two log lines per call site rather than thousands.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

from jobcontrol.errors import JobControlError

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Backoff:
    """Capped exponential backoff with "equal jitter": each delay is drawn from the upper
    half of the nominal one, so retries from many workers spread out but never come
    back sooner than half the nominal delay."""

    base: float = 0.1
    cap: float = 5.0
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        nominal = min(self.cap, self.base * 2.0 ** min(self.failures - 1, 30))
        return nominal / 2 + random.uniform(0, nominal / 2)

    def reset(self) -> None:
        self.failures = 0


@dataclass(slots=True)
class Episode:
    """One call site's current run of failures (`what` names the site in the log)."""

    what: str
    failures: int = 0
    started: float = field(default=0.0)

    def failed(self, error: BaseException) -> None:
        """Count a failure; log only the first of an episode. An error that is not one
        of our own refusals is logged with its traceback: it is either a driver error
        nobody mapped or a bug in our code, and both must stay visible."""
        self.failures += 1
        if self.failures > 1:
            log.debug("%s failed again (%d): %r", self.what, self.failures, error)
            return
        self.started = time.monotonic()
        if isinstance(error, JobControlError):
            log.warning("%s failed: %s; retrying with backoff", self.what, error.message)
        else:
            log.error(
                "%s failed with an unexpected %s; retrying with backoff",
                self.what,
                type(error).__name__,
                exc_info=error,
            )

    def succeeded(self) -> None:
        """End the episode, if one is running, with one line."""
        if self.failures:
            log.info(
                "%s: store reachable again after %d failures/%.1fs",
                self.what,
                self.failures,
                time.monotonic() - self.started,
            )
            self.failures = 0

    @property
    def failing(self) -> bool:
        return self.failures > 0
