"""How many HTTP requests each store operation costs on a real sqld.

Over a network every request is a round trip, so these counts are the remote store's
latency: a claim, a batch of completions or a progress write must stay one request. The
proxy in front of sqld counts what the driver actually sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import timedelta
from typing import Any, TypeVar

import pytest

from jobcontrol.jobs import JobError, JobSpec, Progress
from jobcontrol.store.libsql import LibsqlJobStore
from jobcontrol.store.protocol import Completion, JobFilter
from tests.conftest import StartDelayProxy
from tests.sqld import DelayProxy, SqldProcess

LEASE = timedelta(minutes=5)
T = TypeVar("T")


@pytest.fixture
async def counted(
    sqld: SqldProcess, delay_proxy: StartDelayProxy
) -> AsyncIterator[tuple[LibsqlJobStore, DelayProxy]]:
    proxy = delay_proxy(sqld.url, rtt=0.0)
    store = await LibsqlJobStore.open(proxy.url, auth_token=sqld.token)
    try:
        yield store, proxy
    finally:
        await store.close()


async def requests_for(proxy: DelayProxy, call: Awaitable[Any]) -> int:
    return (await counted_call(proxy, call))[0]


async def counted_call(proxy: DelayProxy, call: Awaitable[T]) -> tuple[int, T]:
    before = proxy.requests
    result = await asyncio.wait_for(call, 60)
    return proxy.requests - before, result


async def test_each_worker_operation_is_one_request(
    counted: tuple[LibsqlJobStore, DelayProxy],
) -> None:
    store, proxy = counted
    await store.create_jobs([JobSpec(type="t") for _ in range(20)])

    assert await requests_for(proxy, store.has_claimable_jobs(types=["t"])) == 1
    claim = store.claim_jobs(worker_id="w", types=["t"], limit=20, lease_timeout=LEASE)
    requests, claimed = await counted_call(proxy, claim)
    assert requests == 1
    assert len(claimed) == 20
    first, second, *rest = claimed
    assert first.lease_id
    assert second.lease_id

    heartbeat = store.heartbeat_job(job_id=first.id, lease_id=first.lease_id, lease_timeout=LEASE)
    assert await requests_for(proxy, heartbeat) == 1
    leases = {job.id: job.lease_id or "" for job in claimed}
    assert await requests_for(proxy, store.heartbeat_jobs(leases, lease_timeout=LEASE)) == 1
    progress = store.report_progress(
        job_id=first.id, lease_id=first.lease_id, progress=Progress(50, "half", "")
    )
    assert await requests_for(proxy, progress) == 1
    assert await requests_for(proxy, store.list_cancel_requests(worker_id="w")) == 1
    completions = [Completion(job.id, job.lease_id or "", {"n": 1}) for job in rest]
    assert await requests_for(proxy, store.complete_jobs(completions)) == 1
    assert (await store.get_job(rest[0].id)).result == {"n": 1}
    # A failure is decided by the state machine in Python: read, then a fenced write.
    failure = JobError("boom", "it broke", retryable=False)
    fail = store.fail_job(job_id=second.id, lease_id=second.lease_id, error=failure)
    assert await requests_for(proxy, fail) == 2


async def test_submits_and_reads_take_one_request_each(
    counted: tuple[LibsqlJobStore, DelayProxy],
) -> None:
    store, proxy = counted
    assert await requests_for(proxy, store.create_job(JobSpec(type="t"))) == 1
    batch = [JobSpec(type="t", payload={"i": i}) for i in range(1000)]
    assert await requests_for(proxy, store.create_jobs(batch)) == 1
    assert await requests_for(proxy, store.list_events(after_sequence=0)) == 1
    assert await requests_for(proxy, store.last_sequence()) == 1
    assert await requests_for(proxy, store.ping()) == 1
    assert await requests_for(proxy, store.reap()) == 1  # nothing to reap: one read
    # Idempotency keys are read and inserted in one transaction: BEGIN rides with the
    # read, COMMIT is the last request.
    keyed = store.create_job(JobSpec(type="t", idempotency_key="k"))
    assert await requests_for(proxy, keyed) == 3
    assert len((await store.list_jobs(job_filter=JobFilter(), page_size=1000)).jobs) == 1000
