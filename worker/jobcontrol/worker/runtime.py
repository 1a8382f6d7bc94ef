"""The worker runtime: claim, run, heartbeat, notice cancellation, finish, drain.

One loop claims as many jobs as there are free slots in one store call, and claims
again at once when a slot frees; when nothing is claimable it polls with a cheap read
every (jittered) poll interval and claims when the read finds work.
Each job runs in its own task with a progress writer. Heartbeats renew the leases and
carry cancellation back; a faster poll of the store's cancel requests (one indexed
read for all of this worker's jobs) makes cancellation reach a handler within about
the cancel poll interval. A job whose lease is lost stops without another write.
Successful results are written in groups (`completions.CompletionWriter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from jobcontrol.errors import InvalidArgument, LeaseLost, StoreUnavailable, WorkerNotFound
from jobcontrol.jobs import ErrorCode, Job, JobError
from jobcontrol.store import JobStore
from jobcontrol.worker.completions import CompletionWriter
from jobcontrol.worker.context import JobContext, StopReason
from jobcontrol.worker.handlers import (
    Handler,
    JobCancelled,
    PermanentError,
    Registry,
    RetryableError,
)
from jobcontrol.workers import Worker as WorkerRecord
from jobcontrol.workers import WorkerInfo

log = logging.getLogger(__name__)

HANDLER_STOP_GRACE_SECONDS = 5.0
# Idle polls and cancel polls are indexed reads: locally they cost next to nothing,
# remotely a round trip each.
LOCAL_POLL_INTERVAL = timedelta(milliseconds=50)
REMOTE_POLL_INTERVAL = timedelta(milliseconds=250)
LOCAL_CANCEL_POLL_INTERVAL = timedelta(milliseconds=100)
REMOTE_CANCEL_POLL_INTERVAL = timedelta(milliseconds=200)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    name: str = f"{socket.gethostname()}:{os.getpid()}"
    concurrency: int = os.cpu_count() or 1
    types: tuple[str, ...] = ()  # empty: every registered type
    lease_timeout: timedelta = timedelta(seconds=30)
    heartbeat_interval: timedelta | None = None  # default: a third of the lease
    poll_interval: timedelta = LOCAL_POLL_INTERVAL
    cancel_poll_interval: timedelta = LOCAL_CANCEL_POLL_INTERVAL
    drain_grace: timedelta = timedelta(seconds=30)

    @property
    def heartbeat_every(self) -> float:
        interval = self.heartbeat_interval or self.lease_timeout / 3
        return interval.total_seconds()


@dataclass(eq=False)
class _Running:
    job: Job
    context: JobContext
    task: asyncio.Task[None]


class Worker:
    def __init__(
        self,
        store: JobStore,
        registry: Registry,
        config: WorkerConfig,
        *,
        on_write: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._registry = registry
        self._config = config
        self._on_write = on_write or (lambda: None)
        self._types = list(config.types or registry.types())
        unknown = [t for t in self._types if registry.get(t) is None]
        if unknown:
            raise InvalidArgument("types", f"no handler registered for {', '.join(unknown)}")
        self._running: dict[str, _Running] = {}
        self._completions = CompletionWriter(store)
        self._slot_freed = asyncio.Event()
        self.worker_id: str | None = None

    @property
    def running_jobs(self) -> list[str]:
        return list(self._running)

    async def run(self, stop: asyncio.Event, stop_now: asyncio.Event | None = None) -> None:
        """Work until `stop` is set, then drain: running jobs get the grace period to
        finish, then are stopped and handed back. `stop_now` skips the grace period."""
        stop_now = stop_now or asyncio.Event()
        worker = await self._register()
        self.worker_id = worker.id
        log.info(
            "worker %s (%s) running %s with %d slots",
            worker.name,
            worker.id,
            ", ".join(self._types),
            self._config.concurrency,
        )
        background = [
            asyncio.create_task(self._heartbeats(), name="heartbeats"),
            asyncio.create_task(self._cancel_requests(), name="cancel-requests"),
        ]
        try:
            await self._claim_loop(stop)
            await self._drain(stop_now)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            if self._running:  # cancelled from outside: still hand the jobs back
                await self._stop_all(StopReason.SHUTDOWN)
            with contextlib.suppress(StoreUnavailable, WorkerNotFound):
                await self._store.deregister_worker(worker.id)
            log.info("worker %s stopped", worker.id)

    async def _register(self) -> WorkerRecord:
        info = WorkerInfo(
            name=self._config.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            job_types=tuple(self._types),
            concurrency=self._config.concurrency,
        )
        delay = 0.5
        while True:
            try:
                return await self._store.register_worker(info)
            except StoreUnavailable as error:
                log.warning("cannot register yet: %s", error.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    # ---- claiming ------------------------------------------------------------------

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        assert self.worker_id is not None
        failures = 0
        idle = False  # the last claim found less than it asked for
        while not stop.is_set():
            free = self._config.concurrency - len(self._running)
            if free <= 0:
                await _first(stop.wait(), self._slot_freed_wait())
                continue
            try:
                # While idle, ask with a read first: polling often then never takes the
                # store's write lock from the workers and servers that have work.
                if idle and not await self._store.has_claimable_jobs(types=self._types):
                    await self._idle_wait(stop)
                    continue
                jobs = await self._store.claim_jobs(
                    worker_id=self.worker_id,
                    types=self._types,
                    limit=free,
                    lease_timeout=self._config.lease_timeout,
                )
                failures = 0
            except StoreUnavailable as error:
                failures += 1
                log.warning("claim failed: %s", error.message)
                await _first(stop.wait(), asyncio.sleep(min(10.0, 0.25 * 2**failures)))
                continue
            if jobs:
                self._on_write()
            for job in jobs:
                self._start(job)
            idle = len(jobs) < free
            if idle:
                await self._idle_wait(stop)

    async def _idle_wait(self, stop: asyncio.Event) -> None:
        """Until a slot frees or about a poll interval passes. The jitter spreads workers
        started together: in lock-step they poll at once and a job waits for the next
        cluster; spread, N workers find it in about interval / (2N)."""
        interval = self._config.poll_interval.total_seconds() * random.uniform(0.5, 1.5)
        await _first(stop.wait(), self._slot_freed_wait(), asyncio.sleep(interval))

    async def _slot_freed_wait(self) -> None:
        self._slot_freed.clear()
        await self._slot_freed.wait()

    def _start(self, job: Job) -> None:
        context = JobContext(job, self._store, asyncio.get_running_loop())
        task = asyncio.create_task(self._run_job(job, context), name=f"job-{job.id}")
        self._running[job.id] = _Running(job, context, task)

    # ---- running one job -----------------------------------------------------------

    async def _run_job(self, job: Job, context: JobContext) -> None:
        handler = self._registry.get(job.type)
        assert handler is not None
        writer = asyncio.create_task(context.write_progress())
        extra = {"job_id": job.id, "attempt": job.attempt, "worker_id": self.worker_id}
        try:
            outcome = await self._call(handler, context, job)
            writer.cancel()
            await context.flush_progress()
            await self._record(job, context, outcome)
        except LeaseLost:
            log.warning("lost the lease on job %s; abandoning it", job.id, extra=extra)
        except StoreUnavailable as error:
            log.warning("could not record job %s: %s", job.id, error.message, extra=extra)
        finally:
            writer.cancel()
            self._running.pop(job.id, None)
            self._slot_freed.set()

    async def _call(self, handler: Handler, context: JobContext, job: Job) -> Outcome:
        """Run the handler until it returns, raises, times out or is stopped."""
        if handler.is_async:
            call: Awaitable[Any] = handler.function(context)  # type: ignore[assignment]
        else:
            call = asyncio.to_thread(handler.function, context)
        handler_task = asyncio.ensure_future(call)
        stopped = asyncio.create_task(context.wait_cancelled())
        timeout = _remaining(job)
        try:
            done, _ = await asyncio.wait(
                {handler_task, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if handler_task not in done:
                if not done:
                    context.request_stop(StopReason.TIMEOUT)
                # Cooperative handlers see the stop flag; async ones are cancelled too.
                handler_task.cancel()
                await asyncio.wait({handler_task}, timeout=HANDLER_STOP_GRACE_SECONDS)
                if handler_task.done() and not handler_task.cancelled():
                    handler_task.exception()  # retrieved: its failure is the stop itself
                return Outcome(stopped=context.stop_reason)
            error = handler_task.exception()
            if error is None:
                return Outcome(result=handler_task.result() or {})
            if context.stop_reason is not None or isinstance(error, JobCancelled):
                return Outcome(stopped=context.stop_reason or StopReason.CANCEL_REQUESTED)
            return Outcome(error=error)
        finally:
            stopped.cancel()

    async def _record(self, job: Job, context: JobContext, outcome: Outcome) -> None:
        if context.lease_lost or outcome.stopped is StopReason.LEASE_LOST:
            log.warning("lease on job %s was lost; writing nothing more", job.id)
            return
        lease = {"job_id": job.id, "lease_id": context.lease_id}
        if outcome.stopped is StopReason.SHUTDOWN:
            await self._store.release_job(**lease)
        elif outcome.stopped is StopReason.CANCEL_REQUESTED:
            await self._store.record_cancelled(**lease)
        elif outcome.stopped is StopReason.TIMEOUT:
            await self._store.time_out_job(**lease)
        elif outcome.error is not None:
            await self._store.fail_job(**lease, error=_job_error(outcome.error))
        else:
            result = outcome.result if isinstance(outcome.result, Mapping) else {}
            try:
                await self._completions.complete(**lease, result=result)
            except InvalidArgument as error:  # e.g. result too large or not JSON
                await self._store.fail_job(
                    **lease, error=JobError("invalid_result", error.message, retryable=False)
                )
        self._on_write()

    # ---- heartbeats and cancellation -----------------------------------------------

    async def _heartbeats(self) -> None:
        assert self.worker_id is not None
        while True:
            await asyncio.sleep(self._config.heartbeat_every)
            try:
                await self._store.heartbeat_worker(self.worker_id)
            except StoreUnavailable as error:
                log.warning("worker heartbeat failed: %s", error.message)
            except WorkerNotFound:
                log.warning("worker %s was removed from the store", self.worker_id)
            for running in list(self._running.values()):
                await self._heartbeat_job(running)

    async def _heartbeat_job(self, running: _Running) -> None:
        context = running.context
        try:
            ack = await self._store.heartbeat_job(
                job_id=running.job.id,
                lease_id=context.lease_id,
                lease_timeout=self._config.lease_timeout,
            )
        except LeaseLost:
            context.lease_lost = True
            context.request_stop(StopReason.LEASE_LOST)
            return
        except StoreUnavailable as error:
            log.warning("heartbeat of job %s failed: %s", running.job.id, error.message)
            return
        if ack.cancel_requested:
            context.request_stop(StopReason.CANCEL_REQUESTED)

    async def _cancel_requests(self) -> None:
        assert self.worker_id is not None
        while True:
            await asyncio.sleep(self._config.cancel_poll_interval.total_seconds())
            if not self._running:
                continue
            try:
                requested = await self._store.list_cancel_requests(worker_id=self.worker_id)
            except StoreUnavailable:
                continue  # the heartbeat reports it too
            for job_id in requested:
                running = self._running.get(job_id)
                if running is not None:
                    running.context.request_stop(StopReason.CANCEL_REQUESTED)

    # ---- draining ------------------------------------------------------------------

    async def _drain(self, stop_now: asyncio.Event) -> None:
        assert self.worker_id is not None
        if not self._running:
            return
        with contextlib.suppress(StoreUnavailable, WorkerNotFound):
            await self._store.drain_worker(self.worker_id)
        log.info(
            "draining: %d jobs have %.0fs to finish",
            len(self._running),
            self._config.drain_grace.total_seconds(),
        )
        tasks = [r.task for r in self._running.values()]
        await _first(
            asyncio.wait(tasks, timeout=self._config.drain_grace.total_seconds()),
            stop_now.wait(),
        )
        await self._stop_all(StopReason.SHUTDOWN)

    async def _stop_all(self, reason: StopReason) -> None:
        running = list(self._running.values())
        for r in running:
            r.context.request_stop(reason)
        await asyncio.gather(*(r.task for r in running), return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Mapping[str, Any] | None = None
    error: BaseException | None = None
    stopped: StopReason | None = None


def _remaining(job: Job) -> float | None:
    if job.deadline is None:
        return None
    return max(0.0, (job.deadline - datetime.now(UTC)).total_seconds())


def _job_error(error: BaseException) -> JobError:
    message = str(error) or type(error).__name__
    if isinstance(error, PermanentError):
        return JobError(error.code, message, retryable=False)
    if isinstance(error, RetryableError):
        return JobError(error.code, message, retryable=True)
    return JobError(ErrorCode.HANDLER_ERROR, f"{type(error).__name__}: {message}", True)


async def _first(*waits: Awaitable[Any]) -> None:
    """Wait until the first of several awaitables completes; cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
