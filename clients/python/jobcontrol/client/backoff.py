"""Retrying calls that failed because the server could not be reached.

Only UNAVAILABLE is retried: it is the status for "nothing happened, try again" (server
down or restarting, store unreachable). Everything else is an answer. Delays grow
exponentially and carry jitter, so many clients cut off by one restart do not come back
in lockstep.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import grpc

from jobcontrol.client.errors import error_from_rpc

log = logging.getLogger(__name__)

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": the n-th retry waits between half and all
    of min(maximum, initial * multiplier**(n-1)) seconds. Never zero, so a dead server is
    not hammered; never more than `maximum`.

    `max_attempts` bounds unary calls (the first attempt included); a watch is bounded by
    time instead (`watch_reconnect_timeout`), since it may have to outlast a restart.
    """

    initial: float = 0.2
    multiplier: float = 2.0
    maximum: float = 5.0
    max_attempts: int = 5

    def __post_init__(self) -> None:
        if self.initial <= 0 or self.maximum < self.initial or self.multiplier < 1:
            raise ValueError("backoff needs 0 < initial <= maximum and multiplier >= 1")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (the first attempt)")

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** max(retry - 1, 0))
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class Attempts:
    """The retry budget of one call. A call is retried only when it is safe to repeat
    (see `UnaryCall.safe`); when it is not retried, the failure is raised as the typed
    error of `jobcontrol.client.errors`."""

    def __init__(
        self, backoff: Backoff, *, method: str, safe: bool, job_id: str | None = None
    ) -> None:
        self._backoff = backoff
        self._method = method
        self._safe = safe
        self._job_id = job_id
        self._retries = 0

    def after(self, error: grpc.RpcError) -> float:
        """Seconds to wait before the next attempt; raises when there is none."""
        code = error.code()
        if (
            not self._safe
            or code not in RETRYABLE_CODES
            or self._retries + 1 >= self._backoff.max_attempts
        ):
            raise error_from_rpc(error, job_id=self._job_id) from error
        self._retries += 1
        delay = self._backoff.delay(self._retries)
        log.debug(
            "%s failed with %s; retry %d of %d in %.2fs",
            self._method,
            code.name,
            self._retries,
            self._backoff.max_attempts - 1,
            delay,
        )
        return delay
