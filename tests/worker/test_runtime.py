"""The worker runtime in-process, on a real SQLite store, with handlers defined here."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobcontrol.jobs import EventKind, Job, JobSpec, JobState
from jobcontrol.retry import RetryPolicy
from jobcontrol.store.sqlite import SqliteJobStore
from jobcontrol.worker import JobContext, PermanentError, Registry, RetryableError
from jobcontrol.worker.runtime import Worker, WorkerConfig
from tests.conftest import wait_until_async

FAST_RETRY = RetryPolicy(base=timedelta(milliseconds=20), cap=timedelta(milliseconds=20))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    opened = await SqliteJobStore.open(tmp_path / "jobs.db", retry_policy=FAST_RETRY)
    try:
        yield opened
    finally:
        await opened.close()


class RunningWorker:
    def __init__(self, store: SqliteJobStore, registry: Registry, **config: Any) -> None:
        defaults = {
            "concurrency": 4,
            "poll_interval": timedelta(milliseconds=20),
            "cancel_poll_interval": timedelta(milliseconds=20),
            "lease_timeout": timedelta(seconds=5),
        }
        self.worker = Worker(store, registry, WorkerConfig(**{**defaults, **config}))
        self.stop = asyncio.Event()
        self.stop_now = asyncio.Event()
        self.task = asyncio.create_task(self.worker.run(self.stop, self.stop_now))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


async def finished(store: SqliteJobStore, job_id: str, within: float = 10) -> Job:
    async def terminal() -> Job | None:
        job = await store.get_job(job_id)
        return job if job.is_terminal else None

    return await wait_until_async(terminal, timeout=within, what=f"job {job_id} to finish")


async def submit(store: SqliteJobStore, job_type: str, **spec: Any) -> str:
    return (await store.create_job(JobSpec(type=job_type, **spec))).job.id


async def kinds(store: SqliteJobStore, job_id: str) -> list[EventKind]:
    return [e.kind for e in await store.list_events(after_sequence=0, job_id=job_id)]


async def test_async_and_plain_handlers_run_and_their_results_are_stored(store: SqliteJobStore):
    registry = Registry()
    threads: list[str] = []

    @registry.handler("t.async")
    async def run_async(ctx: JobContext) -> dict[str, Any]:
        return {"doubled": ctx.payload["n"] * 2}

    @registry.handler("t.plain")
    def run_plain(ctx: JobContext) -> dict[str, Any]:
        threads.append(threading.current_thread().name)
        return {"attempt": ctx.attempt}

    worker = RunningWorker(store, registry)
    try:
        a = await submit(store, "t.async", payload={"n": 21})
        b = await submit(store, "t.plain")
        assert (await finished(store, a)).result == {"doubled": 42}
        assert (await finished(store, b)).result == {"attempt": 1}
    finally:
        await worker.close()
    assert threads
    assert threads[0] != threading.main_thread().name


async def test_progress_is_throttled_but_the_last_update_is_written(store: SqliteJobStore):
    registry = Registry()

    @registry.handler("t.chatty")
    async def chatty(ctx: JobContext) -> None:
        for i in range(1, 501):
            ctx.report_progress(i / 5, stage="counting", message=str(i))
            if i % 50 == 0:
                await asyncio.sleep(0.05)

    worker = RunningWorker(store, registry)
    try:
        job_id = await submit(store, "t.chatty")
        await finished(store, job_id)
    finally:
        await worker.close()
    events = await store.list_events(after_sequence=0, job_id=job_id)
    progress = [e for e in events if e.kind is EventKind.PROGRESS]
    assert 1 <= len(progress) <= 10  # 500 reports over ~0.5 s
    assert progress[-1].job.progress.message == "500"
    assert progress[-1].job.progress.percent == 100


async def test_transient_failure_is_retried_then_succeeds(store: SqliteJobStore):
    registry = Registry()

    @registry.handler("t.flaky")
    async def flaky(ctx: JobContext) -> dict[str, int]:
        if ctx.attempt < 3:
            raise RetryableError(f"not yet ({ctx.attempt})")
        return {"attempt": ctx.attempt}

    worker = RunningWorker(store, registry)
    try:
        job = await finished(store, await submit(store, "t.flaky", max_attempts=3))
    finally:
        await worker.close()
    assert job.state is JobState.SUCCEEDED
    assert job.result == {"attempt": 3}
    assert (await kinds(store, job.id)).count(EventKind.RETRY_SCHEDULED) == 2


async def test_unexpected_exceptions_are_retryable_until_attempts_run_out(store: SqliteJobStore):
    registry = Registry()

    @registry.handler("t.broken")
    def broken(ctx: JobContext) -> None:
        raise KeyError("missing")

    worker = RunningWorker(store, registry)
    try:
        job = await finished(store, await submit(store, "t.broken", max_attempts=2))
    finally:
        await worker.close()
    assert job.state is JobState.FAILED
    assert job.attempt == 2
    assert job.error is not None
    assert job.error.code == "handler_error"
    assert "KeyError" in job.error.message


async def test_permanent_failure_fails_at_once(store: SqliteJobStore):
    registry = Registry()

    @registry.handler("t.bad")
    async def bad(ctx: JobContext) -> None:
        raise PermanentError("input is not audio", code="bad_input")

    worker = RunningWorker(store, registry)
    try:
        job = await finished(store, await submit(store, "t.bad", max_attempts=5))
    finally:
        await worker.close()
    assert (job.state, job.attempt) == (JobState.FAILED, 1)
    assert job.error is not None
    assert (job.error.code, job.error.retryable) == ("bad_input", False)


async def test_cancel_reaches_a_running_handler(store: SqliteJobStore):
    registry = Registry()
    started = asyncio.Event()

    @registry.handler("t.long")
    async def long(ctx: JobContext) -> None:
        started.set()
        await ctx.sleep(60)

    worker = RunningWorker(store, registry)
    try:
        job_id = await submit(store, "t.long")
        await asyncio.wait_for(started.wait(), 10)
        await store.cancel_job(job_id)
        job = await finished(store, job_id, within=5)
    finally:
        await worker.close()
    assert job.state is JobState.CANCELLED


async def test_a_handler_ignoring_cancellation_is_cancelled_anyway(store: SqliteJobStore):
    registry = Registry()
    started = asyncio.Event()

    @registry.handler("t.stubborn")
    async def stubborn(ctx: JobContext) -> None:
        started.set()
        await asyncio.sleep(60)

    worker = RunningWorker(store, registry)
    try:
        job_id = await submit(store, "t.stubborn")
        await asyncio.wait_for(started.wait(), 10)
        await store.cancel_job(job_id)
        assert (await finished(store, job_id, within=5)).state is JobState.CANCELLED
    finally:
        await worker.close()


async def test_job_timeout_fails_the_attempt(store: SqliteJobStore):
    registry = Registry()

    @registry.handler("t.slow")
    async def slow(ctx: JobContext) -> None:
        await ctx.sleep(60)

    worker = RunningWorker(store, registry)
    try:
        job_id = await submit(store, "t.slow", timeout=timedelta(milliseconds=200), max_attempts=1)
        job = await finished(store, job_id)
    finally:
        await worker.close()
    assert job.state is JobState.FAILED
    assert job.error is not None
    assert job.error.code == "deadline_exceeded"


async def test_a_lost_lease_stops_the_handler_and_writes_nothing_more(store: SqliteJobStore):
    registry = Registry()
    started = asyncio.Event()
    stopped = asyncio.Event()

    @registry.handler("t.victim")
    async def victim(ctx: JobContext) -> None:
        started.set()
        try:
            while True:
                ctx.report_progress(10)
                await ctx.sleep(0.02)
        finally:
            stopped.set()

    worker = RunningWorker(store, registry, heartbeat_interval=timedelta(milliseconds=50))
    try:
        job_id = await submit(store, "t.victim")
        await asyncio.wait_for(started.wait(), 10)
        # Another party takes the job over: the reaper, then a new claim.
        await store.cancel_job(job_id)  # not seen by the victim yet...
        running = await store.get_job(job_id)
        assert running.lease_id is not None
        await store.record_cancelled(job_id=job_id, lease_id=running.lease_id)
        await store.retry_job(job_id)
        (taken,) = await store.claim_jobs(
            worker_id="thief", types=["t.victim"], limit=1, lease_timeout=timedelta(minutes=1)
        )
        before = await store.last_sequence()
        await asyncio.wait_for(stopped.wait(), 5)
        await wait_until_async(lambda: _no_running(worker))
        assert await store.last_sequence() == before
        assert (await store.get_job(job_id)).lease_id == taken.lease_id
    finally:
        await worker.close()


async def _no_running(worker: RunningWorker) -> bool:
    return not worker.worker.running_jobs


async def test_drain_lets_short_jobs_finish_and_hands_long_ones_back(store: SqliteJobStore):
    registry = Registry()

    @registry.handler("t.sleep")
    async def sleep(ctx: JobContext) -> None:
        await ctx.sleep(ctx.payload["seconds"])

    worker = RunningWorker(store, registry, drain_grace=timedelta(milliseconds=500))
    short = await submit(store, "t.sleep", payload={"seconds": 0.1})
    long = await submit(store, "t.sleep", payload={"seconds": 60})

    async def both_running() -> bool:
        return len(worker.worker.running_jobs) == 2

    await wait_until_async(both_running)
    await worker.close()
    assert (await store.get_job(short)).state is JobState.SUCCEEDED
    handed_back = await store.get_job(long)
    assert (handed_back.state, handed_back.attempt) == (JobState.PENDING, 0)
    assert (await kinds(store, long))[-1] is EventKind.RELEASED
    workers = await store.list_workers(include_stopped=True)
    assert [w.state.value for w in workers] == ["STOPPED"]


async def test_concurrency_is_bounded_and_slots_are_refilled(store: SqliteJobStore):
    registry = Registry()
    active = 0
    peak = 0

    @registry.handler("t.count")
    async def count(ctx: JobContext) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1

    worker = RunningWorker(store, registry, concurrency=3)
    try:
        ids = [r.job.id for r in await store.create_jobs([JobSpec(type="t.count")] * 30)]
        for job_id in ids:
            assert (await finished(store, job_id)).state is JobState.SUCCEEDED
    finally:
        await worker.close()
    assert peak == 3


class CountingStore(SqliteJobStore):
    """The real store, counting idle probes and claims."""

    probes = 0
    claims = 0

    async def has_claimable_jobs(self, *, types: Any) -> bool:
        self.probes += 1
        return await super().has_claimable_jobs(types=types)

    async def claim_jobs(self, **kwargs: Any) -> list[Job]:
        self.claims += 1
        return await super().claim_jobs(**kwargs)


async def test_an_idle_worker_polls_with_reads_and_claims_when_work_arrives(tmp_path: Path):
    store = await CountingStore.open(tmp_path / "jobs.db")
    registry = Registry()

    @registry.handler("t.idle")
    async def run(ctx: JobContext) -> dict[str, Any]:
        return {}

    worker = RunningWorker(store, registry, poll_interval=timedelta(milliseconds=10))
    try:
        await wait_until_async(lambda: _at_least(store, "probes", 20))
        assert store.claims == 1  # the first claim found nothing; since then only reads
        job_id = await submit(store, "t.idle")
        assert (await finished(store, job_id)).state is JobState.SUCCEEDED
        assert store.claims >= 2
    finally:
        await worker.close()
        await store.close()


async def _at_least(store: CountingStore, counter: str, value: int) -> bool:
    return int(getattr(store, counter)) >= value
