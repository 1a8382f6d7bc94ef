"""Server churn: 200 watchers on the Python client's resuming watch() while the server
is killed -9 and restarted three times. Every watcher must observe every state
transition of its job exactly once, in order."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from jobcontrol.client import AsyncJobControlClient, Backoff
from jobcontrol.jobs import EventKind, JobError, JobEvent, JobSpec, Progress
from jobcontrol.retry import RetryPolicy
from jobcontrol.store.sqlite import SqliteJobStore
from tests.conftest import ServerProcess, free_port, start_server, wait_until_async

pytestmark = pytest.mark.slow
WATCHERS = 200
LEASE = timedelta(minutes=5)
NO_BACKOFF = RetryPolicy(base=timedelta(microseconds=1), cap=timedelta(microseconds=1))
TRANSITIONS = {
    EventKind.SNAPSHOT,
    EventKind.STARTED,
    EventKind.RETRY_SCHEDULED,
    EventKind.SUCCEEDED,
}


async def test_every_watcher_sees_every_transition_once_across_three_kill_9s(tmp_path: Path):
    port = free_port()
    store = await SqliteJobStore.open(tmp_path / "jobs.db", retry_policy=NO_BACKOFF)
    servers: list[ServerProcess] = []

    def start(n: int) -> None:
        directory = tmp_path / f"server-{n}"
        directory.mkdir()
        servers.append(
            start_server(
                directory,
                store_path=tmp_path / "jobs.db",
                args=["--listen", f"127.0.0.1:{port}", "--reap-interval", "1h"],
            )
        )

    start(0)
    client = AsyncJobControlClient(
        f"127.0.0.1:{port}",
        retry=Backoff(initial=0.05, maximum=0.5, max_attempts=50),
        watch_reconnect_timeout=60,
    )
    seen: dict[str, list[JobEvent]] = {}

    async def follow(job_id: str) -> None:
        async for event in client.watch(job_id):
            seen[job_id].append(event)

    try:
        ids = [r.job.id for r in await store.create_jobs([JobSpec(type="demo.sleep")] * WATCHERS)]
        for job_id in ids:
            seen[job_id] = []
        watchers = [asyncio.create_task(follow(job_id)) for job_id in ids]
        await wait_until_async(
            lambda: all(seen[i] for i in ids), timeout=60, interval=0.05, what="every snapshot"
        )

        async def claim_all() -> dict[str, str]:
            claimed = await store.claim_jobs(
                worker_id="churn", types=["demo.sleep"], limit=WATCHERS, lease_timeout=LEASE
            )
            assert len(claimed) == WATCHERS
            return {job.id: job.lease_id for job in claimed if job.lease_id}

        leases = await claim_all()
        servers[-1].kill()  # 1: right after the claims, before watchers have them all
        for job_id, lease in leases.items():
            await store.report_progress(job_id=job_id, lease_id=lease, progress=Progress(50))
            await store.fail_job(
                job_id=job_id, lease_id=lease, error=JobError("flaky", "again", True)
            )
        start(1)
        await asyncio.sleep(0.3)  # let some watchers resume before the next kill
        servers[-1].kill()  # 2
        start(2)
        leases = await claim_all()
        servers[-1].kill()  # 3: the second attempts start while no server runs
        for job_id, lease in leases.items():
            await store.complete_job(job_id=job_id, lease_id=lease, result={"ok": True})
        start(3)
        await asyncio.wait_for(asyncio.gather(*watchers), 120)
    finally:
        await client.close()
        for server in servers:
            server.kill()

    for job_id in ids:
        events = seen[job_id]
        sequences = [e.sequence for e in events if e.kind is not EventKind.QUEUE_POSITION]
        assert sequences == sorted(sequences)
        assert len(set(sequences[1:])) == len(sequences[1:]), f"{job_id}: a duplicate"
        stored = [
            e.kind
            for e in await store.list_events(after_sequence=events[0].sequence, job_id=job_id)
            if e.kind in TRANSITIONS
        ]
        observed = [e.kind for e in events[1:] if e.kind in TRANSITIONS]
        assert observed == stored, job_id
        assert observed == [
            EventKind.STARTED,
            EventKind.RETRY_SCHEDULED,
            EventKind.STARTED,
            EventKind.SUCCEEDED,
        ]
    await store.close()
