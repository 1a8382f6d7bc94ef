"""Contract: the reaper recovers jobs from dead workers and overdue attempts."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from jobcontrol.jobs import ErrorCode, EventKind, Job, JobSpec, JobState
from jobcontrol.store.core import SqlJobStore
from jobcontrol.workers import WorkerInfo, WorkerState
from tests.conftest import ManualClock

LEASE = timedelta(seconds=30)


async def _running(store: SqlJobStore, worker_id: str = "w", **spec: object) -> Job:
    await store.create_job(JobSpec(**{"type": "t", **spec}))  # type: ignore[arg-type]
    (job,) = await store.claim_jobs(worker_id=worker_id, types=["t"], limit=1, lease_timeout=LEASE)
    return job


async def test_nothing_is_reaped_while_leases_are_live(store: SqlJobStore, clock: ManualClock):
    await _running(store)
    clock.advance(LEASE)
    assert (await store.reap()).total == 0


async def test_expired_lease_goes_back_to_pending_as_worker_lost(
    store: SqlJobStore, clock: ManualClock
):
    job = await _running(store)
    clock.advance(LEASE + timedelta(microseconds=1))
    result = await store.reap()
    assert result.retried == [job.id]
    reaped = await store.get_job(job.id)
    assert reaped.state is JobState.PENDING
    assert reaped.error is not None
    assert reaped.error.code == ErrorCode.WORKER_LOST
    assert reaped.run_after > clock()


async def test_expired_lease_on_the_last_attempt_fails_the_job(
    store: SqlJobStore, clock: ManualClock
):
    job = await _running(store, max_attempts=1)
    clock.advance(LEASE * 2)
    assert (await store.reap()).failed == [job.id]
    assert (await store.get_job(job.id)).state is JobState.FAILED


async def test_attempt_past_its_timeout_is_failed_even_with_a_live_lease(
    store: SqlJobStore, clock: ManualClock
):
    job = await _running(store, max_attempts=1, timeout=timedelta(seconds=10))
    assert job.lease_id
    clock.advance(9)
    assert (await store.reap()).total == 0
    await store.heartbeat_job(job_id=job.id, lease_id=job.lease_id, lease_timeout=LEASE)
    clock.advance(2)
    assert (await store.reap()).failed == [job.id]
    failed = await store.get_job(job.id)
    assert failed.error is not None
    assert failed.error.code == ErrorCode.DEADLINE_EXCEEDED


async def test_timed_out_attempt_with_attempts_left_is_retried(
    store: SqlJobStore, clock: ManualClock
):
    job = await _running(store, timeout=timedelta(seconds=10))
    clock.advance(11)
    assert (await store.reap()).retried == [job.id]


async def test_cancel_requested_job_of_a_lost_worker_is_cancelled(
    store: SqlJobStore, clock: ManualClock
):
    worker = await store.register_worker(WorkerInfo("w", "host", 1, ("t",), 1))
    job = await _running(store, worker_id=worker.id)
    await store.cancel_job(job.id)
    assert (await store.reap()).total == 0  # worker alive: it will stop the job itself
    clock.advance(20)
    assert await store.mark_lost_workers(silent_for=timedelta(seconds=15)) == [worker.id]
    assert (await store.reap()).cancelled == [job.id]
    assert (await store.get_job(job.id)).state is JobState.CANCELLED


async def test_expired_lease_of_a_cancel_requested_job_cancels_it(
    store: SqlJobStore, clock: ManualClock
):
    job = await _running(store)
    await store.cancel_job(job.id)
    clock.advance(LEASE * 2)
    assert (await store.reap()).cancelled == [job.id]


async def test_reap_is_idempotent(store: SqlJobStore, clock: ManualClock):
    job = await _running(store)
    clock.advance(LEASE * 2)
    assert (await store.reap()).retried == [job.id]
    assert (await store.reap()).total == 0
    kinds = [e.kind for e in await store.list_events(after_sequence=0, job_id=job.id)]
    assert kinds.count(EventKind.RETRY_SCHEDULED) == 1


async def test_concurrent_reapers_move_each_job_once(
    store: SqlJobStore, clock: ManualClock, driver: str, tmp_path
):
    from tests.store.conftest import open_driver

    await store.create_jobs([JobSpec(type="t") for _ in range(50)])
    await store.claim_jobs(worker_id="w", types=["t"], limit=50, lease_timeout=LEASE)
    clock.advance(LEASE * 2)
    other = await open_driver(driver, tmp_path, clock)
    moved: list[str] = []
    try:
        # Remote reapers work without a lock, so rivals that read the same rows leave
        # them to whoever wrote first; passes go on until nothing is left.
        for _ in range(10):
            results = await asyncio.gather(*(s.reap(limit=20) for s in [store, other] * 4))
            moved += [job_id for r in results for job_id in r.retried]
            if not any(r.total for r in results):
                break
    finally:
        await other.close()
    assert len(moved) == 50
    assert len(set(moved)) == 50


async def test_silent_workers_are_marked_lost_and_revive_on_heartbeat(
    store: SqlJobStore, clock: ManualClock
):
    quiet = await store.register_worker(WorkerInfo("quiet", "h", 1, ("t",), 2))
    clock.advance(10)
    chatty = await store.register_worker(WorkerInfo("chatty", "h", 2, ("t",), 2))
    clock.advance(10)
    assert await store.mark_lost_workers(silent_for=timedelta(seconds=15)) == [quiet.id]
    assert await store.mark_lost_workers(silent_for=timedelta(seconds=15)) == []
    live = {w.id for w in await store.list_workers()}
    assert live == {chatty.id}
    revived = await store.heartbeat_worker(quiet.id)
    assert revived.state is WorkerState.ACTIVE
