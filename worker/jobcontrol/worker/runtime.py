"""The worker runtime: claim, run, heartbeat, notice cancellation, finish, drain.

One loop claims as many jobs as there are free slots in one store call, and claims
again at once when a slot frees; when nothing is claimable it polls with a cheap read
every (jittered) poll interval and claims when the read finds work. A slot frees when
its handler ends, not when the outcome is stored, so the next claim travels while the
last outcomes wait for their (grouped) write: with a network between worker and store,
a claim and a write in a row would leave the slots idle for two round trips a batch.
Each job runs in its own task (with a progress writer from its first update).
Heartbeats renew the leases and carry cancellation back; a faster poll of the store's
cancel requests (one indexed read for all of this worker's jobs) makes cancellation
reach a handler within about the cancel poll interval. A job whose lease is lost stops
without another write. Successful results are written in groups
(`completions.CompletionWriter`).

No store failure stops the worker: every call site retries with capped, jittered
backoff and logs one line when an episode of failures starts and one when it ends
(`resilience`). A finished job's outcome is never dropped while its lease may still be
held: the job keeps its place among the leases renewed by heartbeats, and the write is
retried until it lands, the store says the lease is lost, the lease runs out, or the
drain grace of a shutdown ends. Held outcomes are bounded by count (one more set of
slots: a worker holding as many unrecorded outcomes as it has slots claims nothing, so
it never holds leases on more than twice its slots) and by bytes (`MAX_UNRECORDED_BYTES`:
past it the worker claims nothing until some are written); nothing is dropped to make
room.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
import traceback
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any

from jobcontrol.errors import InvalidArgument, LeaseLost
from jobcontrol.jobs import ErrorCode, Job, JobError, JobState
from jobcontrol.store import JobStore
from jobcontrol.store.protocol import MAX_BATCH_SIZE, ChangeKind
from jobcontrol.worker.completions import CompletionWriter
from jobcontrol.worker.context import JobRun, StopReason
from jobcontrol.worker.fetch_guard import FetchAllowList
from jobcontrol.worker.handlers import (
    Handler,
    JobCancelled,
    PermanentError,
    Registry,
    RetryableError,
)
from jobcontrol.worker.resilience import Backoff, Episode
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
# While a store pushes notifications (PostgreSQL's LISTEN), new jobs and cancel requests
# wake the worker, and it polls only this often, in case one was missed.
PUSHED_POLL_BACKSTOP = timedelta(seconds=2)
# Outcomes waiting for the store, by their size as JSON: past this the worker claims no
# more work until some are written (results are at most 1 MiB each).
MAX_UNRECORDED_BYTES = 64 * 1024 * 1024
# Retrying a write that failed: the store may be back any moment, so never wait long.
RECORD_RETRY = Backoff(base=0.1, cap=2.0)
# A finished job whose outcome the store answers but keeps refusing (a bug, not an
# outage) stops being renewed after this many lease periods, so it runs again elsewhere
# instead of holding its lease forever.
RECORD_PATIENCE_LEASES = 10


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
    # Private hosts and networks handlers may fetch from (`--fetch-allow`).
    fetch_allow: FetchAllowList = field(default_factory=FetchAllowList)

    @property
    def heartbeat_every(self) -> float:
        interval = self.heartbeat_interval or self.lease_timeout / 3
        return interval.total_seconds()


@dataclass(eq=False)
class _Running:
    job: Job
    handler: Handler
    run: JobRun
    task: asyncio.Task[None] | None = None
    # When the lease runs out unless renewed (monotonic; from when the claim or the last
    # renewal that went through was sent, so never later than the store's own time).
    lease_deadline: float = 0.0
    # When the handler ended (monotonic); set while its outcome waits to be written.
    finished_at: float | None = None
    unrecorded_bytes: int = 0
    started_at: float = field(default_factory=time.monotonic)


class Worker:
    def __init__(
        self,
        store: JobStore,
        registry: Registry,
        config: WorkerConfig,
    ) -> None:
        self._store = store
        self._registry = registry
        self._config = config
        self._types = list(config.types or registry.types())
        unknown = [t for t in self._types if registry.get(t) is None]
        if unknown:
            raise InvalidArgument("types", f"no handler registered for {', '.join(unknown)}")
        self._running: dict[str, _Running] = {}
        self._completions = CompletionWriter(store)
        self._slot_freed = asyncio.Event()
        self._jobs_pushed = asyncio.Event()  # a notification: a job may be claimable
        self._cancels_pushed = asyncio.Event()  # a notification: a cancel was requested
        self._idle = False  # the last claim found less than it asked for
        self._unrecorded_bytes = 0
        self._give_up_recording = asyncio.Event()  # the drain grace is over
        # One episode per call site: a site failing while another works (reads pass, writes
        # fail on a read-only file) must not turn every retry into a new episode.
        self._register_episode = Episode("registering the worker")
        self._claim_episode = Episode("claiming jobs")
        self._worker_heartbeat_episode = Episode("worker heartbeat")
        self._lease_episode = Episode("renewing job leases")
        self._cancel_episode = Episode("polling cancel requests")
        self._progress_episode = Episode("progress writes")
        self._record_episode = Episode("recording outcomes")
        self._loop_episode = Episode("worker loop")
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
        changes = self._store.changes
        unsubscribe = changes.subscribe(self._on_change) if changes is not None else None
        try:
            await self._claim_loop(stop)
            await self._drain(stop_now)
        finally:
            if unsubscribe is not None:
                unsubscribe()
            if self._running:  # cancelled from outside: still hand the jobs back
                self._give_up_recording.set()
                await self._stop_all(StopReason.SHUTDOWN)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            try:
                await self._store.deregister_worker(worker.id)
            except Exception as error:  # its record goes LOST; nothing else depends on it
                log.warning("could not deregister worker %s: %r", worker.id, error)
            log.info("worker %s stopped", worker.id)

    async def _register(self) -> WorkerRecord:
        info = WorkerInfo(
            name=self._config.name,
            host=socket.gethostname(),
            pid=os.getpid(),
            job_types=tuple(self._types),
            concurrency=self._config.concurrency,
        )
        backoff = Backoff(base=0.5, cap=10.0)
        while True:
            try:
                worker = await self._store.register_worker(info)
            except Exception as error:
                self._register_episode.failed(error)
                await asyncio.sleep(backoff.next_delay())
                continue
            self._register_episode.succeeded()
            return worker

    def _on_change(self, kind: ChangeKind | None) -> None:
        if kind is None or kind is ChangeKind.PENDING:
            self._jobs_pushed.set()
        if kind is None or kind is ChangeKind.CANCEL:
            self._cancels_pushed.set()

    def _poll_interval(self, interval: timedelta) -> float:
        """The configured interval, or the backstop while notifications arrive."""
        changes = self._store.changes
        if changes is not None and changes.live:
            interval = max(interval, PUSHED_POLL_BACKSTOP)
        return interval.total_seconds()

    # ---- claiming ------------------------------------------------------------------

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        """Claim until `stop`. Nothing raised in here ends the loop: a store error, or a
        bug of ours, is one episode in the log and a backoff."""
        backoff = Backoff(base=0.25, cap=5.0)
        while not stop.is_set():
            try:
                await self._claim_once(stop)
            except Exception as error:
                self._claim_episode.failed(error)
                await _first(stop.wait(), asyncio.sleep(backoff.next_delay()))
                continue
            backoff.reset()

    async def _claim_once(self, stop: asyncio.Event) -> None:
        assert self.worker_id is not None
        free = self._free_slots()
        if free <= 0 or self._unrecorded_bytes >= MAX_UNRECORDED_BYTES:
            await _first(stop.wait(), self._slot_freed_wait())
            return
        # While idle, ask with a read first: polling often then never takes the store's
        # write lock from the workers and servers that have work.
        self._jobs_pushed.clear()  # a notification from now on means look again
        if self._idle and not await self._store.has_claimable_jobs(types=self._types):
            self._claim_episode.succeeded()
            await self._idle_wait(stop)
            return
        claimed_at = time.monotonic()
        jobs = await self._store.claim_jobs(
            worker_id=self.worker_id,
            types=self._types,
            limit=free,
            lease_timeout=self._config.lease_timeout,
        )
        self._claim_episode.succeeded()
        for job in jobs:
            self._start(job, claimed_at)
        self._idle = len(jobs) < free
        if self._idle:
            await self._idle_wait(stop)

    def _free_slots(self) -> int:
        """Slots whose handler has ended, less what the outcomes still waiting for the
        store take beyond their own bound of one more set of slots."""
        concurrency = self._config.concurrency
        handlers = sum(1 for r in self._running.values() if r.finished_at is None)
        return min(concurrency - handlers, 2 * concurrency - len(self._running))

    async def _idle_wait(self, stop: asyncio.Event) -> None:
        """Until a slot frees or about a poll interval passes. The jitter spreads workers
        started together: in lock-step they poll at once and a job waits for the next
        cluster; spread, N workers find it in about interval / (2N)."""
        interval = self._poll_interval(self._config.poll_interval) * random.uniform(0.5, 1.5)
        await _first(
            stop.wait(),
            self._slot_freed_wait(),
            self._jobs_pushed.wait(),
            asyncio.sleep(interval),
        )

    async def _slot_freed_wait(self) -> None:
        self._slot_freed.clear()
        await self._slot_freed.wait()

    def _start(self, job: Job, claimed_at: float) -> None:
        handler = self._registry.get(job.type)
        assert handler is not None
        run = JobRun(
            job,
            self._store,
            asyncio.get_running_loop(),
            max_attempts=handler.attempts_for(job),
            progress_episode=self._progress_episode,
            fetch_allow=self._config.fetch_allow,
        )
        running = _Running(
            job,
            handler,
            run,
            lease_deadline=claimed_at + self._config.lease_timeout.total_seconds(),
        )
        self._running[job.id] = running
        running.task = asyncio.create_task(self._run_job(running), name=f"job-{job.id}")

    # ---- running one job -----------------------------------------------------------

    async def _run_job(self, running: _Running) -> None:
        job, run = running.job, running.run
        _log_claimed(running)
        try:
            try:
                outcome = await self._call(running.handler, run, job)
            except Exception as error:  # a bug of ours, not the handler's: fail the attempt
                log.exception("running job %s failed in the worker itself", job.id)
                outcome = Outcome(error=error)
            # Let a progress write in flight finish rather than cut it short: the update
            # it carries may be the last one, which must be stored before the outcome.
            await run.close_progress()
            running.finished_at = time.monotonic()
            self._slot_freed.set()
            await self._record_until_stored(running, outcome)
        finally:
            run.cancel_progress()
            self._unrecorded_bytes -= running.unrecorded_bytes
            running.unrecorded_bytes = 0
            self._running.pop(job.id, None)
            self._slot_freed.set()

    async def _call(self, handler: Handler, run: JobRun, job: Job) -> Outcome:
        """Run the handler until it returns, raises, times out or is stopped."""
        if handler.is_async:
            call: Awaitable[Any] = handler.function(run.context)  # type: ignore[assignment]
        else:
            call = asyncio.to_thread(handler.function, run.context)
        handler_task = asyncio.ensure_future(call)
        done, _ = await asyncio.wait(
            {handler_task, run.stopped},
            timeout=_remaining(job, handler),
            return_when=asyncio.FIRST_COMPLETED,
        )
        if handler_task not in done:
            if not done:
                run.request_stop(StopReason.TIMEOUT)
            # Cooperative handlers see the stop flag; async ones are cancelled too.
            handler_task.cancel()
            await asyncio.wait({handler_task}, timeout=HANDLER_STOP_GRACE_SECONDS)
            if handler_task.done() and not handler_task.cancelled():
                handler_task.exception()  # retrieved: its failure is the stop itself
            return Outcome(stopped=run.stop_reason)
        error = handler_task.exception()
        if error is None:
            return Outcome(result=handler_task.result() or {})
        if run.stop_reason is not None or isinstance(error, JobCancelled):
            return Outcome(stopped=run.stop_reason or StopReason.CANCEL_REQUESTED)
        return Outcome(error=error)

    async def _record_until_stored(self, running: _Running, outcome: Outcome) -> None:
        """Write the outcome, retrying any store failure with backoff while the lease may
        still be held: until it lands, the store says the lease is lost, the lease runs
        out (heartbeats keep renewing it meanwhile), or a shutdown's drain grace ends.
        Its lease is renewed all along; held outcomes never outnumber the slots."""
        job, run = running.job, running.run
        backoff = Backoff(base=RECORD_RETRY.base, cap=RECORD_RETRY.cap)
        tries = 0
        while True:
            if run.lease_lost or outcome.stopped is StopReason.LEASE_LOST:
                await self._lease_gone(running, outcome, retried=tries > 0)
                return
            try:
                stored = await self._record(running, outcome)
            except LeaseLost:
                run.lease_lost = True
                continue
            except Exception as error:
                self._record_episode.failed(error)
                if tries == 0:
                    running.unrecorded_bytes = _outcome_bytes(outcome)
                    self._unrecorded_bytes += running.unrecorded_bytes
                    log.debug("job %s finished; its outcome waits for the store", job.id)
            else:
                self._record_episode.succeeded()
                if tries:
                    log.debug("job %s: outcome recorded after %d failed tries", job.id, tries)
                _log_recorded(running, outcome, stored)
                return
            tries += 1
            if self._give_up_recording.is_set():
                log.warning(
                    "job %s: could not record its outcome (%s) before the drain grace ended;"
                    " it will run again once its lease expires",
                    job.id,
                    outcome.describe(),
                )
                return
            if time.monotonic() >= running.lease_deadline:
                log.warning(
                    "job %s: its lease ran out before the store took its outcome (%s);"
                    " it will run again",
                    job.id,
                    outcome.describe(),
                )
                return
            await _first(asyncio.sleep(backoff.next_delay()), self._give_up_recording.wait())

    async def _lease_gone(self, running: _Running, outcome: Outcome, *, retried: bool) -> None:
        """The store no longer holds our lease: write nothing more. After a failed try
        this may be our own write landing (a remote write whose answer was lost): a
        finished job still carrying our lease says so."""
        job, run = running.job, running.run
        if retried:
            with contextlib.suppress(Exception):
                stored = await self._store.get_job(job.id)
                if stored.is_terminal and stored.lease_id == run.lease_id:
                    log.info("job %s: an earlier try had recorded it (%s)", job.id, stored.state)
                    return
        log.warning(
            "lost the lease on job %s; its outcome (%s) is dropped",
            job.id,
            outcome.describe(),
            extra={
                "job_id": job.id,
                "job_type": job.type,
                "attempt": job.attempt,
                "outcome": "lease_lost",
                "worker_id": self.worker_id,
            },
        )

    async def _record(self, running: _Running, outcome: Outcome) -> Job | None:
        """One try at storing the outcome, the handler's last progress first. Raises what
        the store raises. A failure is retried by the handler's settings for the type.
        Returns the job as stored, or None for a success (written in a group)."""
        job, run, handler = running.job, running.run, running.handler
        if outcome.stopped is not StopReason.SHUTDOWN:  # a release resets progress
            await run.flush_progress()
        lease = {"job_id": job.id, "lease_id": run.lease_id}
        retry_policy, max_attempts = handler.retry, handler.attempts_for(job)
        stored: Job | None = None
        if outcome.stopped is StopReason.SHUTDOWN:
            stored = await self._store.release_job(**lease)
        elif outcome.stopped is StopReason.CANCEL_REQUESTED:
            stored = await self._store.record_cancelled(**lease)
        elif outcome.stopped is StopReason.TIMEOUT:
            stored = await self._store.time_out_job(
                **lease,
                retry_policy=retry_policy,
                max_attempts=max_attempts,
                attempt_timeout=handler.timeout_for(job),
            )
        elif outcome.error is not None:
            stored = await self._store.fail_job(
                **lease,
                error=_job_error(outcome.error),
                retry_policy=retry_policy,
                max_attempts=max_attempts,
            )
        else:
            result = outcome.result if isinstance(outcome.result, Mapping) else {}
            try:
                await self._completions.complete(**lease, result=result)
            except InvalidArgument as error:  # e.g. result too large or not JSON
                stored = await self._store.fail_job(
                    **lease,
                    error=JobError("invalid_result", error.message, retryable=False),
                    retry_policy=retry_policy,
                    max_attempts=max_attempts,
                )
        return stored

    # ---- heartbeats and cancellation -----------------------------------------------

    async def _heartbeats(self) -> None:
        """Renew the worker's record and every lease it holds, finished-but-unrecorded
        jobs included. After a failure the next try comes sooner (backoff, capped at the
        interval), so leases are renewed soon after the store is back."""
        interval = self._config.heartbeat_every
        backoff = Backoff(base=0.25, cap=interval)
        delay = interval
        while True:
            await asyncio.sleep(delay)
            try:
                renewed = await self._heartbeat_worker() & await self._renew_leases()
            except Exception as error:  # a bug of ours: still keep heartbeating
                self._loop_episode.failed(error)
                renewed = False
            if renewed:
                backoff.reset()
                delay = interval
            else:
                delay = min(interval, backoff.next_delay())

    async def _heartbeat_worker(self) -> bool:
        assert self.worker_id is not None
        try:
            await self._store.heartbeat_worker(self.worker_id)
        except Exception as error:  # WorkerNotFound too: pruned; its jobs still run
            self._worker_heartbeat_episode.failed(error)
            return False
        self._worker_heartbeat_episode.succeeded()
        return True

    async def _renew_leases(self) -> bool:
        now = time.monotonic()
        patience = RECORD_PATIENCE_LEASES * self._config.lease_timeout.total_seconds()
        renewing = [
            r
            for r in self._running.values()
            if r.finished_at is None or now - r.finished_at < patience
        ]
        ok = True
        for start in range(0, len(renewing), MAX_BATCH_SIZE):
            ok &= await self._renew_batch(renewing[start : start + MAX_BATCH_SIZE])
        return ok

    async def _renew_batch(self, batch: list[_Running]) -> bool:
        if not batch:
            return True
        sent = time.monotonic()
        try:
            acks = await self._store.heartbeat_jobs(
                {r.job.id: r.run.lease_id for r in batch},
                lease_timeout=self._config.lease_timeout,
            )
        except Exception as error:
            self._lease_episode.failed(error)
            return False
        self._lease_episode.succeeded()
        deadline = sent + self._config.lease_timeout.total_seconds()
        for running in batch:
            ack = acks.get(running.job.id)
            if ack is None:  # lost: expired and reaped, or taken over
                running.run.lose_lease()
                continue
            running.lease_deadline = deadline
            if ack.cancel_requested and running.finished_at is None:
                running.run.request_stop(StopReason.CANCEL_REQUESTED)
        return True

    async def _cancel_requests(self) -> None:
        assert self.worker_id is not None
        interval = self._config.cancel_poll_interval.total_seconds()
        backoff = Backoff(base=interval, cap=5.0)
        delay = interval
        while True:
            await _first(asyncio.sleep(delay), self._cancels_pushed.wait())
            self._cancels_pushed.clear()
            if not any(r.finished_at is None for r in self._running.values()):
                continue
            try:
                requested = await self._store.list_cancel_requests(worker_id=self.worker_id)
            except Exception as error:  # the heartbeat reports cancel requests too
                self._cancel_episode.failed(error)
                delay = max(interval, backoff.next_delay())
                continue
            self._cancel_episode.succeeded()
            backoff.reset()
            delay = self._poll_interval(self._config.cancel_poll_interval)
            for job_id in requested:
                running = self._running.get(job_id)
                if running is not None and running.finished_at is None:
                    running.run.request_stop(StopReason.CANCEL_REQUESTED)

    # ---- draining ------------------------------------------------------------------

    async def _drain(self, stop_now: asyncio.Event) -> None:
        """Running jobs get the grace period to finish, and finished ones to be recorded
        (retrying while the store is down); then the rest are stopped and handed back."""
        assert self.worker_id is not None
        if not self._running:
            return
        try:
            await self._store.drain_worker(self.worker_id)
        except Exception as error:  # only ListWorkers shows it; the drain goes on
            log.warning("could not mark worker %s draining: %r", self.worker_id, error)
        log.info(
            "draining: %d jobs have %.0fs to finish",
            len(self._running),
            self._config.drain_grace.total_seconds(),
        )
        tasks = [r.task for r in self._running.values() if r.task is not None]
        await _first(
            asyncio.wait(tasks, timeout=self._config.drain_grace.total_seconds()),
            stop_now.wait(),
        )
        self._give_up_recording.set()
        await self._stop_all(StopReason.SHUTDOWN)

    async def _stop_all(self, reason: StopReason) -> None:
        running = list(self._running.values())
        for r in running:
            if r.finished_at is None:
                r.run.request_stop(reason)
        await asyncio.gather(*(r.task for r in running if r.task), return_exceptions=True)


@dataclass(frozen=True, slots=True)
class Outcome:
    result: Mapping[str, Any] | None = None
    error: BaseException | None = None
    stopped: StopReason | None = None

    def describe(self) -> str:
        if self.stopped is not None:
            return f"stopped: {self.stopped.value}"
        if self.error is not None:
            return f"failed: {type(self.error).__name__}"
        return "succeeded"


def _outcome_bytes(outcome: Outcome) -> int:
    """About what holding this outcome costs in memory: its result as JSON."""
    if outcome.result is None:
        return 1024
    try:
        return len(json.dumps(outcome.result, default=str))
    except Exception:  # not JSON at all: the store refuses it, so it is not held long
        return 1024


def _remaining(job: Job, handler: Handler) -> float | None:
    """Seconds left of the attempt: the job's timeout, else its handler's for the type."""
    timeout = handler.timeout_for(job)
    if timeout is None or job.start_time is None:
        return None
    return max(0.0, (job.start_time + timeout - datetime.now(UTC)).total_seconds())


def _handler_traceback(error: BaseException) -> TracebackType | None:
    """The error's traceback from the handler's first frame on: the frames of the thread
    pool a plain handler runs in say nothing about the failure."""
    frames = error.__traceback__
    while frames is not None and frames.tb_frame.f_globals.get("__name__", "").startswith(
        ("asyncio.", "concurrent.futures.")
    ):
        frames = frames.tb_next
    return frames or error.__traceback__


def _job_error(error: BaseException) -> JobError:
    """The job's error, with the traceback as its details (the store keeps their end)."""
    message = str(error) or type(error).__name__
    details = "".join(traceback.format_exception(type(error), error, _handler_traceback(error)))
    if isinstance(error, PermanentError):
        return JobError(error.code, message, retryable=False, details=details)
    if isinstance(error, RetryableError):
        return JobError(error.code, message, retryable=True, details=details)
    return JobError(
        ErrorCode.HANDLER_ERROR, f"{type(error).__name__}: {message}", True, details=details
    )


# ---- each job's life in the log ------------------------------------------------------
# One line per step, readable as text and with fields for `--log-format json`: job_id,
# job_type, attempt, max_attempts, outcome and, once the attempt ended, duration_seconds.


def _life_fields(running: _Running, outcome: str) -> dict[str, Any]:
    job = running.job
    return {
        "job_id": job.id,
        "job_type": job.type,
        "attempt": job.attempt,
        "max_attempts": running.handler.attempts_for(job),
        "outcome": outcome,
    }


def _log_claimed(running: _Running) -> None:
    fields = _life_fields(running, "claimed")
    log.info(
        "job %s %s attempt %d/%d claimed",
        fields["job_id"],
        fields["job_type"],
        fields["attempt"],
        fields["max_attempts"],
        extra=fields,
    )


def _log_recorded(running: _Running, outcome: Outcome, stored: Job | None) -> None:
    """What the store made of the attempt: succeeded, cancelled or released at INFO; a
    failure with the handler's traceback, at WARNING when it will be retried and at ERROR
    when it fails the job."""
    state = JobState.SUCCEEDED if stored is None else stored.state
    seconds = (running.finished_at or time.monotonic()) - running.started_at
    level, how = logging.INFO, f"in {seconds:.2f}s"
    if state is JobState.SUCCEEDED:
        verb = "succeeded"
    elif state is JobState.CANCELLED:
        verb = "cancelled"
    elif state is JobState.PENDING and outcome.stopped is StopReason.SHUTDOWN:
        verb, how = "released", f"after {seconds:.2f}s (the worker is stopping)"
    elif state is JobState.PENDING:
        verb, level = "retried", logging.WARNING
    else:
        verb, level = "failed", logging.ERROR
    fields = _life_fields(running, verb)
    fields["duration_seconds"] = round(seconds, 3)
    text = f"{verb} {how}"
    if verb in ("retried", "failed") and stored is not None and stored.error is not None:
        fields["error_code"] = stored.error.code
        text = f"failed {how}: {stored.error.code}: {stored.error.message}"
        if verb == "retried":
            delay = max(0.0, (stored.run_after - datetime.now(UTC)).total_seconds())
            fields["retry_in_seconds"] = round(delay, 3)
            text += f"; will retry in {delay:.1f}s"
    error = outcome.error if verb in ("retried", "failed") else None
    log.log(
        level,
        "job %s %s attempt %d/%d %s",
        fields["job_id"],
        fields["job_type"],
        fields["attempt"],
        fields["max_attempts"],
        text,
        exc_info=(type(error), error, _handler_traceback(error)) if error is not None else None,
        extra=fields,
    )


async def _first(*waits: Awaitable[Any]) -> None:
    """Wait until the first of several awaitables completes; cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
