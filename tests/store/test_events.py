"""Contract: every change appends exactly one event, in the same transaction."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jobcontrol.jobs import EventKind, JobError, JobSpec, JobState, Progress
from jobcontrol.store import JobFilter
from jobcontrol.store.core import SqlJobStore
from jobcontrol.store.database import Tx
from jobcontrol.store.schema import EVENT_LAYOUTS
from jobcontrol.store.sql import postgres as postgres_sql
from tests.conftest import ManualClock

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


async def test_a_change_whose_event_cannot_be_written_is_not_made(
    store: SqlJobStore, driver: str, tmp_path: Path, clock: ManualClock
):
    """The event is appended by a trigger in the same statement: break the event log and
    every change fails whole, leaving the jobs as they were."""
    job = (await store.create_job(JobSpec(type="t"))).job
    await store._db.transaction(_break_event_log)
    with pytest.raises(Exception, match="event log is broken"):
        await store.create_job(JobSpec(type="t"))
    with pytest.raises(Exception, match="event log is broken"):
        await store.cancel_job(job.id)
    with pytest.raises(Exception, match="event log is broken"):
        await store.claim_jobs(worker_id="w", types=["t"], limit=1, lease_timeout=LEASE)
    await store._db.transaction(_restore_event_log)
    page = await store.list_jobs(job_filter=JobFilter())
    assert [j.id for j in page.jobs] == [job.id]
    assert (await store.get_job(job.id)).state is JobState.PENDING
    assert [e.kind for e in await store.list_events(after_sequence=0)] == [EventKind.SUBMITTED]


async def _break_event_log(tx: Tx) -> None:
    if tx.sql is postgres_sql:
        await tx.execute(
            "CREATE FUNCTION break_event_log() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'event log is broken'; END $$"
        )
        await tx.execute(
            "CREATE TRIGGER break_event_log BEFORE INSERT ON job_events"
            " FOR EACH ROW EXECUTE FUNCTION break_event_log()"
        )
        return
    await tx.execute(
        "CREATE TRIGGER break_event_log BEFORE INSERT ON job_events"
        " BEGIN SELECT RAISE(ABORT, 'event log is broken'); END"
    )


async def _restore_event_log(tx: Tx) -> None:
    if tx.sql is postgres_sql:
        await tx.execute("DROP TRIGGER break_event_log ON job_events")
        return
    await tx.execute("DROP TRIGGER break_event_log")


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


# Columns that are the row's own bookkeeping, not part of the job an event carries.
NOT_IN_EVENTS = {"version", "event_kind", "request_hash"}


async def test_an_event_carries_every_job_column(store: SqlJobStore):
    """The triggers list the job's columns by hand (`schema.EVENT_LAYOUTS`): a column
    added to `jobs` but not there would silently be missing from every event."""
    await store.create_job(JobSpec(type="t"))

    async def columns_and_event(tx: Tx) -> tuple[set[str], list[Any]]:
        query = "SELECT name FROM pragma_table_info('jobs')"
        if tx.sql is postgres_sql:
            query = (
                "SELECT column_name AS name FROM information_schema.columns"
                " WHERE table_name = 'jobs'"
            )
        columns = {row["name"] for row in await tx.execute(query)}
        (row,) = await tx.execute("SELECT job FROM job_events")
        return columns, json.loads(row["job"])

    columns, (layout, *values) = await store._db.read(columns_and_event)
    assert layout == max(EVENT_LAYOUTS)
    assert len(values) == len(EVENT_LAYOUTS[layout])
    assert set(EVENT_LAYOUTS[layout]) == columns - NOT_IN_EVENTS


async def test_events_of_some_jobs_come_in_order_within_the_range_asked(store: SqlJobStore):
    first = (await store.create_job(JobSpec(type="t"))).job
    other = (await store.create_job(JobSpec(type="t"))).job
    second = (await store.create_job(JobSpec(type="t"))).job
    for job in (first, other, second):
        await store.cancel_job(job.id)
    everything = await store.list_events(after_sequence=0)
    last = everything[-1].sequence
    watched = [second.id, first.id]

    events = await store.list_events_of_jobs(watched, after_sequence=0, through_sequence=last)
    expected = [e for e in everything if e.job.id in watched]
    assert [(e.sequence, e.job.id, e.kind) for e in events] == [
        (e.sequence, e.job.id, e.kind) for e in expected
    ]
    middle = await store.list_events_of_jobs(
        watched, after_sequence=expected[0].sequence, through_sequence=expected[-2].sequence
    )
    assert [e.sequence for e in middle] == [e.sequence for e in expected[1:-1]]
    limited = await store.list_events_of_jobs(
        watched, after_sequence=0, through_sequence=last, limit=2
    )
    assert [e.sequence for e in limited] == [e.sequence for e in expected[:2]]
    assert await store.list_events_of_jobs([], after_sequence=0, through_sequence=last) == []
