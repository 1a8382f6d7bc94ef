"""Contract: the atomic claim: order, types, schedule, limits, leases."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobcontrol import jobs
from jobcontrol.errors import InvalidArgument
from jobcontrol.jobs import EventKind, JobSpec, JobState
from jobcontrol.store.core import SqlJobStore
from tests.conftest import ManualClock

LEASE = timedelta(seconds=30)


async def claim(store: SqlJobStore, *, limit: int = 10, types: tuple[str, ...] = ("t",)):
    return await store.claim_jobs(
        worker_id="w1", types=list(types), limit=limit, lease_timeout=LEASE
    )


async def test_claim_starts_an_attempt_with_a_fresh_lease(store: SqlJobStore, clock: ManualClock):
    job = (await store.create_job(JobSpec(type="t", timeout=timedelta(seconds=5)))).job
    (claimed,) = await claim(store)
    assert claimed.state is JobState.RUNNING
    assert claimed.attempt == 1
    assert claimed.worker_id == "w1"
    assert claimed.lease_id
    assert claimed.lease_expire_time == clock() + LEASE
    assert claimed.start_time == clock()
    assert await store.get_job(job.id) == claimed


async def test_claim_statement_agrees_with_the_state_machine(
    store: SqlJobStore, clock: ManualClock
):
    pending = (await store.create_job(JobSpec(type="t", payload={"k": 1}))).job
    clock.advance(2)
    (claimed,) = await claim(store)
    assert claimed.lease_id is not None
    expected, kind = jobs.start(
        pending,
        worker_id="w1",
        lease_id=claimed.lease_id,
        lease_expire_time=clock() + LEASE,
        now=clock(),
    )
    assert claimed == expected
    assert kind is EventKind.STARTED


async def test_claim_orders_by_priority_then_run_after_then_age(
    store: SqlJobStore, clock: ManualClock
):
    low_old = (await store.create_job(JobSpec(type="t", priority=1))).job
    clock.advance(1)
    high = (await store.create_job(JobSpec(type="t", priority=9))).job
    clock.advance(1)
    low_new = (await store.create_job(JobSpec(type="t", priority=1))).job
    clock.advance(1)
    low_earlier_run_after = (
        await store.create_job(
            JobSpec(type="t", priority=1, run_after=clock() - timedelta(hours=1))
        )
    ).job
    order = [j.id for j in await claim(store, limit=10)]
    assert order == [high.id, low_earlier_run_after.id, low_old.id, low_new.id]


async def test_claim_takes_at_most_limit_jobs_one_at_a_time_in_order(store: SqlJobStore):
    ids = [r.job.id for r in await store.create_jobs([JobSpec(type="t") for _ in range(5)])]
    assert [j.id for j in await claim(store, limit=2)] == ids[:2]
    assert [j.id for j in await claim(store, limit=2)] == ids[2:4]
    assert [j.id for j in await claim(store, limit=2)] == ids[4:]
    assert await claim(store, limit=2) == []


async def test_claim_only_takes_the_requested_types(store: SqlJobStore):
    await store.create_job(JobSpec(type="audio.transcode"))
    sleep = (await store.create_job(JobSpec(type="demo.sleep"))).job
    claimed = await claim(store, types=("demo.sleep", "other"))
    assert [j.id for j in claimed] == [sleep.id]


async def test_claim_skips_jobs_scheduled_in_the_future(store: SqlJobStore, clock: ManualClock):
    later = (await store.create_job(JobSpec(type="t", delay=timedelta(seconds=10)))).job
    assert await claim(store) == []
    clock.advance(9.999)
    assert await claim(store) == []
    clock.advance(0.001)
    assert [j.id for j in await claim(store)] == [later.id]


async def test_claimed_jobs_are_not_claimed_again(store: SqlJobStore):
    await store.create_jobs([JobSpec(type="t") for _ in range(3)])
    first = await claim(store)
    assert len(first) == 3
    assert await claim(store) == []


async def test_each_claimed_job_gets_its_own_lease(store: SqlJobStore):
    await store.create_jobs([JobSpec(type="t") for _ in range(3)])
    leases = {j.lease_id for j in await claim(store)}
    assert len(leases) == 3


async def test_claim_with_limit_zero_or_no_types_claims_nothing(store: SqlJobStore):
    await store.create_job(JobSpec(type="t"))
    assert await claim(store, limit=0) == []
    assert await claim(store, types=()) == []
    assert len(await claim(store)) == 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"limit": -1}, "limit"),
        ({"lease_timeout": timedelta(0)}, "lease_timeout"),
        ({"types": ["bad type"]}, "types"),
    ],
)
async def test_claim_refuses_bad_arguments(store: SqlJobStore, kwargs: dict, field: str):
    args = {"worker_id": "w", "types": ["t"], "limit": 1, "lease_timeout": LEASE, **kwargs}
    with pytest.raises(InvalidArgument) as caught:
        await store.claim_jobs(**args)
    assert caught.value.field == field


async def test_queue_positions_follow_the_claim_order_per_type(
    store: SqlJobStore, clock: ManualClock
):
    a1 = (await store.create_job(JobSpec(type="a"))).job
    a2 = (await store.create_job(JobSpec(type="a"))).job
    b1 = (await store.create_job(JobSpec(type="b"))).job
    urgent = (await store.create_job(JobSpec(type="a", priority=5))).job
    future = (await store.create_job(JobSpec(type="a", delay=timedelta(minutes=1)))).job
    positions = await store.queue_positions([a1.id, a2.id, b1.id, urgent.id, future.id])
    assert positions == {urgent.id: 0, a1.id: 1, a2.id: 2, b1.id: 0, future.id: 3}
    await store.claim_jobs(worker_id="w", types=["a"], limit=1, lease_timeout=LEASE)
    positions = await store.queue_positions([a1.id, a2.id, urgent.id])
    assert positions == {a1.id: 0, a2.id: 1}


async def test_has_claimable_jobs_agrees_with_the_claim(store: SqlJobStore, clock: ManualClock):
    assert not await store.has_claimable_jobs(types=["t"])
    await store.create_job(JobSpec(type="other"))
    await store.create_job(JobSpec(type="t", delay=timedelta(seconds=5)))
    assert not await store.has_claimable_jobs(types=["t"])
    assert await claim(store) == []
    assert await store.has_claimable_jobs(types=["t", "other"])
    clock.advance(5)
    assert await store.has_claimable_jobs(types=["t"])
    assert not await store.has_claimable_jobs(types=[])
    await claim(store)
    assert not await store.has_claimable_jobs(types=["t"])


async def test_has_claimable_jobs_checks_the_types(store: SqlJobStore):
    with pytest.raises(InvalidArgument) as caught:
        await store.has_claimable_jobs(types=["not a type!"])
    assert caught.value.field == "types"
