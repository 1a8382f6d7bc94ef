"""The SQLite driver's own duties: migrations, WAL, lock waits and unavailability."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from jobcontrol.errors import StoreUnavailable
from jobcontrol.jobs import EventKind, JobError, JobSpec, JobState
from jobcontrol.store.schema import MIGRATIONS
from jobcontrol.store.sql import sqlite as sqlite_sql
from jobcontrol.store.sql.sqlite import CREATE_MIGRATIONS_TABLE
from jobcontrol.store.sqlite import SqliteDatabase, SqliteJobStore


async def test_migrations_are_recorded_and_applied_once(tmp_path: Path):
    path = tmp_path / "jobs.db"
    stores = await asyncio.gather(*(SqliteJobStore.open(path) for _ in range(4)))
    for store in stores:
        await store.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
    assert mode == "wal"


async def test_a_database_from_before_error_details_is_upgraded_with_its_events(tmp_path: Path):
    """Migration 5 adds `error_details` and replaces the event triggers: events written
    before it still decode (without details), and new ones carry the details."""
    path = tmp_path / "jobs.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(CREATE_MIGRATIONS_TABLE)
        for migration in MIGRATIONS[:4]:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, 0)",
                (migration.version, migration.name),
            )
        conn.execute(
            "INSERT INTO jobs (id, type, payload, state, priority, labels, attempt,"
            " max_attempts, create_us, update_us, run_after_us, progress_percent,"
            " progress_stage, progress_message, error_code, error_message, error_retryable,"
            " cancel_requested, cancel_reason, end_us, version, event_kind) VALUES"
            " ('01a22f78-0000-7000-8000-000000000001', 't', '{}', 'FAILED', 0, '{}', 1, 1,"
            " 1, 2, 1, 0, '', '', 'boom', 'old failure', 0, 0, '', 2, 1, 'FAILED')"
        )
    store = await SqliteJobStore.open(path)
    try:
        (old,) = await store.list_events(after_sequence=0)
        assert old.job.error == JobError("boom", "old failure", False)
        await store.create_job(JobSpec(type="t", max_attempts=1))
        (job,) = await store.claim_jobs(
            worker_id="w", types=["t"], limit=1, lease_timeout=timedelta(seconds=30)
        )
        assert job.lease_id is not None
        error = JobError("handler_error", "KeyError: 'k'", True, details="Traceback ...")
        await store.fail_job(job_id=job.id, lease_id=job.lease_id, error=error)
        new = (await store.list_events(after_sequence=0, job_id=job.id))[-1]
        assert new.job.error == error
        assert (await store.get_job(old.job.id)).error == old.job.error
    finally:
        await store.close()


async def test_events_written_as_objects_still_decode_beside_arrays(tmp_path: Path):
    """Migration 6 makes the triggers write the job as an array of its values: an event
    written before it (an object) decodes as before, in one listing with new ones."""
    path = tmp_path / "jobs.db"
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(CREATE_MIGRATIONS_TABLE)
        for migration in MIGRATIONS[:5]:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, 0)",
                (migration.version, migration.name),
            )
        conn.execute(
            "INSERT INTO jobs (id, type, payload, state, priority, labels, attempt,"
            " max_attempts, create_us, update_us, run_after_us, progress_percent,"
            " progress_stage, progress_message, cancel_requested, cancel_reason, version,"
            " event_kind) VALUES ('01a22f78-0000-7000-8000-000000000002', 't', '{\"n\":1}',"
            " 'PENDING', 3, '{\"team\":\"a\"}', 0, 2, 1, 1, 1, 0, '', '', 0, '', 1,"
            " 'SUBMITTED')"
        )
    store = await SqliteJobStore.open(path)
    try:
        (claimed,) = await store.claim_jobs(
            worker_id="w", types=["t"], limit=1, lease_timeout=timedelta(seconds=30)
        )
        assert claimed.lease_id is not None
        done = await store.complete_job(
            job_id=claimed.id, lease_id=claimed.lease_id, result={"ok": True}
        )
        old, started, succeeded = await store.list_events(after_sequence=0)
    finally:
        await store.close()
    assert old.kind == EventKind.SUBMITTED
    assert (old.job.id, old.job.payload, old.job.labels, old.job.priority) == (
        claimed.id,
        {"n": 1},
        {"team": "a"},
        3,
    )
    assert old.job.state == JobState.PENDING
    assert old.job.error is None
    assert (started.kind, started.job) == (EventKind.STARTED, claimed)
    assert (succeeded.kind, succeeded.job) == (EventKind.SUCCEEDED, done)
    assert [old.sequence, started.sequence, succeeded.sequence] == [1, 2, 3]


async def test_missing_directory_is_store_unavailable(tmp_path: Path):
    with pytest.raises(StoreUnavailable, match="unavailable"):
        await SqliteJobStore.open(tmp_path / "no" / "such" / "dir" / "jobs.db")


async def test_a_lock_held_too_long_is_unavailable_then_recovers(tmp_path: Path):
    path = tmp_path / "jobs.db"
    store = await SqliteJobStore.open(path, busy_timeout=0.05, lock_wait=0.3)
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.create_job(JobSpec(type="t"))
        assert (await store.list_events(after_sequence=0)) == []  # reads still work in WAL
        blocker.execute("ROLLBACK")
        submitted = await store.create_job(JobSpec(type="t"))
        assert (await store.get_job(submitted.job.id)).id == submitted.job.id
    finally:
        blocker.close()
        await store.close()


async def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path):
    path = tmp_path / "jobs.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable):
        await SqliteJobStore.open(path)


async def test_quick_calls_run_on_the_callers_thread_unless_they_would_wait(tmp_path: Path):
    path = tmp_path / "jobs.db"
    db = SqliteDatabase(path)
    blocker = sqlite3.connect(path, isolation_level=None)

    async def thread_name(tx: object) -> str:
        return threading.current_thread().name

    try:
        here = threading.current_thread().name
        assert await db.write(thread_name, small=True) == here
        assert await db.read(thread_name, small=True) == here
        assert (await db.write(thread_name)).startswith("jobcontrol-sqlite")
        blocker.execute("BEGIN IMMEDIATE")
        waiting = asyncio.create_task(db.write(thread_name, small=True))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # the lock is taken: it waits, on the driver thread
        blocker.execute("ROLLBACK")
        assert (await asyncio.wait_for(waiting, 10)).startswith("jobcontrol-sqlite")
        assert await db.write(thread_name, small=True) == here
    finally:
        blocker.close()
        await db.close()


async def test_a_quick_call_waits_for_the_thread_even_if_the_caller_before_gave_up(
    tmp_path: Path,
):
    """A task cancelled while its call runs on the driver thread stops waiting, but the
    thread still holds the connection: a small operation then must not use it inline."""
    db = SqliteDatabase(tmp_path / "jobs.db")
    started = threading.Event()

    async def slow(tx: object) -> None:
        started.set()
        time.sleep(0.3)  # noqa: ASYNC251 - holds the driver thread, as a slow statement does

    async def thread_name(tx: object) -> str:
        return threading.current_thread().name

    try:
        abandoned = asyncio.create_task(db.write(slow))
        await asyncio.to_thread(started.wait, 10)
        abandoned.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await abandoned
        assert (await db.write(thread_name, small=True)).startswith("jobcontrol-sqlite")
        assert await db.write(thread_name, small=True) == threading.current_thread().name
    finally:
        await db.close()


def _vm_steps(conn: sqlite3.Connection, sql: str, params: dict[str, object]) -> int:
    """How many virtual-machine steps SQLite takes to run `sql`: it grows with the rows a
    statement walks, without reading a clock."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    conn.set_progress_handler(count, 1)
    try:
        conn.execute(sql, params).fetchall()
    finally:
        conn.set_progress_handler(None, 1)
    return steps


async def test_the_claim_and_the_claimable_probe_do_not_walk_a_backlog_of_another_type(
    tmp_path: Path,
):
    """Pending jobs of a type no worker asks for (a backlog of renders while the render
    workers are down) must not slow the claims of other types: each looks only into the
    wanted types' range of jobs_claimable. The old walk over every pending job in claim
    order took ~50 ms per claim, under the write lock, behind 100,000 of them."""
    path = tmp_path / "jobs.db"
    store = await SqliteJobStore.open(path)
    try:
        await store.create_jobs([JobSpec(type="audio") for _ in range(5)])
        steps: dict[int, dict[str, int]] = {}
        for backlog in (1_000, 2_000):
            await store.create_jobs([JobSpec(type="render") for _ in range(1_000)])
            with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
                params = {"types": '["audio", "video"]', "now_us": 2**62, "limit": 8}
                claim = {**params, "worker_id": "w", "lease_expire_us": 2**62}
                conn.execute("BEGIN")  # the claim is rolled back: it only has to run
                claim_steps = _vm_steps(conn, sqlite_sql.CLAIM_JOBS, claim)
                conn.execute("ROLLBACK")
                steps[backlog] = {
                    "claim": claim_steps,
                    "probe": _vm_steps(conn, sqlite_sql.HAS_CLAIMABLE_JOBS, params),
                    "probe, nothing pending": _vm_steps(
                        conn, sqlite_sql.HAS_CLAIMABLE_JOBS, {**params, "types": '["video"]'}
                    ),
                }
        (audio,) = await store.claim_jobs(
            worker_id="w", types=["audio", "video"], limit=1, lease_timeout=timedelta(minutes=1)
        )
    finally:
        await store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert "jobs_claim_order" not in indexes  # migration 10: nothing reads it now
    assert steps[1_000] == steps[2_000], steps
    assert max(steps[2_000].values()) < 5_000, steps
    assert audio.type == "audio"
