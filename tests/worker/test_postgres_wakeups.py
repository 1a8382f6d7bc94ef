"""On PostgreSQL a worker is woken, not polling: with every poll an hour apart (and the
lease heartbeat too), a new job is still claimed and a cancel still reaches its handler,
both only by LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

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
