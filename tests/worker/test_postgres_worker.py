"""The worker on PostgreSQL.

It is woken, not polling: with every poll an hour apart (and the lease heartbeat too), a
new job is still claimed and a cancel still reaches its handler, both only by
LISTEN/NOTIFY. And a slot frees when its handler ends, not when its outcome is stored,
with the outcomes still waiting for the store bounded by one more set of slots: a row
lock taken from another connection holds one job's completion back while claims of
other rows go on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from jobcontrol.jobs import Job, JobSpec, JobState
from jobcontrol.store.postgres import PostgresJobStore
from jobcontrol.worker.context import JobContext
from jobcontrol.worker.handlers import Registry
from jobcontrol.worker.runtime import Worker, WorkerConfig
from tests.polling import wait_until_async

HOUR = timedelta(hours=1)


class ProbeCountingStore(PostgresJobStore):
    probes = 0

    async def has_claimable_jobs(self, *, types: Any) -> bool:
        self.probes += 1
        return await super().has_claimable_jobs(types=types)


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[ProbeCountingStore]:
    opened = await ProbeCountingStore.open(postgres_url)
    try:
        yield opened
    finally:
        await opened.close()


async def finished(store: PostgresJobStore, job_id: str) -> Job:
    async def terminal() -> Job | None:
        job = await store.get_job(job_id)
        return job if job.is_terminal else None

    return await wait_until_async(terminal, timeout=15, what=f"job {job_id} to finish")


async def test_an_idle_worker_is_woken_for_a_new_job_and_for_a_cancel(store: ProbeCountingStore):
    registry = Registry()
    started = asyncio.Event()

    @registry.handler("t.quick")
    async def quick(ctx: JobContext) -> dict[str, Any]:
        return {"ok": True}

    @registry.handler("t.waits")
    async def waits(ctx: JobContext) -> dict[str, Any]:
        started.set()
        await ctx.wait_cancelled()
        ctx.raise_if_cancelled()
        return {}

    config = WorkerConfig(
        concurrency=2,
        poll_interval=HOUR,
        cancel_poll_interval=HOUR,
        lease_timeout=3 * HOUR,  # its heartbeat, which also reports cancels, once an hour
    )
    worker = Worker(store, registry, config)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    try:
        changes = store.changes
        assert changes is not None
        # Idle: it has asked once, found nothing, and waits for an hour or a notification.
        await wait_until_async(lambda: store.probes >= 1 and changes.live)
        probes = store.probes
        quick_id = (await store.create_job(JobSpec(type="t.quick"))).job.id
        assert (await finished(store, quick_id)).state is JobState.SUCCEEDED
        assert store.probes > probes  # woken to ask again, an hour early

        waits_id = (await store.create_job(JobSpec(type="t.waits"))).job.id
        await asyncio.wait_for(started.wait(), 15)
        await store.cancel_job(waits_id)
        assert (await finished(store, waits_id)).state is JobState.CANCELLED
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_a_slot_frees_when_its_handler_ends_and_held_outcomes_stay_bounded(
    store: ProbeCountingStore, postgres_url: str
):
    registry = Registry()
    gate = asyncio.Event()
    first_started = asyncio.Event()
    ran: list[str] = []

    @registry.handler("t.first")
    async def first(ctx: JobContext) -> dict[str, Any]:
        first_started.set()
        await gate.wait()
        return {"first": True}

    @registry.handler("t.next")
    async def next_job(ctx: JobContext) -> dict[str, Any]:
        ran.append(ctx.job_id)
        return {"next": True}

    worker = Worker(store, registry, WorkerConfig(concurrency=1))
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    locker = await psycopg.AsyncConnection.connect(postgres_url)
    try:
        a = (await store.create_job(JobSpec(type="t.first"))).job.id
        await asyncio.wait_for(first_started.wait(), timeout=15)
        # A's row is locked until the end of this transaction: its completion waits.
        await locker.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (a,))
        b = (await store.create_job(JobSpec(type="t.next"))).job.id
        c = (await store.create_job(JobSpec(type="t.next"))).job.id
        gate.set()

        # A's handler has ended but its outcome is not stored: its slot ran B meanwhile.
        await wait_until_async(lambda: b in ran, timeout=15, what="B to run in A's slot")
        assert (await store.get_job(a)).state is JobState.RUNNING
        # A's and B's outcomes now wait for the store: one more set of slots, the bound.
        # C must not be claimed while they wait (watched for a second: a claim would come
        # within milliseconds of B's end).
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert (await store.get_job(c)).state is JobState.PENDING, "claimed past the bound"
            await asyncio.sleep(0.05)
        assert sorted(worker.running_jobs) == sorted([a, b])

        await locker.commit()  # A's completion goes through, then B's, then C runs
        jobs = [await finished(store, job_id) for job_id in (a, b, c)]
    finally:
        gate.set()
        await locker.close()
        stop.set()
        await asyncio.wait_for(task, timeout=30)

    assert [(j.state, j.attempt) for j in jobs] == [(JobState.SUCCEEDED, 1)] * 3
    assert [j.result for j in jobs] == [{"first": True}, {"next": True}, {"next": True}]
    assert ran == [b, c]
