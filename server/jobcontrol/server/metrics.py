"""Prometheus metrics of one server process, and a store wrapper that counts and times
its calls.

Counting store calls is how we show that watchers do not cost the store anything: the
count of `list_events` calls depends on time, not on the number of open streams. Timing
them says what the store costs each caller, which on a remote store is most of a claim
or a completion.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Awaitable
from typing import Any, TypeVar, cast

import grpc
import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jobcontrol.jobs import JobState
from jobcontrol.store import JobStore

LOOP_LAG_INTERVAL = 0.02
T = TypeVar("T")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpcs = Counter(
            "jobcontrol_rpcs",
            "RPCs handled, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "jobcontrol_rpc_duration_seconds",
            "Time to handle an RPC (for streams: how long the stream was open)",
            ["method"],
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "jobcontrol_open_streams", "Streams open now", ["method"], registry=self.registry
        )
        self.jobs = Gauge(
            "jobcontrol_jobs", "Jobs in the store by state", ["state"], registry=self.registry
        )
        self.tail_lag = Histogram(
            "jobcontrol_event_tail_lag_seconds",
            "Time from an event's commit to its fan-out by this server",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.store_calls = Counter(
            "jobcontrol_store_calls",
            "Store operations issued by this server, by operation",
            ["operation"],
            registry=self.registry,
        )
        self.store_call_seconds = Histogram(
            "jobcontrol_store_call_duration_seconds",
            "Time from a store call to its answer (its wait for a connection included), "
            "by operation",
            ["operation"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "jobcontrol_event_loop_lag_seconds",
            "How late the event loop ran a timer: time every stream and RPC of this "
            "process waited for something else holding the loop (or the GIL)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=self.registry,
        )
        self.refused = Counter(
            "jobcontrol_rpcs_refused",
            "Calls refused with RESOURCE_EXHAUSTED because a load limit was reached, by "
            "method and limit (concurrent_rpcs, streams, request_bytes)",
            ["method", "limit"],
            registry=self.registry,
        )
        self.unary_in_flight = Gauge(
            "jobcontrol_unary_rpcs_in_flight",
            "Unary calls being handled now",
            registry=self.registry,
        )
        self.request_bytes_in_flight = Gauge(
            "jobcontrol_request_bytes_in_flight",
            "Bytes of unary requests being handled now (see --max-request-bytes-in-flight)",
            registry=self.registry,
        )
        self.coalesced = Counter(
            "jobcontrol_events_coalesced",
            "Events replaced by a newer one of the same job because a watcher was behind",
            registry=self.registry,
        )

    async def sample_loop_lag(self, every: float = LOOP_LAG_INTERVAL) -> None:
        """Runs until cancelled."""
        while True:
            due = time.monotonic() + every
            await asyncio.sleep(every)
            self.loop_lag.observe(max(0.0, time.monotonic() - due))

    def observe_rpc(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.rpcs.labels(method, code.name).inc()
        self.rpc_seconds.labels(method).observe(seconds)

    def set_job_counts(self, counts: dict[JobState, int]) -> None:
        for state, count in counts.items():
            self.jobs.labels(state.value).set(count)

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        prometheus_client.start_http_server(
            int(port), addr=host or "0.0.0.0", registry=self.registry
        )


class _MeteredStore:
    def __init__(self, inner: JobStore, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not callable(attribute) or name.startswith("_"):
            return attribute
        counter = self._metrics.store_calls.labels(name)
        seconds = self._metrics.store_call_seconds.labels(name)

        @functools.wraps(attribute)
        def counted(*args: Any, **kwargs: Any) -> Any:
            counter.inc()
            result = attribute(*args, **kwargs)
            if inspect.isawaitable(result):
                return _timed(result, seconds)
            return result

        return counted


async def _timed(call: Awaitable[T], histogram: Histogram) -> T:
    started = time.perf_counter()
    try:
        return await call
    finally:
        histogram.observe(time.perf_counter() - started)


def metered(store: JobStore, metrics: Metrics) -> JobStore:
    """The same store, counting every call in `jobcontrol_store_calls_total` and timing
    it in `jobcontrol_store_call_duration_seconds`."""
    return cast(JobStore, _MeteredStore(store, metrics))
