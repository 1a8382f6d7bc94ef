"""A slot frees when its handler ends, not when its outcome is stored, and the outcomes
still waiting for the store are bounded by one more set of slots. Shown on PostgreSQL,
where a row lock taken from another connection holds one job's completion back while
claims of other rows go on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from jobcontrol.jobs import Job, JobSpec, JobState
from jobcontrol.store.postgres import PostgresJobStore
from jobcontrol.worker.context import JobContext
from jobcontrol.worker.handlers import Registry
from jobcontrol.worker.runtime import Worker, WorkerConfig
from tests.polling import wait_until_async


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresJobStore]:
    opened = await PostgresJobStore.open(postgres_url)
    try:
        yield opened
    finally:
        await opened.close()


async def finished(store: PostgresJobStore, job_id: str) -> Job:
    async def terminal() -> Job | None:
        job = await store.get_job(job_id)
        return job if job.is_terminal else None

    return await wait_until_async(terminal, timeout=15, what=f"job {job_id} to finish")


async def test_a_slot_frees_when_its_handler_ends_and_held_outcomes_stay_bounded(
    store: PostgresJobStore, postgres_url: str
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
