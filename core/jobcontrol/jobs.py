"""The job model and its state machine: pure values and transitions, no SQL, no gRPC.

Every change to a job is one function here that returns the new job and the kind of
event that describes the change; the store persists both in one transaction. The store's
atomic claim statement mirrors `start` (it must run as one SQL statement), and a test
checks that the two agree.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from jobcontrol.errors import InvalidTransition
from jobcontrol.retry import DEFAULT_RETRY_POLICY, RetryPolicy

DEFAULT_MAX_ATTEMPTS = 3


class JobState(enum.StrEnum):
    """Where a job is in its life, and who moves it on.

    PENDING: a worker's claim moves it to RUNNING; CancelJob to CANCELLED.
    RUNNING: its worker moves it to SUCCEEDED, FAILED, CANCELLED or back to PENDING
      (retry with backoff, or release on shutdown); the reaper does the same when the
      lease expires or the job's timeout passes.
    SUCCEEDED: terminal; nobody moves it.
    FAILED, CANCELLED: terminal; only RetryJob moves them back to PENDING.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

ALLOWED_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {
            JobState.RUNNING,  # progress, cancel requested
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.PENDING,  # retry after backoff, release, lease expired
        }
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset({JobState.PENDING}),
    JobState.CANCELLED: frozenset({JobState.PENDING}),
}


class EventKind(enum.StrEnum):
    """What happened to a job. SNAPSHOT and QUEUE_POSITION are never stored: the server
    sends them to watchers, carrying the sequence of the job's latest stored event."""

    SNAPSHOT = "SNAPSHOT"
    SUBMITTED = "SUBMITTED"
    STARTED = "STARTED"
    PROGRESS = "PROGRESS"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    RETRY_SCHEDULED = "RETRY_SCHEDULED"
    RELEASED = "RELEASED"
    RETRIED = "RETRIED"
    QUEUE_POSITION = "QUEUE_POSITION"


class ErrorCode(enum.StrEnum):
    """Codes the system itself writes into `JobError.code`; handlers may use their own."""

    HANDLER_ERROR = "handler_error"
    WORKER_LOST = "worker_lost"
    DEADLINE_EXCEEDED = "deadline_exceeded"


@dataclass(frozen=True, slots=True)
class Progress:
    percent: float = 0.0
    stage: str = ""
    message: str = ""


@dataclass(frozen=True, slots=True)
class JobError:
    code: str
    message: str
    retryable: bool
    details: str = ""


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a client asks for. Validated by `jobcontrol.validation.validate_spec`."""

    type: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    priority: int = 0
    idempotency_key: str | None = None
    run_after: datetime | None = None
    delay: timedelta | None = None
    max_attempts: int | None = None
    timeout: timedelta | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    type: str
    payload: Mapping[str, Any]
    state: JobState
    priority: int
    labels: Mapping[str, str]
    attempt: int
    max_attempts: int
    create_time: datetime
    update_time: datetime
    run_after: datetime
    progress: Progress = Progress()
    result: Mapping[str, Any] | None = None
    error: JobError | None = None
    cancel_requested: bool = False
    cancel_reason: str = ""
    worker_id: str | None = None
    lease_id: str | None = None
    lease_expire_time: datetime | None = None
    timeout: timedelta | None = None
    idempotency_key: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    queue_position: int | None = None
    # Not stored: the server sets it on PENDING jobs whose type no live worker serves.
    unserved: bool = False

    @property
    def is_terminal(self) -> bool:
        return self.state.is_terminal

    @property
    def deadline(self) -> datetime | None:
        """When the running attempt must have finished: the worker stops its handler
        then, and the reaper fails the attempt if the worker did not."""
        if self.state is not JobState.RUNNING or self.timeout is None or self.start_time is None:
            return None
        return self.start_time + self.timeout


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One stored change: `sequence` is global and strictly increasing."""

    sequence: int
    kind: EventKind
    time: datetime
    job: Job


Change = tuple[Job, EventKind]


def _move(job: Job, to: JobState, now: datetime, **changes: Any) -> Job:
    if to not in ALLOWED_TRANSITIONS[job.state]:
        raise InvalidTransition(
            f"job {job.id} is {job.state} and cannot become {to}"
            + (" (only RetryJob changes a finished job)" if job.is_terminal else "")
        )
    return dataclasses.replace(job, state=to, update_time=now, **changes)


def _require(job: Job, state: JobState, action: str) -> None:
    """Transitions that share a target state (RUNNING -> RUNNING for progress, PENDING ->
    RUNNING for a claim) must also start from the right state."""
    if job.state is not state:
        raise InvalidTransition(f"job {job.id} is {job.state}; only a {state} job can {action}")


def submit(spec: JobSpec, *, job_id: str, now: datetime) -> Change:
    run_after = spec.run_after or (now + spec.delay if spec.delay else now)
    job = Job(
        id=job_id,
        type=spec.type,
        payload=dict(spec.payload),
        state=JobState.PENDING,
        priority=spec.priority,
        labels=dict(spec.labels),
        attempt=0,
        max_attempts=spec.max_attempts or DEFAULT_MAX_ATTEMPTS,
        create_time=now,
        update_time=now,
        run_after=run_after,
        timeout=spec.timeout,
        idempotency_key=spec.idempotency_key,
    )
    return job, EventKind.SUBMITTED


def start(
    job: Job, *, worker_id: str, lease_id: str, lease_expire_time: datetime, now: datetime
) -> Change:
    """A claim: a new attempt with a fresh lease (the fencing token)."""
    _require(job, JobState.PENDING, "be claimed")
    return _move(
        job,
        JobState.RUNNING,
        now,
        attempt=job.attempt + 1,
        worker_id=worker_id,
        lease_id=lease_id,
        lease_expire_time=lease_expire_time,
        start_time=now,
        progress=Progress(),
    ), EventKind.STARTED


def report_progress(job: Job, progress: Progress, *, now: datetime) -> Change:
    _require(job, JobState.RUNNING, "report progress")
    return _move(job, JobState.RUNNING, now, progress=progress), EventKind.PROGRESS


def request_cancel(job: Job, *, reason: str, now: datetime) -> Change | None:
    """CancelJob. Returns None when there is nothing to change (already cancelled, or
    cancellation already requested)."""
    if job.state is JobState.CANCELLED or (job.state is JobState.RUNNING and job.cancel_requested):
        return None
    if job.state is JobState.PENDING:
        return _finish(job, JobState.CANCELLED, now, cancel_reason=reason), EventKind.CANCELLED
    if job.state is JobState.RUNNING:
        return _move(
            job, JobState.RUNNING, now, cancel_requested=True, cancel_reason=reason
        ), EventKind.CANCEL_REQUESTED
    raise InvalidTransition(f"job {job.id} already finished as {job.state}; it cannot be cancelled")


def succeed(job: Job, result: Mapping[str, Any], *, now: datetime) -> Change:
    return _finish(
        job, JobState.SUCCEEDED, now, result=dict(result), progress=_full(job.progress)
    ), EventKind.SUCCEEDED


def fail(
    job: Job,
    error: JobError,
    *,
    now: datetime,
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    max_attempts: int | None = None,
) -> Change:
    """An attempt failed: back to PENDING after a backoff while attempts are left and the
    error is retryable, else FAILED. A job whose cancellation was requested is not run
    again: it is cancelled, keeping the error. `max_attempts` (the worker's handler
    setting for the job's type) replaces the job's, and is stored so the job shows the
    limit that decided."""
    _require(job, JobState.RUNNING, "fail")
    if max_attempts is not None:
        job = dataclasses.replace(job, max_attempts=max_attempts)
    if error.retryable and job.attempt < job.max_attempts:
        if job.cancel_requested:
            return _finish(job, JobState.CANCELLED, now, error=error), EventKind.CANCELLED
        return _move(
            job,
            JobState.PENDING,
            now,
            error=error,
            run_after=now + policy.delay(max(job.attempt, 1)),
            lease_id=None,
            lease_expire_time=None,
        ), EventKind.RETRY_SCHEDULED
    return _finish(job, JobState.FAILED, now, error=error), EventKind.FAILED


def confirm_cancelled(job: Job, *, now: datetime) -> Change:
    """The worker stopped the handler (normally after a cancel request)."""
    _require(job, JobState.RUNNING, "be confirmed cancelled by its worker")
    return _finish(job, JobState.CANCELLED, now), EventKind.CANCELLED


def release(job: Job, *, now: datetime) -> Change:
    """A draining worker hands the job back; the attempt is not charged. A job whose
    cancellation was requested is cancelled instead: nobody wants it run again."""
    _require(job, JobState.RUNNING, "be released")
    if job.cancel_requested:
        return confirm_cancelled(job, now=now)
    return _move(
        job,
        JobState.PENDING,
        now,
        attempt=job.attempt - 1,
        run_after=now,
        lease_id=None,
        lease_expire_time=None,
        progress=Progress(),
    ), EventKind.RELEASED


def retry(job: Job, *, now: datetime) -> Change:
    """RetryJob: a finished job runs again; at least one more attempt is granted."""
    if job.state not in (JobState.FAILED, JobState.CANCELLED):
        raise InvalidTransition(
            f"job {job.id} is {job.state}; only FAILED or CANCELLED jobs can be retried"
        )
    return _move(
        job,
        JobState.PENDING,
        now,
        max_attempts=max(job.max_attempts, job.attempt + 1),
        run_after=now,
        end_time=None,
        cancel_requested=False,
        cancel_reason="",
        lease_id=None,
        lease_expire_time=None,
        progress=Progress(),
    ), EventKind.RETRIED


def reap(
    job: Job,
    *,
    worker_gone: bool,
    now: datetime,
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
) -> Change | None:
    """The reaper's decision for a RUNNING job; None while the job is in good hands.

    An expired lease means the worker is presumed dead; a passed deadline means the
    worker did not stop the handler in time. A cancellation requested of a job in
    either case, or whose worker stopped or was lost, is confirmed: nobody wants it
    run again.
    """
    _require(job, JobState.RUNNING, "be reaped")
    lease_expired = job.lease_expire_time is not None and job.lease_expire_time < now
    past_deadline = job.deadline is not None and job.deadline < now
    if job.cancel_requested and (worker_gone or lease_expired or past_deadline):
        return confirm_cancelled(job, now=now)
    if lease_expired:
        error = JobError(ErrorCode.WORKER_LOST, "worker lost: its lease expired", retryable=True)
        return fail(job, error, now=now, policy=policy)
    if past_deadline:
        return time_out(job, now=now, policy=policy)
    return None


def time_out(
    job: Job,
    *,
    now: datetime,
    policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    max_attempts: int | None = None,
    attempt_timeout: timedelta | None = None,
) -> Change:
    """The attempt ran past its timeout (the job's, else `attempt_timeout`: its
    handler's for the type): whether its worker stopped it or the reaper found it
    overdue, the job gets the same error."""
    limit = job.timeout or attempt_timeout
    seconds = limit.total_seconds() if limit else 0
    error = JobError(
        ErrorCode.DEADLINE_EXCEEDED, f"attempt ran past its timeout of {seconds:g}s", True
    )
    return fail(job, error, now=now, policy=policy, max_attempts=max_attempts)


def _finish(job: Job, to: JobState, now: datetime, **changes: Any) -> Job:
    return _move(
        job, to, now, end_time=now, lease_expire_time=None, cancel_requested=False, **changes
    )


def _full(progress: Progress) -> Progress:
    """A finished job's progress: 100%, and the handler's last words only if it said
    them at 100% (a "step 3/4" left from the middle of the work would be stale)."""
    if progress.percent >= 100:
        return progress
    return Progress(percent=100.0)
