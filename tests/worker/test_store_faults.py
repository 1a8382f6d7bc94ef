"""The worker against a store that fails under it, in-process on a real SQLite file.

The fault is real: another connection renames the `jobs` table away, so every call the
worker makes (idle probe, claim, lease renewal, progress, completion) fails with the
driver's own `sqlite3.OperationalError: no such table` (SQLITE_ERROR, which the driver
does not map to StoreUnavailable), until the table is renamed back.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobcontrol.jobs import EventKind, JobState
from jobcontrol.store.sqlite import SqliteJobStore
from jobcontrol.worker import JobContext, Registry
from tests.conftest import wait_until_async
from tests.worker.test_runtime import RunningWorker, finished, submit


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    opened = await SqliteJobStore.open(tmp_path / "jobs.db")
    try:
        yield opened
    finally:
        await opened.close()


def rename_table(path: Path, old: str, new: str) -> None:
    """From a connection of its own, as another process would."""
    with sqlite3.connect(path, timeout=30) as conn:
        conn.execute(f"ALTER TABLE {old} RENAME TO {new}")


def messages(caplog: pytest.LogCaptureFixture, *, level: int, containing: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level and containing in r.getMessage()
    ]


async def test_an_unmapped_driver_error_is_ridden_out_and_logged_once_per_episode(
    tmp_path: Path, store: SqliteJobStore, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG, logger="jobcontrol.worker")
    registry = Registry()
    started: set[str] = set()
    gate = asyncio.Event()

    @registry.handler("t.gated")
    async def gated(ctx: JobContext) -> dict[str, Any]:
        started.add(ctx.job_id)
        ctx.report_progress(10, stage="waiting")
        await gate.wait()
        ctx.report_progress(100, stage="done", message="last words")
        return {"job": ctx.job_id}

    # Two free slots besides the four jobs: the claim loop keeps polling all along. The
    # lease outlasts the fault by far, so no outcome may be given up.
    worker = RunningWorker(
        store,
        registry,
        concurrency=6,
        lease_timeout=timedelta(seconds=60),
        heartbeat_interval=timedelta(seconds=0.2),
    )
    try:
        ids = [await submit(store, "t.gated") for _ in range(4)]
        await wait_until_async(
            lambda: started == set(ids), timeout=20, what="all four jobs to start"
        )

        rename_table(tmp_path / "jobs.db", "jobs", "jobs_away")
        gate.set()  # the handlers finish while no call of the worker can succeed

        def retried_or_gave_up(episode: str) -> bool:
            again = messages(caplog, level=logging.DEBUG, containing=f"{episode} failed again")
            return len(again) >= 3 or worker.task.done()

        for episode in ("claiming jobs", "renewing job leases", "recording outcomes"):
            await wait_until_async(
                lambda e=episode: retried_or_gave_up(e), timeout=20, what=f"{episode} to be retried"
            )
        assert not worker.task.done(), "the worker gave up on a store error"
        assert sorted(worker.worker.running_jobs) == sorted(ids), "an outcome was dropped"

        rename_table(tmp_path / "jobs.db", "jobs_away", "jobs")
        jobs = [await finished(store, job_id, within=20) for job_id in ids]
        # The claim loop is still alive and claims new work.
        late = await finished(store, await submit(store, "t.gated"), within=20)
    finally:
        gate.set()
        await worker.close()

    assert [j.state for j in jobs] == [JobState.SUCCEEDED] * 4
    assert [j.result for j in jobs] == [{"job": job_id} for job_id in ids]
    assert late.state is JobState.SUCCEEDED
    for job in jobs:
        events = await store.list_events(after_sequence=0, job_id=job.id)
        assert [e.kind for e in events].count(EventKind.STARTED) == 1
        # The progress reported right before returning was stored before the result.
        assert job.progress.stage == "done"
        assert job.progress.message == "last words"

    for episode in ("claiming jobs", "renewing job leases", "recording outcomes"):
        began = [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING and r.getMessage().startswith(f"{episode} failed")
        ]
        assert len(began) == 1, (episode, [r.getMessage() for r in began])
        # An error the driver did not map is shown with its traceback, once.
        assert began[0].exc_info is not None, episode
        assert "no such table" in str(began[0].exc_info[1])
        ended = messages(caplog, level=logging.INFO, containing=f"{episode}: store reachable again")
        assert len(ended) == 1, (episode, ended)


async def test_a_draining_worker_keeps_trying_to_record_until_the_store_is_back(
    tmp_path: Path, store: SqliteJobStore, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG, logger="jobcontrol.worker")
    registry = Registry()
    started = asyncio.Event()
    gate = asyncio.Event()

    @registry.handler("t.gated")
    async def gated(ctx: JobContext) -> dict[str, Any]:
        started.set()
        await gate.wait()
        return {"done": True}

    worker = RunningWorker(
        store,
        registry,
        concurrency=1,
        lease_timeout=timedelta(seconds=60),
        drain_grace=timedelta(seconds=60),
    )
    try:
        job_id = await submit(store, "t.gated")
        await asyncio.wait_for(started.wait(), 10)
        rename_table(tmp_path / "jobs.db", "jobs", "jobs_away")
        gate.set()
        await wait_until_async(
            lambda: (
                bool(messages(caplog, level=logging.DEBUG, containing="recording outcomes"))
                or worker.task.done()
            ),
            timeout=20,
            what="recording to fail",
        )
        worker.stop.set()  # SIGTERM: drain while the outcome still waits for the store
        await wait_until_async(
            lambda: (
                bool(messages(caplog, level=logging.INFO, containing="draining: 1 jobs"))
                or worker.task.done()
            ),
            timeout=20,
            what="the drain to begin",
        )
        assert not worker.task.done(), "the worker stopped before the outcome was recorded"
        rename_table(tmp_path / "jobs.db", "jobs_away", "jobs")
        await asyncio.wait_for(worker.task, 30)  # raises what the worker raised
    finally:
        gate.set()
        if not worker.task.done():
            worker.stop_now.set()
            await asyncio.wait_for(asyncio.gather(worker.task, return_exceptions=True), 30)
    job = await store.get_job(job_id)
    assert (job.state, job.attempt, job.result) == (JobState.SUCCEEDED, 1, {"done": True})
    events = await store.list_events(after_sequence=0, job_id=job_id)
    assert [e.kind for e in events].count(EventKind.STARTED) == 1
    assert not messages(caplog, level=logging.WARNING, containing="will run again")
