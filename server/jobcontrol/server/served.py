"""Which job types live workers serve, so that a job nobody will run does not wait in
silence: `Job.unserved` on PENDING jobs, SubmitJob's warnings, and the refusal of
`--reject-unserved-types`."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Iterable

from jobcontrol.jobs import Job, JobEvent, JobState
from jobcontrol.store import JobStore

MAX_AGE_SECONDS = 1.0


class ServedTypes:
    """The job types ACTIVE workers serve, read from the store at most once every
    `max_age` seconds and shared by every caller meanwhile: submits are the hot path
    and must not cost a store read each. So a worker that has just registered, or just
    stopped, may take up to `max_age` to count (or stop counting); one that dies
    without stopping counts until the reaper marks it LOST (`--worker-lost-after`)."""

    def __init__(self, store: JobStore, *, max_age: float = MAX_AGE_SECONDS) -> None:
        self._store = store
        self._max_age = max_age
        self._types: frozenset[str] = frozenset()
        self._read_at = -float("inf")
        self._reading: asyncio.Task[frozenset[str]] | None = None

    async def get(self) -> frozenset[str]:
        """Raises StoreUnavailable when a due read fails."""
        if time.monotonic() - self._read_at < self._max_age:
            return self._types
        if self._reading is None:
            self._reading = asyncio.create_task(self._read(), name="served-job-types")
        # Shielded: a caller that goes away must not cancel the read the others await.
        return await asyncio.shield(self._reading)

    async def _read(self) -> frozenset[str]:
        started = time.monotonic()
        try:
            types = await self._store.served_job_types()
        finally:
            self._reading = None
        self._types, self._read_at = types, started
        return types


def is_unserved(job: Job, served: frozenset[str]) -> bool:
    """Only a PENDING job can be unserved: one that has run or ended needs no worker."""
    return job.state is JobState.PENDING and job.type not in served


def mark(job: Job, served: frozenset[str]) -> Job:
    """The job with `unserved` set as `served` says."""
    unserved = is_unserved(job, served)
    return job if job.unserved == unserved else dataclasses.replace(job, unserved=unserved)


def mark_event(event: JobEvent, served: frozenset[str]) -> JobEvent:
    job = mark(event.job, served)
    return event if job is event.job else dataclasses.replace(event, job=job)


def warnings(jobs: Iterable[Job]) -> list[str]:
    """One sentence per type of the unserved jobs among these, for the submitter."""
    counts = Counter(job.type for job in jobs if job.unserved)
    return [_warning(job_type, count) for job_type, count in counts.items()]


def _warning(job_type: str, count: int) -> str:
    waits = "the job waits" if count == 1 else f"the {count} jobs of that type wait"
    return (
        f'no live worker serves job type "{job_type}"; {waits} until one registers '
        "(ListWorkers shows the types workers serve)"
    )
