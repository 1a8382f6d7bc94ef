"""Group commit of results, on a real SQLite store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from jobcontrol.errors import InvalidArgument, LeaseLost, StoreUnavailable
from jobcontrol.jobs import Job, JobSpec, JobState
from jobcontrol.store import Completion
from jobcontrol.store.sqlite import SqliteJobStore
from jobcontrol.worker.completions import CompletionWriter

LEASE = timedelta(seconds=30)


class CountingStore(SqliteJobStore):
    """The real store, remembering the size of every batch it was asked to write, and
    failing those writes as an unreachable store does while `down` is set."""

    batches: list[int]
    down = False

    async def complete_jobs(self, completions: Sequence[Completion]) -> list[bool]:
        self.batches.append(len(completions))
        if self.down:
            raise StoreUnavailable("the store is down")
        return await super().complete_jobs(completions)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[CountingStore]:
    opened = await CountingStore.open(tmp_path / "jobs.db")
    opened.batches = []
    try:
        yield opened
    finally:
        await opened.close()


async def running(store: CountingStore, count: int) -> list[Job]:
    await store.create_jobs([JobSpec(type="t") for _ in range(count)])
    return await store.claim_jobs(worker_id="w", types=["t"], limit=count, lease_timeout=LEASE)


def lease(job: Job) -> dict[str, str]:
    assert job.lease_id is not None
    return {"job_id": job.id, "lease_id": job.lease_id}


async def test_results_arriving_together_share_a_transaction(store: CountingStore):
    jobs = await running(store, 50)
    writer = CompletionWriter(store)
    await asyncio.gather(
        *(writer.complete(**lease(job), result={"i": i}) for i, job in enumerate(jobs))
    )
    done = [await store.get_job(job.id) for job in jobs]
    assert [job.result for job in done] == [{"i": i} for i in range(50)]
    assert all(job.state is JobState.SUCCEEDED for job in done)
    assert store.batches == [50]


async def test_batches_are_capped(store: CountingStore):
    jobs = await running(store, 7)
    writer = CompletionWriter(store, max_batch=3)
    await asyncio.gather(*(writer.complete(**lease(job), result={}) for job in jobs))
    assert max(store.batches) == 3
    assert sum(store.batches) == 7


async def test_a_lost_lease_fails_only_its_own_completion(store: CountingStore):
    kept, lost = await running(store, 2)
    await store.cancel_job(lost.id)
    await store.record_cancelled(**lease(lost))
    writer = CompletionWriter(store)
    outcomes = await asyncio.gather(
        writer.complete(**lease(kept), result={}),
        writer.complete(**lease(lost), result={}),
        return_exceptions=True,
    )
    assert outcomes[0] is None
    assert (await store.get_job(kept.id)).state is JobState.SUCCEEDED
    assert isinstance(outcomes[1], LeaseLost)


async def test_a_result_the_store_refuses_fails_only_its_own_completion(store: CountingStore):
    first, bad, last = await running(store, 3)
    writer = CompletionWriter(store)
    outcomes = await asyncio.gather(
        writer.complete(**lease(first), result={"ok": 1}),
        writer.complete(**lease(bad), result={"x": float("inf")}),
        writer.complete(**lease(last), result={"ok": 3}),
        return_exceptions=True,
    )
    assert isinstance(outcomes[1], InvalidArgument)
    assert outcomes[1].field == "result"
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert (await store.get_job(first.id)).result == {"ok": 1}
    assert (await store.get_job(last.id)).result == {"ok": 3}
    assert (await store.get_job(bad.id)).state is JobState.RUNNING


async def test_a_store_outage_reaches_every_waiting_job(store: CountingStore):
    jobs = await running(store, 3)
    writer = CompletionWriter(store)
    store.down = True
    outcomes = await asyncio.gather(
        *(writer.complete(**lease(job), result={}) for job in jobs), return_exceptions=True
    )
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)
    store.down = False
    await writer.complete(**lease(jobs[0]), result={})
    assert (await store.get_job(jobs[0].id)).state is JobState.SUCCEEDED
