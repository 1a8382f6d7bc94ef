"""Each unary RPC as both client flavours make it: the request, whether repeating it is
safe, and how its answer becomes domain values.

The sync and asyncio clients differ only in how they wait; everything they must agree
on is built here once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from jobcontrol import convert
from jobcontrol.errors import InvalidArgument
from jobcontrol.jobs import Job, JobSpec, JobState
from jobcontrol.store import JobFilter, JobPage
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.workers import Worker

T = TypeVar("T")
Seconds = float | timedelta


@dataclass(frozen=True, slots=True)
class UnaryCall(Generic[T]):
    """One call, ready to send with either flavour's stub.

    `safe` says whether the call may be sent again after UNAVAILABLE, when the first
    attempt may or may not have reached the server. Reads are; CancelJob is (cancelling
    twice changes nothing more); RetryJob is (a second one cannot start another attempt,
    it is refused with FAILED_PRECONDITION); SubmitJob only with an idempotency key,
    without which a repeat could create a second job.
    """

    method: str
    request: Any
    parse: Callable[[Any], T]
    safe: bool
    job_id: str | None = None


class SubmitOptions(TypedDict, total=False):
    """The keyword options of `submit`, declared once for both flavours. Spans (`delay`,
    `timeout`) may be given as timedelta or in seconds; `run_after` must carry a zone."""

    priority: int
    idempotency_key: str | None
    run_after: datetime | None
    delay: Seconds | None
    max_attempts: int | None
    timeout: Seconds | None
    labels: Mapping[str, str] | None


def make_spec(
    type: str, payload: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
) -> JobSpec:
    """The arguments of `submit`, as the domain's JobSpec."""
    return JobSpec(
        type=type,
        payload=dict(payload or {}),
        priority=options.get("priority", 0),
        idempotency_key=options.get("idempotency_key"),
        run_after=options.get("run_after"),
        delay=_span(options.get("delay")),
        max_attempts=options.get("max_attempts"),
        timeout=_span(options.get("timeout")),
        labels=dict(options.get("labels") or {}),
    )


def make_filter(
    states: Iterable[JobState | str] = (),
    types: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
) -> JobFilter:
    """States may be JobState values or their names in any case ("failed")."""
    return JobFilter(
        states=frozenset(_state(s) for s in states),
        types=frozenset(types),
        labels=dict(labels or {}),
    )


@dataclass(frozen=True, slots=True)
class SubmittedJob(Job):
    """What `submit` returns: the job, and what the server said about the submission.

    `created` is False when an earlier submission with the same idempotency key
    returned this job. `warnings` are for people, such as that no live worker serves
    the job's type yet (the job waits until one starts)."""

    created: bool = True
    warnings: tuple[str, ...] = ()


class SubmittedJobs(list[Job]):
    """What `submit_many` returns: the jobs in the order of the specs, and the server's
    `warnings` about the batch (one line per problem, not per job)."""

    def __init__(self, jobs: Iterable[Job], warnings: Iterable[str] = ()) -> None:
        super().__init__(jobs)
        self.warnings: tuple[str, ...] = tuple(warnings)


def submit_job(spec: JobSpec) -> UnaryCall[SubmittedJob]:
    return UnaryCall(
        "SubmitJob",
        convert.spec_to_proto(spec),
        _submitted,
        safe=bool(spec.idempotency_key),
    )


def submit_jobs(specs: Sequence[JobSpec]) -> UnaryCall[SubmittedJobs]:
    """All or nothing in one store transaction; safe to repeat only when every job
    carries an idempotency key."""
    return UnaryCall(
        "SubmitJobs",
        api.SubmitJobsRequest(requests=[convert.spec_to_proto(spec) for spec in specs]),
        lambda response: SubmittedJobs(
            (convert.job_from_proto(job) for job in response.jobs), response.warnings
        ),
        safe=bool(specs) and all(spec.idempotency_key for spec in specs),
    )


def _submitted(response: api.SubmitJobResponse) -> SubmittedJob:
    job = convert.job_from_proto(response.job)
    fields = {field.name: getattr(job, field.name) for field in dataclasses.fields(job)}
    return SubmittedJob(**fields, created=response.created, warnings=tuple(response.warnings))


def get_job(job_id: str) -> UnaryCall[Job]:
    return _about_job("GetJob", api.GetJobRequest(job_id=job_id), job_id)


class Pages:
    """Where a listing stands: the next page to ask for, and whether there is one. An
    empty next_page_token is the only end-of-list signal (AIP-158)."""

    def __init__(self, job_filter: JobFilter, *, page_size: int) -> None:
        self._filter = job_filter
        self._page_size = page_size
        self._token = ""
        self.done = False

    def next_call(self) -> UnaryCall[JobPage]:
        request = api.ListJobsRequest(
            filter=convert.filter_to_proto(self._filter),
            page_size=self._page_size,
            page_token=self._token,
        )
        return UnaryCall("ListJobs", request, convert.page_from_proto, safe=True)

    def take(self, page: JobPage) -> list[Job]:
        self._token = page.next_page_token
        self.done = not page.next_page_token
        return page.jobs


def cancel_job(job_id: str, reason: str) -> UnaryCall[Job]:
    return _about_job("CancelJob", api.CancelJobRequest(job_id=job_id, reason=reason), job_id)


def retry_job(job_id: str) -> UnaryCall[Job]:
    return _about_job("RetryJob", api.RetryJobRequest(job_id=job_id), job_id)


def list_workers(include_stopped: bool) -> UnaryCall[list[Worker]]:
    return UnaryCall(
        "ListWorkers",
        api.ListWorkersRequest(show_stopped=include_stopped),
        lambda response: [convert.worker_from_proto(worker) for worker in response.workers],
        safe=True,
    )


def _about_job(method: str, request: Any, job_id: str) -> UnaryCall[Job]:
    """A safe call on one existing job that answers with the job."""
    return UnaryCall(
        method, request, lambda response: convert.job_from_proto(response.job), True, job_id
    )


def _span(value: Seconds | None) -> timedelta | None:
    if value is None or isinstance(value, timedelta):
        return value
    return timedelta(seconds=value)


def _state(value: JobState | str) -> JobState:
    try:
        return JobState(value.upper())
    except ValueError:
        allowed = ", ".join(JobState)
        raise InvalidArgument("states", f"unknown state {value!r}; use one of {allowed}") from None
