"""Retention clears a backlog in one pass, in bounded batches."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from jobcontrol.jobs import JobSpec
from jobcontrol.server import housekeeping
from jobcontrol.server.housekeeping import Housekeeper, HousekeepingConfig
from jobcontrol.store.protocol import JobFilter, PruneResult
from jobcontrol.store.sqlite import SqliteJobStore
from tests.conftest import ManualClock


class BatchCountingStore(SqliteJobStore):
    batches: list[int]

    async def prune(self, *, older_than: timedelta, limit: int = 1000) -> PruneResult:
        result = await super().prune(older_than=older_than, limit=limit)
        self.batches.append(result.jobs)
        return result


async def test_retention_prunes_batch_after_batch_until_the_backlog_is_gone(
    tmp_path: Path, clock: ManualClock, monkeypatch: Any
):
    monkeypatch.setattr(housekeeping, "PRUNE_BATCH", 40)
    store = await BatchCountingStore.open(tmp_path / "jobs.db", clock=clock)
    store.batches = []
    try:
        jobs = await store.create_jobs([JobSpec(type="t")] * 100)
        for submitted in jobs:
            await store.cancel_job(submitted.job.id)  # finished: CANCELLED
        clock.advance(timedelta(days=8))
        keeper = Housekeeper(
            store,
            health_servicer=None,  # type: ignore[arg-type]  # prune does not touch health
            metrics=None,  # type: ignore[arg-type]
            config=HousekeepingConfig(retention=timedelta(days=7)),
        )
        await keeper.prune()
        assert store.batches == [40, 40, 20]
        assert (await store.list_jobs(job_filter=JobFilter())).jobs == []
    finally:
        await store.close()
