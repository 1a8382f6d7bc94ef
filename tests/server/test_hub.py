"""EventHub subscriptions: bounded buffers that coalesce a slow reader's events (a job
watcher keeps every state change, a jobs watcher each job's newest and every terminal
event); one shared snapshot read for many watchers."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobcontrol.jobs import EventKind, Job, JobEvent, JobSpec, JobState, Progress
from jobcontrol.server.hub import (
    OVERFLOW,
    Delivery,
    EventHub,
    Subscription,
    WatchEnded,
    waking,
)
from jobcontrol.server.metrics import Metrics, metered
from jobcontrol.store.sqlite import SqliteJobStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)
JOB = Job(
    id="j1",
    type="t",
    payload={},
    state=JobState.RUNNING,
    priority=0,
    labels={},
    attempt=1,
    max_attempts=3,
    create_time=NOW,
    update_time=NOW,
    run_after=NOW,
)


def event(
    sequence: int,
    kind: EventKind,
    job_id: str = "j1",
    percent: float = 0,
    state: JobState = JobState.RUNNING,
) -> Delivery:
    job = dataclasses.replace(JOB, id=job_id, progress=Progress(percent), state=state)
    return Delivery(JobEvent(sequence=sequence, kind=kind, time=NOW, job=job))


async def take(sub: Subscription) -> list[JobEvent]:
    """Everything the subscription has for its reader now."""
    out = []
    while True:
        try:
            out.append((await asyncio.wait_for(sub.next(), 0.01)).event)
        except TimeoutError:
            return out


def drain(sub: Subscription) -> list[JobEvent]:
    return asyncio.run(take(sub))


def test_progress_of_a_slow_reader_is_coalesced_to_the_latest():
    sub = Subscription(job_id="j1", job_filter=None, capacity=10, metrics=Metrics())
    sub.push(event(1, EventKind.STARTED), batch=1)
    for n in range(2, 50):  # one tail batch each, and the reader reads none of them
        sub.push(event(n, EventKind.PROGRESS, percent=n), batch=n)
    sub.push(event(50, EventKind.SUCCEEDED), batch=50)
    got = drain(sub)
    assert [(e.kind, e.sequence) for e in got] == [
        (EventKind.STARTED, 1),
        (EventKind.PROGRESS, 49),
        (EventKind.SUCCEEDED, 50),
    ]


def test_a_reader_that_keeps_up_gets_every_progress_update_of_a_batch():
    sub = Subscription(job_id="j1", job_filter=None, capacity=100, metrics=Metrics())
    for n in range(1, 6):
        sub.push(event(n, EventKind.PROGRESS, percent=n), batch=1)
    assert [e.sequence for e in drain(sub)] == [1, 2, 3, 4, 5]


async def test_a_reader_that_read_the_last_fan_out_gets_every_update_of_the_next():
    sub = Subscription(job_id="j1", job_filter=None, capacity=100, metrics=Metrics())
    sub.push(event(1, EventKind.PROGRESS, percent=1), batch=1)
    assert [e.sequence for e in await take(sub)] == [1]
    for n in range(2, 6):
        sub.push(event(n, EventKind.PROGRESS, percent=n), batch=2)
    assert [e.sequence for e in await take(sub)] == [2, 3, 4, 5]


def test_a_reader_behind_gets_only_the_newest_update_of_a_fan_out():
    metrics = Metrics()
    sub = Subscription(job_id="j1", job_filter=None, capacity=100, metrics=metrics)
    sub.push(event(1, EventKind.STARTED), batch=1)  # not read before the next fan-out
    for n in range(2, 6):
        sub.push(event(n, EventKind.PROGRESS, percent=n), batch=2)
    assert [e.sequence for e in drain(sub)] == [1, 5]
    assert metrics.coalesced._value.get() == 3


def test_a_job_watcher_behind_keeps_every_state_change_and_the_newest_update():
    sub = Subscription(job_id="j1", job_filter=None, capacity=100, metrics=Metrics())
    sub.push(event(1, EventKind.PROGRESS, percent=1), batch=1)
    sub.push(event(2, EventKind.PROGRESS, percent=2), batch=1)
    sub.push(event(3, EventKind.CANCEL_REQUESTED), batch=2)
    sub.push(event(4, EventKind.PROGRESS, percent=4), batch=2)
    sub.push(event(5, EventKind.RETRY_SCHEDULED, state=JobState.PENDING), batch=2)
    sub.push(event(6, EventKind.PROGRESS, percent=6), batch=2)
    assert [e.sequence for e in drain(sub)] == [3, 5, 6]


def test_a_jobs_watcher_behind_gets_each_jobs_newest_event_in_sequence_order():
    metrics = Metrics()
    sub = Subscription(job_id=None, job_filter=None, capacity=100, metrics=metrics)
    sub.push(event(1, EventKind.SUBMITTED, job_id="j1", state=JobState.PENDING), batch=1)
    sub.push(event(2, EventKind.SUBMITTED, job_id="j2", state=JobState.PENDING), batch=1)
    sub.push(event(3, EventKind.STARTED, job_id="j1"), batch=2)  # behind from here on
    sub.push(event(4, EventKind.STARTED, job_id="j2"), batch=2)
    sub.push(event(5, EventKind.PROGRESS, job_id="j1", percent=50), batch=2)
    sub.push(event(6, EventKind.SUBMITTED, job_id="j3", state=JobState.PENDING), batch=3)
    assert [(e.job.id, e.sequence) for e in drain(sub)] == [("j2", 4), ("j1", 5), ("j3", 6)]
    assert metrics.coalesced._value.get() == 3


def test_a_jobs_watcher_behind_never_loses_a_terminal_event():
    sub = Subscription(job_id=None, job_filter=None, capacity=100, metrics=Metrics())
    sub.push(event(1, EventKind.STARTED, job_id="j1"), batch=1)
    sub.push(event(2, EventKind.FAILED, job_id="j1", state=JobState.FAILED), batch=2)
    sub.push(event(3, EventKind.RETRIED, job_id="j1", state=JobState.PENDING), batch=2)
    sub.push(event(4, EventKind.STARTED, job_id="j1"), batch=2)
    sub.push(event(5, EventKind.SUCCEEDED, job_id="j1", state=JobState.SUCCEEDED), batch=3)
    assert [e.sequence for e in drain(sub)] == [2, 5]


def test_a_jobs_watcher_ends_only_when_one_message_per_job_is_over_capacity():
    sub = Subscription(job_id=None, job_filter=None, capacity=3, metrics=Metrics())
    for n in range(1, 4):  # one fan-out the reader was keeping up with: nothing coalesced
        sub.push(event(n, EventKind.SUBMITTED, job_id=f"j{n}", state=JobState.PENDING), batch=1)
    sub.push(event(4, EventKind.STARTED, job_id="j1"), batch=1)  # over: coalesced, not ended
    for n in range(5, 50):
        sub.push(event(n, EventKind.PROGRESS, job_id=f"j{n % 3 + 1}", percent=n), batch=n)
    assert [e.sequence for e in drain(sub)] == [47, 48, 49]
    for n in range(50, 54):
        sub.push(event(n, EventKind.SUBMITTED, job_id=f"k{n}", state=JobState.PENDING), batch=50)
    with pytest.raises(WatchEnded) as ended:
        drain(sub)
    assert ended.value.reason == OVERFLOW


def test_state_changes_are_never_dropped_and_overflow_ends_the_subscription():
    sub = Subscription(job_id=None, job_filter=None, capacity=5, metrics=Metrics())
    for n in range(1, 6):
        sub.push(event(n, EventKind.SUBMITTED, job_id=f"j{n}"), batch=1)
    assert len(drain(sub)) == 5  # at capacity: nothing lost
    for n in range(6, 13):
        sub.push(event(n, EventKind.SUBMITTED, job_id=f"j{n}"), batch=2)

    async def next_event() -> Delivery:
        return await sub.next()

    with pytest.raises(WatchEnded) as ended:
        asyncio.run(next_event())
    assert ended.value.reason == OVERFLOW


def test_stale_progress_never_fills_the_buffer():
    sub = Subscription(job_id="j1", job_filter=None, capacity=3, metrics=Metrics())
    sub.push(event(1, EventKind.STARTED), batch=1)
    for n in range(2, 2000):
        sub.push(event(n, EventKind.PROGRESS, percent=n % 100), batch=n)
    sub.push(event(2000, EventKind.SUCCEEDED), batch=2000)
    assert [e.sequence for e in drain(sub)] == [1, 1999, 2000]


async def test_concurrent_snapshots_share_one_store_read(tmp_path: Path):
    metrics = Metrics()
    store = metered(await SqliteJobStore.open(tmp_path / "jobs.db"), metrics)
    hub = EventHub(store, metrics=metrics)
    try:
        job = (await store.create_job(JobSpec(type="t"))).job
        before = metrics.store_calls.labels("latest_events")._value.get()
        snapshots = await asyncio.gather(*(hub.snapshot(job.id) for _ in range(500)))
        reads = metrics.store_calls.labels("latest_events")._value.get() - before
    finally:
        await hub.close()
        await store.close()
    assert all(s is not None and s.job.id == job.id for s in snapshots)
    assert reads <= 2


def calls(metrics: Metrics, name: str) -> float:
    return float(metrics.store_calls.labels(name)._value.get())


async def until(predicate: object, within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_with_nobody_watching_the_tailer_follows_the_sequence_without_reading_events(
    tmp_path: Path,
):
    metrics = Metrics()
    store = metered(await SqliteJobStore.open(tmp_path / "jobs.db"), metrics)
    hub = EventHub(store, metrics=metrics, idle_interval=0.01)
    try:
        await hub.start()
        submitted = await store.create_jobs([JobSpec(type="t") for _ in range(50)])
        newest = await store.last_sequence()
        hub.wake()
        await until(lambda: hub.position == newest)
        assert calls(metrics, "list_events") == 0
        sub = hub.subscribe(job_id=submitted[0].job.id)
        await store.cancel_job(submitted[0].job.id)
        got = await asyncio.wait_for(sub.next(), 10)
        assert got.event.kind is EventKind.CANCELLED
        assert got.event.sequence == newest + 1
        assert calls(metrics, "list_events_of_jobs") >= 1
    finally:
        await hub.close()
        await store.close()


async def test_job_watchers_alone_have_only_their_jobs_events_read(tmp_path: Path):
    metrics = Metrics()
    store = metered(await SqliteJobStore.open(tmp_path / "jobs.db"), metrics)
    hub = EventHub(store, metrics=metrics, tail_interval=0.01)
    try:
        watched, other = [s.job for s in await store.create_jobs([JobSpec(type="t")] * 2)]
        await hub.start()
        job_sub = hub.subscribe(job_id=watched.id)
        for job in (other, watched):
            await store.cancel_job(job.id)
        got = await asyncio.wait_for(job_sub.next(), 10)
        assert (got.event.job.id, got.event.kind) == (watched.id, EventKind.CANCELLED)
        assert calls(metrics, "list_events") == 0

        every_job = hub.subscribe(job_filter=None)
        retried = [await store.retry_job(job.id) for job in (other, watched)]
        seen = [(await asyncio.wait_for(every_job.next(), 10)).event for _ in retried]
        assert [(e.job.id, e.kind) for e in seen] == [
            (other.id, EventKind.RETRIED),
            (watched.id, EventKind.RETRIED),
        ]
        got = await asyncio.wait_for(job_sub.next(), 10)
        assert (got.event.job.id, got.event.kind) == (watched.id, EventKind.RETRIED)
        assert calls(metrics, "list_events") >= 1
    finally:
        await hub.close()
        await store.close()


async def test_a_running_watched_job_is_read_at_the_hot_interval(tmp_path: Path):
    """A worker elsewhere writes the progress of a running job, and only tailing sees it:
    with a tail interval far longer than the wait below, the update still arrives."""
    metrics = Metrics()
    store = metered(await SqliteJobStore.open(tmp_path / "jobs.db"), metrics)
    hub = EventHub(store, metrics=metrics, tail_interval=3600, hot_interval=0.01)
    try:
        await store.create_job(JobSpec(type="t"))
        (job,) = await store.claim_jobs(
            worker_id="w", types=["t"], limit=1, lease_timeout=timedelta(hours=1)
        )
        assert job.lease_id is not None
        await hub.start()
        sub = hub.subscribe(job_id=job.id)
        snapshot = await hub.snapshot(job.id)
        assert snapshot is not None
        sub.prime(snapshot)
        hub.wake()  # the tailer, having read once, now knows the job is running
        await until(lambda: calls(metrics, "list_events_of_jobs") >= 2)
        await store.report_progress(job_id=job.id, lease_id=job.lease_id, progress=Progress(50))
        got = await asyncio.wait_for(sub.next(), 10)
        assert (got.event.kind, got.event.job.progress.percent) == (EventKind.PROGRESS, 50)
    finally:
        await hub.close()
        await store.close()


class CountingHub:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


async def test_the_waking_store_wakes_the_hub_after_writes_that_changed_something(
    tmp_path: Path,
):
    """The one place the process's own writes wake its hub: a new job, a claim, progress
    and an outcome do; reads, a repeated submit and an empty claim or reap do not."""
    hub = CountingHub()
    inner = await SqliteJobStore.open(tmp_path / "jobs.db")
    store = waking(inner, hub)  # type: ignore[arg-type]
    try:
        spec = JobSpec(type="t.wake", idempotency_key="k")
        job = (await store.create_job(spec)).job
        assert hub.wakes == 1
        await store.create_job(spec)  # the same key: nothing new
        await store.get_job(job.id)
        await store.list_events(after_sequence=0, limit=10)
        await store.reap()
        assert (
            await store.claim_jobs(
                worker_id="w", types=["t.other"], limit=1, lease_timeout=timedelta(minutes=1)
            )
            == []
        )
        assert hub.wakes == 1

        (claimed,) = await store.claim_jobs(
            worker_id="w", types=["t.wake"], limit=1, lease_timeout=timedelta(minutes=1)
        )
        assert claimed.lease_id is not None
        await store.report_progress(
            job_id=job.id, lease_id=claimed.lease_id, progress=Progress(50.0, "half")
        )
        await store.complete_job(job_id=job.id, lease_id=claimed.lease_id, result={})
        assert hub.wakes == 4
        assert store.changes is inner.changes  # everything else is the store's own
    finally:
        await inner.close()
