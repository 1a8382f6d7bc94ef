"""Following one job through WatchJob across dropped connections and server restarts.

The server keeps every event in the store and, given `after_sequence`, replays what came
after it. So resuming is: reconnect (with backoff) and ask for the events after the last
sequence handed to the caller. The caller sees every transition exactly once and in
order, and the watch ends after the terminal event. Both client flavours drive this one
state; they differ only in how they wait.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc

from jobcontrol import convert
from jobcontrol.client.backoff import Backoff
from jobcontrol.client.errors import Unavailable, error_from_rpc
from jobcontrol.jobs import EventKind, JobEvent
from jobcontrol.store import JobFilter
from jobcontrol.v1 import job_control_pb2 as api

log = logging.getLogger(__name__)

# UNAVAILABLE: the server went away or is shutting down. RESOURCE_EXHAUSTED: the server
# dropped a reader that fell too far behind; a replay from the store catches it up.
RESUMABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
# Not stored, so not ordered by sequence: they carry the sequence of the latest change.
_UNSTORED_KINDS = frozenset({EventKind.SNAPSHOT, EventKind.QUEUE_POSITION})


class WatchResumption:
    """Where a watch stands: the last sequence delivered, whether it is over, and how
    long it has been trying to reconnect."""

    method = "WatchJob"  # the RPC that `request()` is for

    def __init__(
        self,
        job_id: str,
        *,
        after_sequence: int | None,
        backoff: Backoff,
        reconnect_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id = job_id
        self.finished = False
        self._last = after_sequence
        self._backoff = backoff
        self._reconnect_timeout = reconnect_timeout
        self._clock = clock
        self._broken_since: float | None = None
        self._reconnects = 0

    @property
    def last_sequence(self) -> int | None:
        return self._last

    @property
    def subject(self) -> str:
        """What is watched, for messages."""
        return f"job {self.job_id}"

    def request(self) -> api.WatchJobRequest | api.WatchJobsRequest:
        """A snapshot first while nothing was delivered yet; after that, a replay of what
        came after the last delivered event."""
        request = api.WatchJobRequest(job_id=self.job_id)
        if self._last is not None:
            request.after_sequence = self._last
        return request

    def accept(self, message: api.WatchJobResponse) -> JobEvent | None:
        """The event to hand to the caller, or None for one it already has."""
        event = convert.event_from_proto(message.event)
        if (
            event.kind not in _UNSTORED_KINDS
            and self._last is not None
            and event.sequence <= self._last
        ):
            return None
        self._last = max(self._last or 0, event.sequence)
        self._broken_since = None  # the connection works: the reconnect budget starts over
        self._reconnects = 0
        if self._ends_watch(event):
            self.finished = True
        return event

    def _ends_watch(self, event: JobEvent) -> bool:
        return event.job.is_terminal and event.kind is not EventKind.QUEUE_POSITION

    def reconnect_delay(self, error: grpc.RpcError | None) -> float:
        """Seconds to wait before reconnecting after the stream broke with `error` (None:
        it ended before the terminal event). Raises the typed error instead when the
        status is an answer rather than an outage, or when the budget is spent."""
        if error is not None and error.code() not in RESUMABLE_CODES:
            raise error_from_rpc(error, job_id=self.job_id or None) from error
        now = self._clock()
        if self._broken_since is None:
            self._broken_since = now
        waited = now - self._broken_since
        if waited >= self._reconnect_timeout:
            why = (error.details() or error.code().name) if error else "the stream ended early"
            raise Unavailable(
                f"gave up resuming the watch of {self.subject} after "
                f"{self._reconnect_timeout:g}s: {why}"
            ) from error
        self._reconnects += 1
        delay = min(self._backoff.delay(self._reconnects), self._reconnect_timeout - waited)
        log.info(
            "watch of %s broke (%s); resuming after sequence %s in %.2fs",
            self.subject,
            error.code().name if error else "stream ended early",
            self._last,
            delay,
            extra={"job_id": self.job_id},
        )
        return delay


class FeedResumption(WatchResumption):
    """Where a WatchJobs feed stands: like a watch of one job, but it never finishes,
    and a resumed feed asks for the matching events after the last one delivered."""

    method = "WatchJobs"

    def __init__(
        self,
        job_filter: JobFilter,
        *,
        after_sequence: int | None,
        backoff: Backoff,
        reconnect_timeout: float,
    ) -> None:
        super().__init__(
            "", after_sequence=after_sequence, backoff=backoff, reconnect_timeout=reconnect_timeout
        )
        self._filter = job_filter

    @property
    def subject(self) -> str:
        return "jobs"

    def request(self) -> api.WatchJobsRequest:
        request = api.WatchJobsRequest(filter=convert.filter_to_proto(self._filter))
        if self.last_sequence is not None:
            request.after_sequence = self.last_sequence
        return request

    def _ends_watch(self, event: JobEvent) -> bool:
        return False
