"""What only the remote libSQL driver meets: another client holding sqld's write lock.

sqld does not answer a write that finds the lock taken with SQLITE_BUSY: it holds the
statement while the other transaction runs, for up to 5 s, and then rolls that
transaction back and lets the waiting statement have the lock ("Transaction timed
out" to the holder). A driver that gives up on a request sooner, or reports the wait as
a failure, turns every long transaction elsewhere into StoreUnavailable here.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from jobcontrol.jobs import JobSpec, JobState
from jobcontrol.store.libsql import LibsqlJobStore
from tests.sqld import SqldProcess, hrana_pipeline

DEADLINE = 60.0  # far past sqld's 5 s: reaching it means the driver hung


def execute(sql: str, **named: str) -> dict[str, object]:
    args = [{"name": f":{k}", "value": {"type": "text", "value": v}} for k, v in named.items()]
    return {"type": "execute", "stmt": {"sql": sql, "named_args": args}}


async def test_a_write_waits_out_another_clients_transaction_instead_of_failing(
    sqld: SqldProcess,
) -> None:
    store = await LibsqlJobStore.open(sqld.url, auth_token=sqld.token)
    try:
        job = (await store.create_job(JobSpec(type="t"))).job
        (claimed,) = await store.claim_jobs(
            worker_id="w", types=["t"], limit=1, lease_timeout=timedelta(minutes=1)
        )
        assert claimed.lease_id is not None
        # Another client takes the write lock on a Hrana stream of its own and keeps its
        # transaction open, with a change to the same job in it.
        holder = hrana_pipeline(
            sqld.url,
            [
                execute("BEGIN IMMEDIATE"),
                execute("UPDATE jobs SET priority = 99 WHERE id = :id", id=job.id),
            ],
            token=sqld.token,
        )
        assert [r["type"] for r in holder["results"]] == ["ok", "ok"], holder
        completion = store.complete_job(
            job_id=job.id, lease_id=claimed.lease_id, result={"ok": True}
        )
        done = await asyncio.wait_for(completion, DEADLINE)
        assert done.state is JobState.SUCCEEDED
        # The completion had to wait for the lock: sqld took it from the holder.
        commit = hrana_pipeline(
            sqld.url,
            [execute("COMMIT"), {"type": "close"}],
            token=sqld.token,
            baton=holder["baton"],
        )
        assert commit["results"][0]["type"] == "error", commit
        assert commit["results"][0]["error"]["code"] == "TRANSACTION_TIMEOUT", commit
        stored = await store.get_job(job.id)
        assert stored.state is JobState.SUCCEEDED
        assert stored.result == {"ok": True}
        assert stored.priority == 0  # the holder's change was rolled back
    finally:
        await store.close()
