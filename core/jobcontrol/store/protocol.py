"""What every store driver offers: the `JobStore` protocol and the values it returns.

Every method that changes a job runs as one transaction that also appends the event
describing the change to `job_events`. Worker writes name the lease they hold; a stale
lease changes nothing and raises `LeaseLost`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from jobcontrol.jobs import Job, JobError, JobEvent, JobSpec, JobState, Progress
from jobcontrol.retry import RetryPolicy
from jobcontrol.workers import Worker, WorkerInfo

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_BATCH_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Submitted:
    job: Job
    created: bool


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Empty fields match everything; fields combine with AND."""

    states: frozenset[JobState] = frozenset()
    types: frozenset[str] = frozenset()
    labels: Mapping[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        """Stable digest, so a page token can only be reused with the filter it came from."""
        canonical = json.dumps(
            [sorted(self.states), sorted(self.types), sorted(self.labels.items())],
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[Job]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class Completion:
    """A worker's successful result for the attempt its lease names."""

    job_id: str
    lease_id: str
    result: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class HeartbeatAck:
    cancel_requested: bool
    lease_expire_time: datetime


@dataclass(frozen=True, slots=True)
class ReapResult:
    """Jobs the reaper moved, by what became of them."""

    retried: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.retried) + len(self.failed) + len(self.cancelled)


@dataclass(frozen=True, slots=True)
class PruneResult:
    jobs: int
    events: int
    workers: int


class ChangeKind(StrEnum):
    """What a pushed notification says changed."""

    PENDING = "pending"  # a job became claimable
    CANCEL = "cancel"  # a running job's cancellation was requested
    EVENT = "event"  # any other change with an event


class StoreChanges(Protocol):
    """Notifications of committed changes, for a store that pushes them (PostgreSQL's
    LISTEN). They only say when to read again, never what to deliver."""

    @property
    def live(self) -> bool:
        """Notifications are arriving now; when False, poll at the usual interval."""
        ...

    def subscribe(self, callback: Callable[[ChangeKind | None], None]) -> Callable[[], None]:
        """`callback(kind)` on the event loop per notification, `callback(None)` when
        anything may have changed unseen (on every connect); returns the unsubscriber."""
        ...


class JobStore(Protocol):
    @property
    def changes(self) -> StoreChanges | None:
        """Pushed notifications, or None for a store that must be polled."""
        ...

    # Clients
    async def create_job(self, spec: JobSpec) -> Submitted: ...

    async def create_jobs(self, specs: Sequence[JobSpec]) -> list[Submitted]:
        """All or nothing, in one transaction."""
        ...

    async def get_job(self, job_id: str) -> Job: ...

    async def list_jobs(
        self, *, job_filter: JobFilter, page_size: int = 0, page_token: str = ""
    ) -> JobPage: ...

    async def cancel_job(self, job_id: str, *, reason: str = "") -> Job: ...

    async def retry_job(self, job_id: str) -> Job: ...

    async def queue_positions(self, job_ids: Sequence[str]) -> dict[str, int]:
        """Positions of the PENDING jobs among these, in one query."""
        ...

    # Workers
    async def claim_jobs(
        self, *, worker_id: str, types: Sequence[str], limit: int, lease_timeout: timedelta
    ) -> list[Job]: ...

    async def has_claimable_jobs(self, *, types: Sequence[str]) -> bool:
        """Whether `claim_jobs` would find work now: a read, for cheap idle polling."""
        ...

    async def heartbeat_job(
        self, *, job_id: str, lease_id: str, lease_timeout: timedelta
    ) -> HeartbeatAck: ...

    async def heartbeat_jobs(
        self, leases: Mapping[str, str], *, lease_timeout: timedelta
    ) -> dict[str, HeartbeatAck]:
        """Renew many leases (job id -> lease id) in one statement. Only the leases still
        held are in the answer: a job missing from it was lost."""
        ...

    async def report_progress(self, *, job_id: str, lease_id: str, progress: Progress) -> Job: ...

    async def complete_job(
        self, *, job_id: str, lease_id: str, result: Mapping[str, Any]
    ) -> Job: ...

    async def complete_jobs(self, completions: Sequence[Completion]) -> list[bool]:
        """Many successes in one statement, each fenced by its own lease: False where that
        lease was lost. A result that is not valid JSON rejects the whole batch
        (InvalidArgument naming it) before anything is written."""
        ...

    async def fail_job(
        self,
        *,
        job_id: str,
        lease_id: str,
        error: JobError,
        retry_policy: RetryPolicy | None = None,
        max_attempts: int | None = None,
    ) -> Job:
        """Retried after a backoff (`retry_policy`, else the store's) while attempts are
        left (`max_attempts` replaces the job's when given) and the error is retryable."""
        ...

    async def record_cancelled(self, *, job_id: str, lease_id: str) -> Job: ...

    async def time_out_job(
        self,
        *,
        job_id: str,
        lease_id: str,
        retry_policy: RetryPolicy | None = None,
        max_attempts: int | None = None,
        attempt_timeout: timedelta | None = None,
    ) -> Job:
        """The worker stopped the handler at the attempt's deadline: the job's timeout,
        else `attempt_timeout` (its handler's). Retried as `fail_job` is."""
        ...

    async def release_job(self, *, job_id: str, lease_id: str) -> Job: ...

    async def list_cancel_requests(self, *, worker_id: str) -> list[str]:
        """Ids of this worker's running jobs whose cancellation was requested."""
        ...

    async def register_worker(self, info: WorkerInfo) -> Worker: ...

    async def heartbeat_worker(self, worker_id: str) -> Worker: ...

    async def drain_worker(self, worker_id: str) -> Worker: ...

    async def deregister_worker(self, worker_id: str) -> Worker: ...

    async def list_workers(self, *, include_stopped: bool = False) -> list[Worker]: ...

    async def served_job_types(self) -> frozenset[str]:
        """The job types some ACTIVE worker claims."""
        ...

    # Events
    async def list_events(
        self, *, after_sequence: int, limit: int = 1000, job_id: str | None = None
    ) -> list[JobEvent]: ...

    async def list_events_of_jobs(
        self,
        job_ids: Sequence[str],
        *,
        after_sequence: int,
        through_sequence: int,
        limit: int = 1000,
    ) -> list[JobEvent]:
        """The events of these jobs with sequence in (after_sequence, through_sequence],
        oldest first: for a reader that follows a few jobs, without reading every
        other job's events."""
        ...

    async def last_sequence(self, *, job_id: str | None = None) -> int:
        """The highest sequence issued (for one job: of its events)."""
        ...

    async def latest_events(self, job_ids: Sequence[str]) -> dict[str, JobEvent]:
        """Each job's newest event, with queue positions for PENDING jobs: consistent
        snapshots for many watchers in one read."""
        ...

    async def count_jobs_by_state(self) -> dict[JobState, int]: ...

    # Housekeeping
    async def reap(self, *, limit: int = 500) -> ReapResult:
        """Expired leases, timed-out attempts, cancelled jobs of dead workers."""
        ...

    async def mark_lost_workers(self, *, silent_for: timedelta) -> list[str]: ...

    async def prune(self, *, older_than: timedelta, limit: int = 1000) -> PruneResult: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the store answers."""
        ...

    async def close(self) -> None: ...
