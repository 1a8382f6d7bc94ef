"""What only the remote libSQL driver meets: another client holding sqld's connection
and its write lock in an open transaction.

Our sqld serves one connection at a time (docs/ops.md), so that client's stream holds
the only one: sqld turns every other request away with HTTP 429 after waiting 1 s, until
the stream ends, by COMMIT, by close, or by sqld expiring it after 10 s idle (which
rolls its transaction back). A driver that reports the 429 as a failure, or gives up
sooner, turns every long transaction elsewhere into StoreUnavailable here.
"""

from __future__ import annotations

import asyncio
import urllib.error
from datetime import timedelta

import pytest

from jobcontrol.jobs import JobSpec, JobState
from jobcontrol.store.libsql import LibsqlJobStore
from tests.sqld import SqldProcess, hrana_pipeline

DEADLINE = 60.0  # far past sqld's 10 s stream expiry: reaching it means the driver hung


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
        # The holder's stream had sqld's only connection (one at a time, docs/ops.md), so
        # sqld turned the completion away (429) until it expired that idle stream (10 s),
        # rolling its transaction back; the store ran the completion again meanwhile.
        with pytest.raises(urllib.error.HTTPError) as refused:
            hrana_pipeline(
                sqld.url,
                [execute("COMMIT"), {"type": "close"}],
                token=sqld.token,
                baton=holder["baton"],
            )
        assert "STREAM_EXPIRED" in refused.value.read().decode()
        stored = await store.get_job(job.id)
        assert stored.state is JobState.SUCCEEDED
        assert stored.result == {"ok": True}
        assert stored.priority == 0  # the holder's change was rolled back
    finally:
        await store.close()
