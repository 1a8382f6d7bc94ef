"""Background duties of every server replica: reaping, retention, health, job counts.

Each store operation here is idempotent and transactional, so every replica can run
them at once; jitter keeps replicas from hitting the store in lock-step.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

from grpc_health.v1 import health, health_pb2

from jobcontrol.errors import StoreUnavailable
from jobcontrol.server.metrics import Metrics
from jobcontrol.store import JobStore

log = logging.getLogger(__name__)

SERVICE_NAME = "jobcontrol.v1.JobControl"
# Retention deletes this many finished jobs (and their events) per transaction,
# pausing between batches so other writers get the store.
PRUNE_BATCH = 1000
PRUNE_PAUSE = 0.05
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True, slots=True)
class HousekeepingConfig:
    reap_interval: float = 1.0
    worker_lost_after: timedelta = timedelta(seconds=60)
    retention: timedelta = timedelta(days=7)
    prune_interval: float = 3600.0
    health_interval: float = 1.0
    job_count_interval: float = 5.0


class Housekeeper:
    def __init__(
        self,
        store: JobStore,
        health_servicer: health.aio.HealthServicer,
        metrics: Metrics,
        config: HousekeepingConfig,
        *,
        primary: bool = True,
    ) -> None:
        """`primary`: run the reaper, retention and the job counts of /metrics here. Of
        the processes of one `--processes N` server only the first does: the others
        would repeat its work, and serve no /metrics."""
        self._store = store
        self._primary = primary
        self._health = health_servicer
        self._metrics = metrics
        self._config = config
        self._tasks: list[asyncio.Task[None]] = []
        self._reap_failing = False

    def start(self) -> None:
        c = self._config
        self._tasks = [
            asyncio.create_task(self._every(c.health_interval, self.check_health), name="health"),
        ]
        if self._primary:
            self._tasks += [
                asyncio.create_task(
                    self._every(c.job_count_interval, self.count_jobs), name="counts"
                ),
                asyncio.create_task(self._every(c.reap_interval, self.reap), name="reaper"),
                asyncio.create_task(self._every(c.prune_interval, self.prune), name="retention"),
            ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._health.enter_graceful_shutdown()

    async def _every(self, interval: float, duty: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await duty()
            except StoreUnavailable as error:
                log.warning("%s: %s", duty.__name__, error.message)
                await self._set_health(NOT_SERVING)
            except Exception:
                log.exception("%s failed", duty.__name__)
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))

    async def _set_health(self, status: int) -> None:
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)

    async def check_health(self) -> None:
        """SERVING while the store answers a ping and the reaper's last write transaction
        went through. A store that still reads but refuses writes (read-only, disk full)
        is not serving: without the second condition the ping would flip health back to
        SERVING between two failed reaps."""
        await self._store.ping()
        if not self._reap_failing:
            await self._set_health(SERVING)

    async def reap(self) -> None:
        try:
            result = await self._store.reap()
            lost = await self._store.mark_lost_workers(silent_for=self._config.worker_lost_after)
        except StoreUnavailable:
            self._reap_failing = True
            raise
        self._reap_failing = False
        if result.total:
            log.info(
                "reaped %d jobs (%d retried, %d failed, %d cancelled)",
                result.total,
                len(result.retried),
                len(result.failed),
                len(result.cancelled),
            )
        if lost:
            log.warning("marked %d silent workers LOST", len(lost), extra={"worker_ids": lost})

    async def prune(self) -> None:
        """Batch after batch until one comes back short: each batch is a transaction of
        at most PRUNE_BATCH jobs, so it holds locks briefly and a busy store keeps
        serving between batches, and a backlog (an hour of 10,000 jobs a minute) is
        cleared in one pass rather than one batch an hour."""
        jobs = events = workers = 0
        while True:
            result = await self._store.prune(older_than=self._config.retention, limit=PRUNE_BATCH)
            jobs, events, workers = (
                jobs + result.jobs,
                events + result.events,
                workers + result.workers,
            )
            if result.jobs < PRUNE_BATCH:
                break
            await asyncio.sleep(PRUNE_PAUSE)
        if jobs or workers:
            log.info("pruned %d jobs, %d events, %d workers", jobs, events, workers)

    async def count_jobs(self) -> None:
        self._metrics.set_job_counts(await self._store.count_jobs_by_state())
