"""A stand-in worker process: drives one job through the store, as a real worker would.

Run as `python -m tests.server.job_driver DB JOB_ID`; it claims the job, reports
progress, fails once (retryable), claims it again and completes it. It writes only to
the store, so the server learns of every change through its event tailer.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import timedelta

from jobcontrol.jobs import JobError, Progress
from jobcontrol.retry import RetryPolicy
from jobcontrol.store.sqlite import SqliteJobStore

LEASE = timedelta(seconds=30)


async def drive(db_path: str, job_id: str) -> None:
    quick_retry = RetryPolicy(base=timedelta(milliseconds=50), cap=timedelta(milliseconds=50))
    store = await SqliteJobStore.open(db_path, retry_policy=quick_retry)
    try:
        job = await _claim(store, job_id)
        for percent in (10, 40):
            await store.report_progress(
                job_id=job_id, lease_id=job, progress=Progress(percent, "work")
            )
        await store.fail_job(
            job_id=job_id, lease_id=job, error=JobError("flaky", "try again", retryable=True)
        )
        job = await _claim(store, job_id)
        await store.report_progress(job_id=job_id, lease_id=job, progress=Progress(90, "finish"))
        await store.complete_job(job_id=job_id, lease_id=job, result={"ok": True})
    finally:
        await store.close()


async def _claim(store: SqliteJobStore, job_id: str) -> str:
    """Claim until our job comes up (after its retry backoff), with a deadline."""
    for _ in range(1000):
        claimed = await store.claim_jobs(
            worker_id="driver", types=["demo.sleep"], limit=1, lease_timeout=LEASE
        )
        if claimed:
            assert claimed[0].id == job_id, claimed[0].id
            lease = claimed[0].lease_id
            assert lease is not None
            return lease
        await asyncio.sleep(0.01)
    raise SystemExit("the job never became claimable")


if __name__ == "__main__":
    asyncio.run(drive(sys.argv[1], sys.argv[2]))
