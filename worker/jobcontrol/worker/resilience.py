"""Riding out store failures: backoff between retries, and logging by episode.

A worker must outlive any failure of its store, expected (StoreUnavailable) or not (a
driver error nobody mapped, a bug). Each call site retries with capped, jittered
exponential backoff and reports a run of failures as one episode: a line when it
starts and one when the store answers again, never a line per retry, so an outage of
an hour costs two log lines per call site rather than thousands.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from jobcontrol.errors import JobControlError
from jobcontrol.retry import RetryPolicy

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Backoff:
    """One call site's run of retries, delayed as jobs' own retries are
    (`jobcontrol.retry.RetryPolicy`: capped exponential with equal jitter), so retries
    from many workers spread out but never come back sooner than half the nominal
    delay. Seconds here, for the call sites."""

    base: float = 0.1
    cap: float = 5.0
    failures: int = 0

    def next_delay(self) -> float:
        self.failures += 1
        policy = RetryPolicy(base=timedelta(seconds=self.base), cap=timedelta(seconds=self.cap))
        return policy.delay(self.failures).total_seconds()

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
