"""Contract: every change appends exactly one event, in the same transaction."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jobcontrol.jobs import EventKind, JobError, JobSpec, JobState, Progress
from jobcontrol.store import JobFilter
from jobcontrol.store import sql as statements
from jobcontrol.store.core import SqlJobStore
from jobcontrol.store.database import Database, Params, Row, Tx
from tests.conftest import ManualClock
from tests.store.conftest import open_driver

T = TypeVar("T")
LEASE = timedelta(seconds=30)


async def test_a_job_life_writes_one_event_per_change_in_order(
    store: SqlJobStore, clock: ManualClock
):
    job = (await store.create_job(JobSpec(type="t"))).job
    (claimed,) = await store.claim_jobs(worker_id="w", types=["t"], limit=1, lease_timeout=LEASE)
    assert claimed.lease_id
    lease = {"job_id": job.id, "lease_id": claimed.lease_id}
    await store.heartbeat_job(**lease, lease_timeout=LEASE)  # no visible change, no event
    for pct in (10, 60):
        clock.advance(1)
        await store.report_progress(**lease, progress=Progress(pct, "work"))
    await store.fail_job(**lease, error=JobError("x", "transient", True))
    clock.advance(timedelta(minutes=5))
    (second,) = await store.claim_jobs(worker_id="w", types=["t"], limit=1, lease_timeout=LEASE)
    assert second.lease_id
    await store.cancel_job(job.id)
    await store.record_cancelled(job_id=job.id, lease_id=second.lease_id)
    await store.retry_job(job.id)

    events = await store.list_events(after_sequence=0, job_id=job.id)
    assert [e.kind for e in events] == [
        EventKind.SUBMITTED,
        EventKind.STARTED,
        EventKind.PROGRESS,
        EventKind.PROGRESS,
        EventKind.RETRY_SCHEDULED,
        EventKind.STARTED,
        EventKind.CANCEL_REQUESTED,
        EventKind.CANCELLED,
        EventKind.RETRIED,
    ]
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences))
    assert [e.job.state for e in events][-3:] == [
        JobState.RUNNING,
        JobState.CANCELLED,
        JobState.PENDING,
    ]
    assert events[3].job.progress.percent == 60
    assert events[-1].job == dataclasses.replace(await store.get_job(job.id), queue_position=None)
    assert await store.last_sequence(job_id=job.id) == sequences[-1]


async def test_events_after_a_sequence_resume_without_gaps(store: SqlJobStore):
    await store.create_jobs([JobSpec(type="t") for _ in range(25)])
    seen: list[int] = []
    after = 0
    while batch := await store.list_events(after_sequence=after, limit=7):
        seen.extend(e.sequence for e in batch)
        after = batch[-1].sequence
    assert seen == list(range(1, 26))
    assert await store.last_sequence() == 25


async def test_events_of_one_job_skip_other_jobs(store: SqlJobStore):
    a = (await store.create_job(JobSpec(type="t"))).job
    b = (await store.create_job(JobSpec(type="t"))).job
    await store.cancel_job(a.id)
    events = await store.list_events(after_sequence=0, job_id=a.id)
    assert {e.job.id for e in events} == {a.id}
    assert len(events) == 2
    assert (await store.list_events(after_sequence=events[-1].sequence, job_id=b.id)) == []


class _FailingEventInsert:
    """A database whose event inserts blow up, to show a change never lands alone."""

    def __init__(self, inner: Database) -> None:
        self._inner = inner

    async def run(self, fn: Callable[[Tx], T], *, write: bool) -> T:
        return await self._inner.run(lambda tx: fn(_BrokenTx(tx)), write=write)

    async def close(self) -> None:
        await self._inner.close()


class _BrokenTx:
    def __init__(self, tx: Tx) -> None:
        self._tx = tx

    def execute(self, sql: str, params: Params = ()) -> list[Row]:
        if sql == statements.INSERT_EVENT:
            raise RuntimeError("event insert failed")
        return self._tx.execute(sql, params)

    def executemany(self, sql: str, params: Any) -> None:
        if sql == statements.INSERT_EVENT:
            raise RuntimeError("event insert failed")
        self._tx.executemany(sql, params)


async def test_a_failed_event_insert_leaves_no_change_behind(
    store: SqlJobStore, driver: str, tmp_path: Path, clock: ManualClock
):
    job = (await store.create_job(JobSpec(type="t"))).job
    healthy = await open_driver(driver, tmp_path, clock)
    broken = SqlJobStore(_FailingEventInsert(healthy._db), clock=clock)
    try:
        with pytest.raises(RuntimeError):
            await broken.create_job(JobSpec(type="t"))
        with pytest.raises(RuntimeError):
            await broken.cancel_job(job.id)
        with pytest.raises(RuntimeError):
            await broken.claim_jobs(worker_id="w", types=["t"], limit=1, lease_timeout=LEASE)
    finally:
        await healthy.close()
    page = await store.list_jobs(job_filter=JobFilter())
    assert [j.id for j in page.jobs] == [job.id]
    assert (await store.get_job(job.id)).state is JobState.PENDING
    assert await store.last_sequence() == 1


async def test_latest_events_snapshot_many_jobs_in_one_read(store: SqlJobStore):
    a = (await store.create_job(JobSpec(type="t"))).job
    b = (await store.create_job(JobSpec(type="t"))).job
    await store.cancel_job(b.id)
    latest = await store.latest_events([a.id, b.id, a.id])
    assert latest[a.id].kind is EventKind.SUBMITTED
    assert latest[a.id].job.queue_position == 0
    assert latest[b.id].kind is EventKind.CANCELLED
    assert latest[b.id].sequence == await store.last_sequence(job_id=b.id)
    assert await store.latest_events([]) == {}


async def test_jobs_are_counted_by_state(store: SqlJobStore):
    await store.create_jobs([JobSpec(type="t") for _ in range(3)])
    await store.claim_jobs(worker_id="w", types=["t"], limit=1, lease_timeout=LEASE)
    counts = await store.count_jobs_by_state()
    assert counts[JobState.PENDING] == 2
    assert counts[JobState.RUNNING] == 1
    assert counts[JobState.FAILED] == 0
