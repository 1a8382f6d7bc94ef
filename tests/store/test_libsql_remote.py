"""The remote libSQL driver against a real sqld, not a stand-in for it.

Until these were written the remote driver had only met a Python imitation of sqld, and
on a real one every statement with parameters failed (ARGS_INVALID: the `libsql` SDK
sent positional arguments to `:name` placeholders). Every call here has a deadline
(asyncio.wait_for), so a driver that hangs fails the test instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3

from jobcontrol.jobs import JobSpec, JobState
from jobcontrol.store.libsql import LibsqlJobStore
from tests.sqld import SqldProcess

# Far longer than any store call takes on loopback: reaching it means the driver hung.
DEADLINE = 60.0


async def test_a_parameterized_write_lands_in_sqld_and_reads_back(sqld: SqldProcess) -> None:
    store = await asyncio.wait_for(LibsqlJobStore.open(sqld.url, auth_token=sqld.token), DEADLINE)
    try:
        spec = JobSpec(type="t", payload={"n": 1}, idempotency_key="key-1", labels={"a": "b"})
        created = await asyncio.wait_for(store.create_job(spec), DEADLINE)
        assert created.created
        read = await asyncio.wait_for(store.get_job(created.job.id), DEADLINE)
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
