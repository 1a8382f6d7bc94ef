"""Admission control: how much work the server takes on at once.

Three limits, each refusing with RESOURCE_EXHAUSTED and a message that names the flag:

- unary calls in flight (`--max-concurrent-rpcs`), checked before the request is
  read: a refused call costs only what HTTP/2 flow control let its client send ahead;
- open WatchJob/WatchJobs streams (`--max-streams`), counted apart because a stream
  costs little while it waits and the project serves 10,000 of them per process;
- bytes of unary requests being worked on (`--max-request-bytes-in-flight`). The server
  holds a request at many times its wire size while converting it (a 16 MiB SubmitJobs
  of 50,000-key payloads costs some 300 MiB), so without this budget 50 such requests
  at once would take gigabytes. A request is always taken when nothing else is in
  flight, so any request within the message limit can get through.

Reading a request is gated too: at most `MAX_CONCURRENT_READS` unary requests are read
at once, the others wait their turn (up to `READ_WAIT_SECONDS`, then are refused), so
the bytes received and not yet admitted stay bounded whatever the number of clients. A
request must then arrive whole, and its client close its side of the call, within
`READ_SECONDS`, so that a client which never finishes cannot keep a read slot.

Health checks and reflection are not JobControl methods and are never refused.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from jobcontrol.server.metrics import Metrics

MIB = 1024 * 1024
DEFAULT_MAX_CONCURRENT_RPCS = 1_000
# Twice the 10,000 watchers bench/fanout.py serves from one process.
DEFAULT_MAX_STREAMS = 20_000
# One largest request (16 MiB) and room for small calls beside it.
DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT = 24 * MIB

# Requests read at once; each is at most one message (16 MiB).
MAX_CONCURRENT_READS = 4
READ_WAIT_SECONDS = 10.0
READ_SECONDS = 60.0

RPCS = "concurrent_rpcs"
READS = "reads"
STREAMS = "streams"
REQUEST_BYTES = "request_bytes"


@dataclass(frozen=True, slots=True)
class LoadLimits:
    max_concurrent_rpcs: int = DEFAULT_MAX_CONCURRENT_RPCS
    max_streams: int = DEFAULT_MAX_STREAMS
    max_request_bytes_in_flight: int = DEFAULT_MAX_REQUEST_BYTES_IN_FLIGHT


class Refused(Exception):
    """Past a limit: the message says which, for the client; `limit` labels the metric."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class Admission:
    """Counts what is in flight in this process (one event loop: no locking needed)."""

    def __init__(self, limits: LoadLimits, metrics: Metrics) -> None:
        self.limits = limits
        self._metrics = metrics
        self.unary = 0
        self.streams = 0
        self.request_bytes = 0
        self._reads = asyncio.Semaphore(MAX_CONCURRENT_READS)

    def enter_unary(self, method: str) -> None:
        """Take a unary call before reading its request, or raise Refused."""
        limits = self.limits
        if self.unary >= limits.max_concurrent_rpcs:
            self._refuse(
                method,
                RPCS,
                f"the server is at its limit of {limits.max_concurrent_rpcs} calls in flight "
                "(--max-concurrent-rpcs); retry with backoff",
            )
        self.unary += 1
        self._metrics.unary_in_flight.set(self.unary)

    def leave_unary(self) -> None:
        self.unary -= 1
        self._metrics.unary_in_flight.set(self.unary)

    @contextlib.asynccontextmanager
    async def reading(self, method: str) -> AsyncIterator[None]:
        """Hold one of the few read slots while a request is received."""
        try:
            await asyncio.wait_for(self._reads.acquire(), READ_WAIT_SECONDS)
        except TimeoutError:
            self._refuse(
                method,
                READS,
                f"the server waited {READ_WAIT_SECONDS:g}s to read this request while others "
                "were being received; retry with backoff",
            )
        try:
            async with asyncio.timeout(READ_SECONDS):
                yield
        except TimeoutError:
            self._refuse(
                method,
                READS,
                f"the request did not arrive whole within {READ_SECONDS:g}s of the server "
                "starting to read it; send one message and close the request side",
            )
        finally:
            self._reads.release()

    def take_bytes(self, method: str, size: int) -> None:
        """Count a request's `size` bytes while it is worked on, or raise Refused."""
        budget = self.limits.max_request_bytes_in_flight
        if self.request_bytes and self.request_bytes + size > budget:
            self._refuse(
                method,
                REQUEST_BYTES,
                f"the server is busy with {_mib(self.request_bytes)} of requests and this "
                f"{_mib(size)} one would pass its budget of {_mib(budget)} "
                "(--max-request-bytes-in-flight); retry with backoff, or send smaller batches",
            )
        self.request_bytes += size
        self._metrics.request_bytes_in_flight.set(self.request_bytes)

    def release_bytes(self, size: int) -> None:
        self.request_bytes -= size
        self._metrics.request_bytes_in_flight.set(self.request_bytes)

    def enter_stream(self, method: str) -> None:
        if self.streams >= self.limits.max_streams:
            self._refuse(
                method,
                STREAMS,
                f"the server is at its limit of {self.limits.max_streams} open streams "
                "(--max-streams); retry with backoff, or watch through another replica",
            )
        self.streams += 1

    def leave_stream(self) -> None:
        self.streams -= 1

    def _refuse(self, method: str, limit: str, message: str) -> None:
        self._metrics.refused.labels(method, limit).inc()
        raise Refused(limit, message)


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"
