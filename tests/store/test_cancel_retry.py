"""Contract: CancelJob and RetryJob on every state."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobcontrol.errors import InvalidArgument, InvalidTransition, JobNotFound
from jobcontrol.ids import new_id
from jobcontrol.jobs import EventKind, Job, JobError, JobSpec, JobState
from jobcontrol.store.core import SqlJobStore

LEASE = timedelta(seconds=30)


async def _running(store: SqlJobStore, **spec: object) -> Job:
    await store.create_job(JobSpec(**{"type": "t", **spec}))  # type: ignore[arg-type]
    (job,) = await store.claim_jobs(worker_id="w", types=["t"], limit=1, lease_timeout=LEASE)
    return job


async def _kinds(store: SqlJobStore, job_id: str) -> list[EventKind]:
    return [e.kind for e in await store.list_events(after_sequence=0, job_id=job_id)]


async def test_cancel_pending_job_cancels_it_at_once(store: SqlJobStore):
    job = (await store.create_job(JobSpec(type="t"))).job
    cancelled = await store.cancel_job(job.id, reason="not needed")
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.cancel_reason == "not needed"
    assert cancelled.end_time is not None
    assert await _kinds(store, job.id) == [EventKind.SUBMITTED, EventKind.CANCELLED]
    assert await store.claim_jobs(worker_id="w", types=["t"], limit=1, lease_timeout=LEASE) == []


async def test_cancel_running_job_requests_cancellation(store: SqlJobStore):
    job = await _running(store)
    requested = await store.cancel_job(job.id)
    assert requested.state is JobState.RUNNING
    assert requested.cancel_requested
    assert (await _kinds(store, job.id))[-1] is EventKind.CANCEL_REQUESTED


async def test_cancel_is_idempotent(store: SqlJobStore):
    running = await _running(store)
    first = await store.cancel_job(running.id)
    assert await store.cancel_job(running.id) == first
    pending = (await store.create_job(JobSpec(type="t"))).job
    cancelled = await store.cancel_job(pending.id)
    assert await store.cancel_job(pending.id) == cancelled
    assert (await _kinds(store, running.id)).count(EventKind.CANCEL_REQUESTED) == 1
    assert (await _kinds(store, pending.id)).count(EventKind.CANCELLED) == 1


async def test_cancel_succeeded_or_failed_job_is_refused(store: SqlJobStore):
    done = await _running(store)
    assert done.lease_id
    await store.complete_job(job_id=done.id, lease_id=done.lease_id, result={})
    with pytest.raises(InvalidTransition, match="SUCCEEDED"):
        await store.cancel_job(done.id)
    failed = await _running(store, max_attempts=1)
    assert failed.lease_id
    await store.fail_job(job_id=failed.id, lease_id=failed.lease_id, error=JobError("x", "y", True))
    with pytest.raises(InvalidTransition, match="FAILED"):
        await store.cancel_job(failed.id)


async def test_cancel_unknown_job_is_not_found(store: SqlJobStore):
    with pytest.raises(JobNotFound):
        await store.cancel_job(new_id())


async def test_cancel_reason_is_limited(store: SqlJobStore):
    job = (await store.create_job(JobSpec(type="t"))).job
    with pytest.raises(InvalidArgument):
        await store.cancel_job(job.id, reason="x" * 1025)


async def test_retry_failed_job_grants_a_new_attempt(store: SqlJobStore):
    job = await _running(store, max_attempts=1)
    assert job.lease_id
    await store.fail_job(job_id=job.id, lease_id=job.lease_id, error=JobError("x", "y", False))
    retried = await store.retry_job(job.id)
    assert retried.state is JobState.PENDING
    assert retried.end_time is None
    assert retried.max_attempts == 2
    assert (await _kinds(store, job.id))[-1] is EventKind.RETRIED
    (again,) = await store.claim_jobs(worker_id="w", types=["t"], limit=1, lease_timeout=LEASE)
    assert again.id == job.id
    assert again.attempt == 2


async def test_retry_cancelled_job_runs_it_again(store: SqlJobStore):
    job = (await store.create_job(JobSpec(type="t"))).job
    await store.cancel_job(job.id)
    retried = await store.retry_job(job.id)
    assert retried.state is JobState.PENDING
    assert not retried.cancel_requested


@pytest.mark.parametrize("state", ["pending", "running", "succeeded"])
async def test_retry_is_refused_unless_failed_or_cancelled(store: SqlJobStore, state: str):
    if state == "pending":
        job = (await store.create_job(JobSpec(type="t"))).job
    else:
        job = await _running(store)
        if state == "succeeded":
            assert job.lease_id
            await store.complete_job(job_id=job.id, lease_id=job.lease_id, result={})
    with pytest.raises(InvalidTransition, match="only FAILED or CANCELLED"):
        await store.retry_job(job.id)


async def test_a_worker_finds_its_cancel_requests_cheaply(store: SqlJobStore):
    await store.create_jobs([JobSpec(type="t") for _ in range(3)])
    mine = await store.claim_jobs(worker_id="me", types=["t"], limit=2, lease_timeout=LEASE)
    (theirs,) = await store.claim_jobs(worker_id="other", types=["t"], limit=1, lease_timeout=LEASE)
    assert await store.list_cancel_requests(worker_id="me") == []
    await store.cancel_job(mine[1].id)
    await store.cancel_job(theirs.id)
    assert await store.list_cancel_requests(worker_id="me") == [mine[1].id]
