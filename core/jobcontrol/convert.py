"""Conversion between protobuf messages and domain values: the one module that knows both.

The server turns requests into domain values here and answers with messages built here;
clients turn answers back into domain values here. Limits (type format, payload size,
ranges) are the store's to check, so every caller gets the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from jobcontrol.errors import InvalidArgument
from jobcontrol.jobs import EventKind, Job, JobError, JobEvent, JobSpec, JobState, Progress
from jobcontrol.store import JobFilter, JobPage
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_pb2 as pb
from jobcontrol.workers import Worker, WorkerState

_STATE_TO_PB = {
    JobState.PENDING: pb.JOB_STATE_PENDING,
    JobState.RUNNING: pb.JOB_STATE_RUNNING,
    JobState.SUCCEEDED: pb.JOB_STATE_SUCCEEDED,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}
_STATE_FROM_PB = {number: state for state, number in _STATE_TO_PB.items()}
_KIND_TO_PB = {
    EventKind.SNAPSHOT: pb.EVENT_KIND_SNAPSHOT,
    EventKind.SUBMITTED: pb.EVENT_KIND_SUBMITTED,
    EventKind.STARTED: pb.EVENT_KIND_STARTED,
    EventKind.PROGRESS: pb.EVENT_KIND_PROGRESS,
    EventKind.CANCEL_REQUESTED: pb.EVENT_KIND_CANCEL_REQUESTED,
    EventKind.SUCCEEDED: pb.EVENT_KIND_SUCCEEDED,
    EventKind.FAILED: pb.EVENT_KIND_FAILED,
    EventKind.CANCELLED: pb.EVENT_KIND_CANCELLED,
    EventKind.RETRY_SCHEDULED: pb.EVENT_KIND_RETRY_SCHEDULED,
    EventKind.RELEASED: pb.EVENT_KIND_RELEASED,
    EventKind.RETRIED: pb.EVENT_KIND_RETRIED,
    EventKind.QUEUE_POSITION: pb.EVENT_KIND_QUEUE_POSITION,
}
_WORKER_STATE_TO_PB = {
    WorkerState.ACTIVE: pb.WORKER_STATE_ACTIVE,
    WorkerState.DRAINING: pb.WORKER_STATE_DRAINING,
    WorkerState.STOPPED: pb.WORKER_STATE_STOPPED,
    WorkerState.LOST: pb.WORKER_STATE_LOST,
}
_MAX_STRUCT_DEPTH = 20
# Beyond 2**53 a double no longer holds every integer, so a whole-looking value there
# may not be the integer that was sent: it stays a float.
_EXACT_INTEGERS = 2**53


def spec_from_proto(request: api.SubmitJobRequest, *, field_prefix: str = "") -> JobSpec:
    def field(name: str) -> str:
        return field_prefix + name

    return JobSpec(
        type=request.type,
        payload=struct_to_dict(request.payload, field=field("payload"))
        if request.HasField("payload")
        else {},
        priority=request.priority,
        idempotency_key=request.idempotency_key or None,
        run_after=timestamp_to_datetime(request.run_after, field=field("run_after"))
        if request.HasField("run_after")
        else None,
        delay=duration_to_timedelta(request.delay, field=field("delay"))
        if request.HasField("delay")
        else None,
        max_attempts=request.max_attempts or None,
        timeout=duration_to_timedelta(request.timeout, field=field("timeout"))
        if request.HasField("timeout")
        else None,
        labels=dict(request.labels),
    )


def filter_from_proto(message: api.JobFilter) -> JobFilter:
    states = set()
    for number in message.states:
        state = _STATE_FROM_PB.get(number)
        if state is None:
            allowed = ", ".join(pb.JobState.Name(n) for n in sorted(_STATE_FROM_PB))
            raise InvalidArgument("filter.states", f"unknown state {number}; use one of {allowed}")
        states.add(state)
    return JobFilter(
        states=frozenset(states), types=frozenset(message.types), labels=dict(message.labels)
    )


def struct_to_dict(message: struct_pb2.Struct, *, field: str) -> dict[str, Any]:
    if _depth(message) > _MAX_STRUCT_DEPTH:
        raise InvalidArgument(field, f"is nested deeper than {_MAX_STRUCT_DEPTH} levels")
    try:
        return _to_json(message)
    except ValueError:  # a NaN or infinite number_value: JSON has no way to write it
        raise InvalidArgument(field, "must not contain NaN or Infinity") from None


def _make_numbers_whole(value: dict[str, Any] | list[Any]) -> None:
    """In place, so a large payload is not copied: a handler given `{"steps": 4}` must get
    the int 4 (a Struct holds only doubles), or `range(payload["steps"])` fails."""
    stack: list[dict[str, Any] | list[Any]] = [value]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, item in items:
            if isinstance(item, float):
                if item.is_integer() and abs(item) <= _EXACT_INTEGERS:
                    node[key] = int(item)  # type: ignore[index]
            elif isinstance(item, dict | list):
                stack.append(item)


def _depth(value: struct_pb2.Struct | struct_pb2.ListValue, level: int = 1) -> int:
    """Nesting depth, measured without recursion so a hostile payload cannot blow the stack."""
    deepest = level
    stack: list[tuple[Any, int]] = [(value, level)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > _MAX_STRUCT_DEPTH:
            return deepest
        children = node.fields.values() if isinstance(node, struct_pb2.Struct) else node.values
        for child in children:
            kind = child.WhichOneof("kind")
            if kind == "struct_value":
                stack.append((child.struct_value, depth + 1))
            elif kind == "list_value":
                stack.append((child.list_value, depth + 1))
    return deepest


def dict_to_struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def timestamp_to_datetime(message: timestamp_pb2.Timestamp, *, field: str) -> datetime:
    try:
        return message.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise InvalidArgument(
            field, "must be a valid timestamp between years 0001 and 9999"
        ) from None


def duration_to_timedelta(message: duration_pb2.Duration, *, field: str) -> timedelta:
    if (message.seconds < 0 < message.nanos) or (message.seconds > 0 > message.nanos):
        raise InvalidArgument(field, "seconds and nanos must have the same sign")
    try:
        return message.ToTimedelta()
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "is out of range") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_NAIVE = datetime(1970, 1, 1)


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """The value `Timestamp.FromDatetime` gives (a naive time is read as UTC) at under
    half the cost: that goes through `utctimetuple` and `calendar.timegm`, and a watched
    event carries up to seven timestamps."""
    if value is None:
        return None
    since = value - (_EPOCH_NAIVE if value.utcoffset() is None else _EPOCH)
    return timestamp_pb2.Timestamp(
        seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000
    )


def _duration(value: timedelta | None) -> duration_pb2.Duration | None:
    if value is None:
        return None
    message = duration_pb2.Duration()
    message.FromTimedelta(value)
    return message


def job_to_proto(job: Job) -> pb.Job:
    message = pb.Job(
        id=job.id,
        type=job.type,
        payload=dict_to_struct(job.payload),
        state=_STATE_TO_PB[job.state],
        progress=pb.Progress(
            percent=job.progress.percent, stage=job.progress.stage, message=job.progress.message
        ),
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        priority=job.priority,
        labels=dict(job.labels),
        cancel_requested=job.cancel_requested,
        cancel_reason=job.cancel_reason,
        worker_id=job.worker_id or "",
        idempotency_key=job.idempotency_key or "",
        create_time=_timestamp(job.create_time),
        update_time=_timestamp(job.update_time),
        start_time=_timestamp(job.start_time),
        end_time=_timestamp(job.end_time),
        run_after=_timestamp(job.run_after),
        lease_expire_time=_timestamp(job.lease_expire_time),
        timeout=_duration(job.timeout),
    )
    if job.result is not None:
        message.result.CopyFrom(dict_to_struct(job.result))
    if job.error is not None:
        message.error.CopyFrom(
            pb.JobError(
                code=job.error.code,
                message=job.error.message,
                retryable=job.error.retryable,
                details=job.error.details,
            )
        )
    if job.queue_position is not None:
        message.queue_position = job.queue_position
    message.unserved = job.unserved
    return message


def event_to_proto(event: JobEvent) -> pb.JobEvent:
    return pb.JobEvent(
        sequence=event.sequence,
        kind=_KIND_TO_PB[event.kind],
        time=_timestamp(event.time),
        job=job_to_proto(event.job),
    )


def worker_to_proto(worker: Worker) -> pb.Worker:
    return pb.Worker(
        id=worker.id,
        name=worker.name,
        host=worker.host,
        pid=worker.pid,
        job_types=list(worker.job_types),
        concurrency=worker.concurrency,
        state=_WORKER_STATE_TO_PB[worker.state],
        current_job_ids=list(worker.current_job_ids),
        start_time=_timestamp(worker.start_time),
        heartbeat_time=_timestamp(worker.heartbeat_time),
    )


# ---- the other direction: answers back into domain values, for clients ----------------

_KIND_FROM_PB = {number: kind for kind, number in _KIND_TO_PB.items()}
_WORKER_STATE_FROM_PB = {number: state for state, number in _WORKER_STATE_TO_PB.items()}


def spec_to_proto(spec: JobSpec) -> api.SubmitJobRequest:
    """The request a client sends for `spec`. Refuses here what the wire would hide:
    `run_after` and `delay` share a oneof (one would silently win), and a Timestamp has
    no zone (a naive time would silently be read as UTC)."""
    if spec.run_after is not None and spec.delay is not None:
        raise InvalidArgument("delay", "give either run_after or delay, not both")
    if spec.run_after is not None and spec.run_after.tzinfo is None:
        raise InvalidArgument("run_after", "must carry a time zone")
    request = api.SubmitJobRequest(
        type=spec.type,
        payload=dict_to_struct(spec.payload),
        priority=spec.priority,
        idempotency_key=spec.idempotency_key or "",
        max_attempts=spec.max_attempts or 0,
        labels=dict(spec.labels),
    )
    if spec.run_after is not None:
        request.run_after.FromDatetime(spec.run_after)
    if spec.delay is not None:
        request.delay.FromTimedelta(spec.delay)
    if spec.timeout is not None:
        request.timeout.FromTimedelta(spec.timeout)
    return request


def filter_to_proto(job_filter: JobFilter) -> api.JobFilter:
    """Sorted, so the same filter always makes the same bytes (page tokens are bound to
    the filter they were issued for)."""
    return api.JobFilter(
        states=sorted(_STATE_TO_PB[state] for state in job_filter.states),
        types=sorted(job_filter.types),
        labels=dict(job_filter.labels),
    )


def job_from_proto(message: pb.Job) -> Job:
    """Empty strings and absent messages become None, as the domain model has them; the
    lease id is the worker's secret and never travels, so it stays None."""
    return Job(
        id=message.id,
        type=message.type,
        payload=_to_json(message.payload),
        state=_decode(_STATE_FROM_PB, message.state, "job state"),
        priority=message.priority,
        labels=dict(message.labels),
        attempt=message.attempt,
        max_attempts=message.max_attempts,
        create_time=_to_datetime(message.create_time),
        update_time=_to_datetime(message.update_time),
        run_after=_to_datetime(message.run_after),
        progress=Progress(
            percent=message.progress.percent,
            stage=message.progress.stage,
            message=message.progress.message,
        ),
        result=_to_json(message.result) if message.HasField("result") else None,
        error=JobError(
            code=message.error.code,
            message=message.error.message,
            retryable=message.error.retryable,
            details=message.error.details,
        )
        if message.HasField("error")
        else None,
        cancel_requested=message.cancel_requested,
        cancel_reason=message.cancel_reason,
        worker_id=message.worker_id or None,
        lease_expire_time=_to_datetime(message.lease_expire_time)
        if message.HasField("lease_expire_time")
        else None,
        timeout=message.timeout.ToTimedelta() if message.HasField("timeout") else None,
        idempotency_key=message.idempotency_key or None,
        start_time=_to_datetime(message.start_time) if message.HasField("start_time") else None,
        end_time=_to_datetime(message.end_time) if message.HasField("end_time") else None,
        queue_position=message.queue_position if message.HasField("queue_position") else None,
        unserved=message.unserved,
    )


def page_from_proto(message: api.ListJobsResponse) -> JobPage:
    return JobPage(
        jobs=[job_from_proto(job) for job in message.jobs],
        next_page_token=message.next_page_token,
    )


def event_from_proto(message: pb.JobEvent) -> JobEvent:
    return JobEvent(
        sequence=message.sequence,
        kind=_decode(_KIND_FROM_PB, message.kind, "event kind"),
        time=_to_datetime(message.time),
        job=job_from_proto(message.job),
    )


def worker_from_proto(message: pb.Worker) -> Worker:
    return Worker(
        id=message.id,
        name=message.name,
        host=message.host,
        pid=message.pid,
        job_types=tuple(message.job_types),
        concurrency=message.concurrency,
        state=_decode(_WORKER_STATE_FROM_PB, message.state, "worker state"),
        start_time=_to_datetime(message.start_time),
        heartbeat_time=_to_datetime(message.heartbeat_time),
        current_job_ids=tuple(message.current_job_ids),
    )


def job_to_json(job: Job) -> dict[str, Any]:
    """The proto3 JSON form (lowerCamelCase names, enum value names, RFC 3339 times):
    what grpcurl and the other-language clients print, so scripts can share parsers.
    Whole numbers print as integers (`4`, not `4.0`), as grpcurl prints them."""
    return _to_json(job_to_proto(job))


def event_to_json(event: JobEvent) -> dict[str, Any]:
    """The proto3 JSON form of the event, like `job_to_json`."""
    return _to_json(event_to_proto(event))


def worker_to_json(worker: Worker) -> dict[str, Any]:
    """The proto3 JSON form of the worker, like `job_to_json`."""
    return json_format.MessageToDict(worker_to_proto(worker))


def _to_json(message: Message) -> dict[str, Any]:
    """The message's proto3 JSON form with its Struct numbers as they were sent: every
    Struct number is a double, so the integers a client sent or a handler returned come
    back whole (`4`, not `4.0`). The dict is fresh, so it is made whole in place."""
    value = json_format.MessageToDict(message)
    _make_numbers_whole(value)
    return value


def _to_datetime(message: timestamp_pb2.Timestamp) -> datetime:
    return message.ToDatetime(tzinfo=UTC)


_E = TypeVar("_E")


def _decode(table: Mapping[Any, _E], number: int, what: str) -> _E:
    """A value this client does not know means the server is newer: say so plainly
    instead of failing with a KeyError."""
    try:
        return table[number]
    except KeyError:
        raise ValueError(
            f"the server sent {what} {number}, which this client does not know; upgrade the client"
        ) from None
