"""Run a handler in a unit test: no store, no server, no worker process.

    from jobcontrol.worker import JobCancelled
    from jobcontrol.worker.testing import HandlerTestEnvironment, run_handler

    def test_demo_sleep():
        assert run_handler("demo.sleep", {"steps": 2, "seconds": 0})["steps"] == 2

    def test_demo_sleep_stops_when_cancelled():
        env = HandlerTestEnvironment()
        env.on_progress = lambda progress: env.cancel()  # at the first report
        with pytest.raises(JobCancelled):
            env.run("demo.sleep", {"steps": 100, "seconds": 10})
        assert len(env.progress) == 1

As `temporalio.testing.ActivityEnvironment` does for activities, the environment gives
the handler a real `JobContext` and runs it as the worker would: async handlers on the
event loop (their task cancelled when the job is stopped), plain functions in a thread
(waited for: they stop when they next check). The payload and the result go through
JSON and the same checks as in the store, so a result the store would refuse fails here
too. The handler's `timeout` applies.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from jobcontrol.durations import format_duration
from jobcontrol.ids import new_id
from jobcontrol.jobs import DEFAULT_MAX_ATTEMPTS, Job, JobState, Progress
from jobcontrol.validation import DEFAULT_MAX_PAYLOAD_BYTES, encode_json
from jobcontrol.worker.context import JobContext, StopReason, StopSignal
from jobcontrol.worker.fetch_guard import FetchAllowList
from jobcontrol.worker.handlers import (
    Handler,
    HandlerFunction,
    JobCancelled,
    Registry,
    default_registry,
)

__all__ = ["HandlerTestEnvironment", "run_handler"]

# The job type a handler function that no registry holds sees in `ctx.job_type`.
UNREGISTERED_TYPE = "test.unregistered"


class HandlerTestEnvironment:
    """Runs handlers, by job type or function, with a `JobContext` of its own.

    `progress` holds every `report_progress` of the latest run, in order;
    `on_progress`, if set, is called with each as it is reported (in the handler's
    thread for a plain function). `cancel()` asks the running handler to stop, from any
    thread or callback; called before `run`, the handler starts cancelled. `run` returns
    the handler's result (`{}` for None) or raises what the handler raised, and
    `JobCancelled` if it stopped because it was cancelled (or timed out: `TimeoutError`).

    The job the handler sees has `attempt` and `max_attempts` as given (the handler's
    `max_attempts` setting applies to the default as in a worker), `labels`, and fresh
    ids; its `fetch_allow` is the `FetchAllowList` given, as `--fetch-allow` sets it in a
    worker (`FetchAllowList.parse(["127.0.0.1"])` lets `media.fetch` reach a test
    server). Types are looked up in `registry`; in the default one the built-in types
    (demo.sleep, audio.transcode, media.fetch) are there as in every worker.
    """

    def __init__(
        self,
        *,
        attempt: int = 1,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        labels: Mapping[str, str] | None = None,
        registry: Registry = default_registry,
        fetch_allow: FetchAllowList | None = None,
    ) -> None:
        if attempt < 1 or max_attempts < 1:
            raise ValueError(
                f"attempt and max_attempts must be at least 1, got {attempt}, {max_attempts}"
            )
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.labels = dict(labels or {})
        self.registry = registry
        self.fetch_allow = fetch_allow or FetchAllowList()
        self.progress: list[Progress] = []
        self.on_progress: Callable[[Progress], None] | None = None
        self._stop: StopSignal | None = None
        self._cancel_before_start = False

    def cancel(self) -> None:
        """Request cancellation, as a CancelJob would."""
        if self._stop is None:
            self._cancel_before_start = True
        else:
            self._stop.request(StopReason.CANCEL_REQUESTED)

    def run(
        self, handler: str | HandlerFunction, payload: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run to the end in a new event loop; from async code use `run_async`."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run_async(handler, payload))
        raise RuntimeError("run() called from a running event loop: await run_async() instead")

    async def run_async(
        self, handler: str | HandlerFunction, payload: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        entry = self._handler(handler)
        job = self._job(entry.job_type, payload or {})
        stop = StopSignal(asyncio.get_running_loop())
        context = JobContext(
            job,
            stop=stop,
            on_progress=self._report,
            max_attempts=entry.attempts_for(job),
            fetch_allow=self.fetch_allow,
        )
        self.progress = []
        self._stop = stop
        if self._cancel_before_start:
            self._cancel_before_start = False
            stop.request(StopReason.CANCEL_REQUESTED)
        try:
            return await _run(entry, context, stop, job)
        finally:
            self._stop = None

    def _report(self, progress: Progress) -> None:
        self.progress.append(progress)
        if self.on_progress is not None:
            self.on_progress(progress)

    def _handler(self, handler: str | HandlerFunction) -> Handler:
        if self.registry is default_registry:
            importlib.import_module("jobcontrol.worker.builtin")
        if isinstance(handler, str):
            entry = self.registry.get(handler)
            if entry is None:
                raise LookupError(
                    f"no handler for job type {handler!r}: import the module that defines it"
                    f" (registered: {', '.join(self.registry.types()) or 'none'})"
                )
            return entry
        for job_type in self.registry.types():
            entry = self.registry.get(job_type)
            if entry is not None and entry.function is handler:
                return entry
        if not callable(handler):
            raise TypeError(f"a job type or a handler function, got {handler!r}")
        # Not registered: run it with no settings of its own.
        return Handler(UNREGISTERED_TYPE, handler, inspect.iscoroutinefunction(handler))

    def _job(self, job_type: str, payload: Mapping[str, Any]) -> Job:
        now = datetime.now(UTC)
        return Job(
            id=new_id(),
            type=job_type,
            payload=json.loads(
                encode_json(payload, field="payload", max_bytes=DEFAULT_MAX_PAYLOAD_BYTES)
            ),
            state=JobState.RUNNING,
            priority=0,
            labels=dict(self.labels),
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            create_time=now,
            update_time=now,
            run_after=now,
            lease_id=new_id(),
            start_time=now,
        )


def run_handler(
    handler: str | HandlerFunction,
    payload: Mapping[str, Any] | None = None,
    *,
    attempt: int = 1,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    labels: Mapping[str, str] | None = None,
    registry: Registry = default_registry,
) -> dict[str, Any]:
    """One run in a fresh `HandlerTestEnvironment`: the result, or what was raised."""
    environment = HandlerTestEnvironment(
        attempt=attempt, max_attempts=max_attempts, labels=labels, registry=registry
    )
    return environment.run(handler, payload)


async def _run(entry: Handler, context: JobContext, stop: StopSignal, job: Job) -> dict[str, Any]:
    """As the worker's runtime does: a stop cancels an async handler at once; a plain
    function in its thread is waited for, as it cannot be interrupted."""
    if entry.is_async:
        task: asyncio.Future[Any] = asyncio.ensure_future(entry.function(context))  # type: ignore[arg-type]
    else:
        task = asyncio.ensure_future(asyncio.to_thread(entry.function, context))
    stopped = asyncio.ensure_future(stop.wait())
    timeout = entry.timeout_for(job)
    try:
        done, _ = await asyncio.wait(
            {task, stopped},
            timeout=timeout.total_seconds() if timeout else None,
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        stopped.cancel()
    if task not in done:  # stopped first: the worker records the stop, whatever follows
        if not done:
            stop.request(StopReason.TIMEOUT)
        if entry.is_async:
            task.cancel()
        await asyncio.wait({task})
        error = None if task.cancelled() else task.exception()
        if stop.reason is StopReason.TIMEOUT:
            raise TimeoutError(
                f"{entry.job_type}: attempt ran past its timeout of {format_duration(timeout or 0)}"
            ) from error
        if isinstance(error, JobCancelled):
            raise error
        raise JobCancelled(_reason(stop)) from error
    error = task.exception()
    if isinstance(error, JobCancelled):
        raise error
    if error is not None:
        if stop.is_set:
            raise JobCancelled(_reason(stop)) from error
        raise error
    result = task.result()
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        raise TypeError(f"{entry.job_type}: a handler returns a dict or None, got {result!r}")
    stored: dict[str, Any] = json.loads(
        encode_json(result, field="result", max_bytes=DEFAULT_MAX_PAYLOAD_BYTES)
    )
    return stored


def _reason(stop: StopSignal) -> str:
    return stop.reason.value if stop.reason else "cancelled"
