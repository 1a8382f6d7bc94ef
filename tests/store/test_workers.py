"""Contract: worker registration, heartbeats, draining, listing with current jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest

from jobcontrol.errors import InvalidArgument, WorkerNotFound
from jobcontrol.ids import new_id
from jobcontrol.jobs import JobSpec
from jobcontrol.store.core import SqlJobStore
from jobcontrol.workers import WorkerInfo, WorkerState
from tests.conftest import ManualClock

INFO = WorkerInfo(name="w1", host="box", pid=4242, job_types=("demo.sleep", "a"), concurrency=4)


async def test_registered_worker_is_listed_with_its_running_jobs(
    store: SqlJobStore, clock: ManualClock
):
    worker = await store.register_worker(INFO)
    assert worker.state is WorkerState.ACTIVE
    assert worker.job_types == ("a", "demo.sleep")
    await store.create_jobs([JobSpec(type="a") for _ in range(3)])
    claimed = await store.claim_jobs(
        worker_id=worker.id, types=["a"], limit=2, lease_timeout=timedelta(seconds=30)
    )
    (listed,) = await store.list_workers()
    assert listed.id == worker.id
    assert listed.pid == 4242
    assert listed.concurrency == 4
    assert listed.current_job_ids == tuple(j.id for j in claimed)


async def test_heartbeat_updates_the_worker(store: SqlJobStore, clock: ManualClock):
    worker = await store.register_worker(INFO)
    clock.advance(5)
    beat = await store.heartbeat_worker(worker.id)
    assert beat.heartbeat_time == clock()
    assert beat.start_time == worker.start_time


async def test_drain_then_deregister(store: SqlJobStore):
    worker = await store.register_worker(INFO)
    assert (await store.drain_worker(worker.id)).state is WorkerState.DRAINING
    assert [w.state for w in await store.list_workers()] == [WorkerState.DRAINING]
    stopped = await store.deregister_worker(worker.id)
    assert stopped.state is WorkerState.STOPPED
    assert stopped.stop_time is not None
    assert await store.list_workers() == []
    assert [w.id for w in await store.list_workers(include_stopped=True)] == [worker.id]
    with pytest.raises(WorkerNotFound):
        await store.heartbeat_worker(worker.id)  # a stopped worker must register again


async def test_unknown_worker_is_not_found(store: SqlJobStore):
    with pytest.raises(WorkerNotFound):
        await store.heartbeat_worker(new_id())
    with pytest.raises(WorkerNotFound):
        await store.deregister_worker(new_id())


@pytest.mark.parametrize(
    ("info", "field"),
    [
        (WorkerInfo("", "h", 1, ("t",), 1), "name"),
        (WorkerInfo("w", "h" * 300, 1, ("t",), 1), "host"),
        (WorkerInfo("w", "h", 1, ("t",), 0), "concurrency"),
        (WorkerInfo("w", "h", 1, ("bad type",), 1), "job_types"),
    ],
)
async def test_register_refuses_bad_fields(store: SqlJobStore, info: WorkerInfo, field: str):
    with pytest.raises(InvalidArgument) as caught:
        await store.register_worker(info)
    assert caught.value.field == field


async def test_served_job_types_are_those_of_active_workers(store: SqlJobStore, clock: ManualClock):
    """What the server warns about when a job type has no live worker."""
    assert await store.served_job_types() == frozenset()
    a = await store.register_worker(WorkerInfo("a", "h", 1, ("x.a", "y.b"), 1))
    b = await store.register_worker(WorkerInfo("b", "h", 2, ("y.b", "z.c"), 1))
    c = await store.register_worker(WorkerInfo("c", "h", 3, ("w.d",), 1))
    assert await store.served_job_types() == {"x.a", "y.b", "z.c", "w.d"}
    await store.drain_worker(b.id)
    await store.deregister_worker(c.id)
    assert await store.served_job_types() == {"x.a", "y.b"}
    clock.advance(timedelta(minutes=5))
    assert set(await store.mark_lost_workers(silent_for=timedelta(minutes=1))) == {a.id, b.id}
    assert await store.served_job_types() == frozenset()
    await store.heartbeat_worker(a.id)
    assert await store.served_job_types() == {"x.a", "y.b"}
