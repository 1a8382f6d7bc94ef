"""What only the remote libSQL driver does: waiting out another writer's lock."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

from jobcontrol.jobs import JobSpec, JobState
from jobcontrol.store.libsql import LibsqlJobStore
from tests.hrana_server import HranaProcess


async def test_an_autocommit_write_refused_as_busy_is_retried_not_reported(tmp_path: Path):
    """A write that SQLite refuses with SQLITE_BUSY never ran, so running it again is safe:
    the completion waits out the lock instead of failing as StoreUnavailable."""
    server = HranaProcess(tmp_path / "remote.db", busy_timeout=0.05).start()
    store = await LibsqlJobStore.open(server.url, lock_wait=30)
    blocker = sqlite3.connect(tmp_path / "remote.db", isolation_level=None)
    try:
        await store.create_job(JobSpec(type="t"))
        (job,) = await store.claim_jobs(
            worker_id="w", types=["t"], limit=1, lease_timeout=timedelta(minutes=1)
        )
        assert job.lease_id is not None
        blocker.execute("BEGIN IMMEDIATE")
        completing = asyncio.create_task(
            store.complete_job(job_id=job.id, lease_id=job.lease_id, result={"ok": True})
        )
        await asyncio.sleep(0.5)  # the lock is held for ten of the server's busy timeouts
        assert not completing.done()
        blocker.execute("ROLLBACK")
        done = await asyncio.wait_for(completing, 30)
        assert done.state is JobState.SUCCEEDED
        assert (await store.get_job(job.id)).result == {"ok": True}
    finally:
        blocker.close()
        await store.close()
        server.stop()
