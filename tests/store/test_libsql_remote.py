"""The remote libSQL driver against a real sqld, not a stand-in for it.

Until these were written the remote driver had only met a Python imitation of sqld, and
on a real one every statement with parameters failed (ARGS_INVALID: the `libsql` SDK
sent positional arguments to `:name` placeholders). The fault tests check what a
process sharing a remote database needs: a database that stops answering, crashes or
sits far away costs errors or time, never a hang or a store that must be reopened.

Every call has a deadline (asyncio.wait_for), so a driver that hangs fails the test
instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import Awaitable
from datetime import timedelta
from typing import TypeVar

import pytest

from jobcontrol.errors import StoreUnavailable
from jobcontrol.jobs import EventKind, JobSpec, JobState, Progress
from jobcontrol.store.libsql import LibsqlJobStore
from jobcontrol.store.protocol import JobFilter
from tests.conftest import StartDelayProxy
from tests.sqld import SqldProcess

T = TypeVar("T")

# Far longer than any store call takes on loopback: reaching it means the driver hung.
DEADLINE = 60.0
# How long a call may take to give up on a sqld that accepts connections but never
# answers: the driver's request timeout (10 s) and retry budget (5 s), with room.
PAUSED_DEADLINE = 30.0
LEASE = timedelta(minutes=1)
BURST = 32  # calls at once: more than the driver has threads (8)


async def within(call: Awaitable[T], seconds: float, what: str) -> T:
    """`call`, or a test failure (not a hang) if it has not ended after `seconds`."""
    try:
        return await asyncio.wait_for(call, seconds)
    except TimeoutError:
        raise AssertionError(f"{what}: no answer within {seconds:g}s") from None


async def open_store(url: str, token: str | None, *, retry_for: float = 5.0) -> LibsqlJobStore:
    return await within(
        LibsqlJobStore.open(url, auth_token=token, retry_for=retry_for),
        DEADLINE,
        "opening the store",
    )


async def test_a_parameterized_write_lands_in_sqld_and_reads_back(sqld: SqldProcess) -> None:
    store = await open_store(sqld.url, sqld.token)
    try:
        spec = JobSpec(type="t", payload={"n": 1}, idempotency_key="key-1", labels={"a": "b"})
        created = await within(store.create_job(spec), DEADLINE, "create_job")
        assert created.created
        read = await within(store.get_job(created.job.id), DEADLINE, "get_job")
    finally:
        await store.close()
    assert dataclasses.replace(read, queue_position=None) == created.job  # computed on read
    assert read.state is JobState.PENDING
    assert read.payload == {"n": 1}
    assert read.labels == {"a": "b"}

    # And it is in sqld's own database file, not only in what the driver says.
    sqld.stop()
    with sqlite3.connect(f"file:{sqld.data_file}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT type FROM jobs WHERE id = ?", (read.id,)).fetchall()
    assert rows == [("t",)]


async def test_while_sqld_is_paused_calls_fail_as_unavailable_and_then_the_store_recovers(
    sqld: SqldProcess,
) -> None:
    """SIGSTOP: connections are still accepted by the kernel, nothing answers them. A
    read and a write must each end as StoreUnavailable, and after SIGCONT the same store
    object serves again."""
    store = await open_store(sqld.url, sqld.token)
    try:
        before = (await within(store.create_job(JobSpec(type="t")), DEADLINE, "a write")).job
        sqld.pause()
        try:
            read, write = await asyncio.gather(
                within(store.get_job(before.id), PAUSED_DEADLINE, "a read, sqld paused"),
                within(
                    store.create_job(JobSpec(type="lost")), PAUSED_DEADLINE, "a write, sqld paused"
                ),
                return_exceptions=True,
            )
        finally:
            sqld.resume()
        assert isinstance(read, StoreUnavailable), read
        assert isinstance(write, StoreUnavailable), write

        after = (await within(store.create_job(JobSpec(type="t")), DEADLINE, "after")).job
        assert (await within(store.get_job(before.id), DEADLINE, "a read after")).id == before.id
        page = await within(store.list_jobs(job_filter=JobFilter()), DEADLINE, "list_jobs")
    finally:
        await store.close()
    kept = [job.id for job in page.jobs if job.type == "t"]
    assert sorted(kept) == sorted([before.id, after.id])
    # The paused write's answer was lost, so it may have landed: once at most.
    assert len([job for job in page.jobs if job.type == "lost"]) <= 1


async def test_after_sqld_is_killed_and_restarted_the_store_writes_again_without_reopening(
    sqld: SqldProcess, delay_proxy: StartDelayProxy
) -> None:
    """kill -9 and a restart between two bursts of calls. Every connection the store
    kept alive was ended by the crash, and a request sent on one is answered by the
    connection closing: it never reached the server, so no write may fail for it. What
    was written before the crash is still there.

    The store talks to sqld through a proxy (2 ms of round trip), as over any network:
    on bare loopback the kernel refuses the request as it is sent (a broken pipe), which
    hides what a client elsewhere sees (a connection closed with no response)."""
    proxy = delay_proxy(sqld.url, rtt=0.002)
    store = await open_store(proxy.url, sqld.token)
    try:
        # Enough calls at once that every driver thread holds a connection.
        before = await within(
            asyncio.gather(*(store.create_job(JobSpec(type="t")) for _ in range(BURST))),
            DEADLINE,
            "a burst of writes",
        )
        sqld.kill()
        sqld.restart()
        after = await within(
            asyncio.gather(
                *(store.create_job(JobSpec(type="t")) for _ in range(BURST)),
                return_exceptions=True,
            ),
            DEADLINE,
            "a burst of writes after the restart",
        )
        failed = [error for error in after if isinstance(error, BaseException)]
        assert not failed, f"{len(failed)} of {BURST} writes failed, the first: {failed[0]!r}"
        page = await within(
            store.list_jobs(job_filter=JobFilter(), page_size=1000), DEADLINE, "list_jobs"
        )
    finally:
        await store.close()
    written = [s.job.id for s in before]
    written += [s.job.id for s in after if not isinstance(s, BaseException)]
    assert sorted(job.id for job in page.jobs) == sorted(written)


async def test_while_sqld_is_down_calls_fail_as_unavailable_and_after_a_restart_they_work(
    sqld: SqldProcess,
) -> None:
    store = await open_store(sqld.url, sqld.token, retry_for=1.0)
    try:
        before = (await within(store.create_job(JobSpec(type="t")), DEADLINE, "a write")).job
        sqld.kill()
        with pytest.raises(StoreUnavailable):
            await within(store.get_job(before.id), DEADLINE, "a read, sqld down")
        with pytest.raises(StoreUnavailable):
            await within(store.create_job(JobSpec(type="t")), DEADLINE, "a write, sqld down")
        sqld.restart()
        read = await within(store.get_job(before.id), DEADLINE, "a read after the restart")
        assert read.state is JobState.PENDING
        assert (await within(store.create_job(JobSpec(type="t")), DEADLINE, "a write")).created
    finally:
        await store.close()


async def test_through_20_ms_of_round_trip_a_job_runs_its_whole_life(
    sqld: SqldProcess, delay_proxy: StartDelayProxy
) -> None:
    """Correctness only (no timing): every kind of store operation over a link that
    delays each round trip by 20 ms, as between regions."""
    proxy = delay_proxy(sqld.url, rtt=0.020)
    store = await open_store(proxy.url, sqld.token)
    try:
        submitted = await within(
            store.create_jobs([JobSpec(type="t", payload={"i": i}) for i in range(3)]),
            DEADLINE,
            "create_jobs",
        )
        claimed = await within(
            store.claim_jobs(worker_id="w", types=["t"], limit=2, lease_timeout=LEASE),
            DEADLINE,
            "claim_jobs",
        )
        assert len(claimed) == 2
        first, second = claimed
        assert first.lease_id is not None
        assert second.lease_id is not None
        await within(
            store.report_progress(
                job_id=first.id, lease_id=first.lease_id, progress=Progress(percent=50)
            ),
            DEADLINE,
            "report_progress",
        )
        done = await within(
            store.complete_job(job_id=first.id, lease_id=first.lease_id, result={"ok": 1}),
            DEADLINE,
            "complete_job",
        )
        cancelled = await within(store.cancel_job(second.id, reason="r"), DEADLINE, "cancel")
        events = await within(
            store.list_events(after_sequence=0, job_id=first.id), DEADLINE, "list_events"
        )
        counts = await within(store.count_jobs_by_state(), DEADLINE, "count_jobs_by_state")
    finally:
        await store.close()
    assert {s.job.id for s in submitted} >= {first.id, second.id}
    assert done.state is JobState.SUCCEEDED
    assert done.result == {"ok": 1}
    assert cancelled.cancel_requested
    assert [e.kind for e in events] == [
        EventKind.SUBMITTED,
        EventKind.STARTED,
        EventKind.PROGRESS,
        EventKind.SUCCEEDED,
    ]
    assert counts[JobState.SUCCEEDED] == 1
    assert counts[JobState.PENDING] == 1
    assert proxy.requests > 0  # it all went through the proxy
