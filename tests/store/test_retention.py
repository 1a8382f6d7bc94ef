"""Contract: pruning old finished jobs, their events, and old stopped workers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobcontrol.errors import JobNotFound
from jobcontrol.jobs import JobSpec, JobState
from jobcontrol.store.core import SqlJobStore
from jobcontrol.workers import WorkerInfo
from tests.conftest import ManualClock


async def test_prune_removes_old_terminal_jobs_and_their_events_only(
    store: SqlJobStore, clock: ManualClock
):
    old = (await store.create_job(JobSpec(type="t"))).job
    await store.cancel_job(old.id)
    old_pending = (await store.create_job(JobSpec(type="t"))).job
    clock.advance(timedelta(days=8))
    recent = (await store.create_job(JobSpec(type="t"))).job
    await store.cancel_job(recent.id)
    stopped = await store.register_worker(WorkerInfo("w", "h", 1, ("t",), 1))
    await store.deregister_worker(stopped.id)
    clock.advance(timedelta(days=1))

    result = await store.prune(older_than=timedelta(days=7))

    assert (result.jobs, result.events, result.workers) == (1, 2, 0)
    with pytest.raises(JobNotFound):
        await store.get_job(old.id)
    assert await store.list_events(after_sequence=0, job_id=old.id) == []
    assert (await store.get_job(old_pending.id)).state is JobState.PENDING
    assert (await store.get_job(recent.id)).state is JobState.CANCELLED
    assert (await store.prune(older_than=timedelta(days=7))).jobs == 0
    clock.advance(timedelta(days=7))
    assert (await store.prune(older_than=timedelta(days=7))).workers == 1


async def test_sequences_keep_increasing_after_a_prune_removed_every_event(
    store: SqlJobStore, clock: ManualClock
):
    job = (await store.create_job(JobSpec(type="t"))).job
    await store.cancel_job(job.id)
    clock.advance(timedelta(days=30))
    await store.prune(older_than=timedelta(days=1))
    assert await store.last_sequence() == 2
    await store.create_job(JobSpec(type="t"))
    (event,) = await store.list_events(after_sequence=0)
    assert event.sequence == 3
