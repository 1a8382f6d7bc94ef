"""Conversion between database rows and domain values: the one place that knows both.

An event stores the job row as JSON (an object, or since migration 6 an array of its
values), so an event decodes through the same code as a job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from jobcontrol.jobs import EventKind, Job, JobError, JobEvent, JobState, Progress
from jobcontrol.store.database import Row
from jobcontrol.store.schema import EVENT_LAYOUTS
from jobcontrol.workers import Worker, WorkerState

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

JOB_COLUMNS = (
    "id",
    "type",
    "payload",
    "state",
    "priority",
    "labels",
    "attempt",
    "max_attempts",
    "create_us",
    "update_us",
    "run_after_us",
    "progress_percent",
    "progress_stage",
    "progress_message",
    "result",
    "error_code",
    "error_message",
    "error_retryable",
    "error_details",
    "cancel_requested",
    "cancel_reason",
    "worker_id",
    "lease_id",
    "lease_expire_us",
    "timeout_us",
    "deadline_us",
    "idempotency_key",
    "start_us",
    "end_us",
)


_STATES = {state.value: state for state in JobState}


def to_us(value: datetime) -> int:
    return (value - EPOCH) // _MICROSECOND


def from_us(value: int) -> datetime:
    return EPOCH + timedelta(0, 0, value)  # positional: measurably cheaper on hot paths


def _opt_to_us(value: datetime | None) -> int | None:
    return None if value is None else to_us(value)


def _opt_from_us(value: int | None) -> datetime | None:
    return None if value is None else from_us(value)


def _load_object(text: str) -> Any:
    """Most payloads, labels and results are empty: skip the parser for those."""
    return {} if text == "{}" else json.loads(text)


def dump_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def json_arrays(elements: Iterable[str], *, max_bytes: int) -> Iterator[str]:
    """JSON arrays of the given encoded elements, in order, each at most `max_bytes` of
    UTF-8 unless one element alone is bigger. Lazy, so only one array's elements are
    held at a time."""
    batch: list[str] = []
    size = 2
    for element in elements:
        length = len(element) if element.isascii() else len(element.encode())
        if batch and size + length + 1 > max_bytes:
            yield "[" + ",".join(batch) + "]"
            batch, size = [], 2
        batch.append(element)
        size += length + 1
    if batch:
        yield "[" + ",".join(batch) + "]"


def job_to_row(job: Job) -> dict[str, Any]:
    timeout_us = None if job.timeout is None else job.timeout // _MICROSECOND
    error = job.error
    return {
        "id": job.id,
        "type": job.type,
        "payload": dump_json(job.payload),
        "state": job.state.value,
        "priority": job.priority,
        "labels": dump_json(job.labels),
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "create_us": to_us(job.create_time),
        "update_us": to_us(job.update_time),
        "run_after_us": to_us(job.run_after),
        "progress_percent": job.progress.percent,
        "progress_stage": job.progress.stage,
        "progress_message": job.progress.message,
        "result": None if job.result is None else dump_json(job.result),
        "error_code": error.code if error else None,
        "error_message": error.message if error else None,
        "error_retryable": int(error.retryable) if error else None,
        "error_details": error.details if error else None,
        "cancel_requested": int(job.cancel_requested),
        "cancel_reason": job.cancel_reason,
        "worker_id": job.worker_id,
        "lease_id": job.lease_id,
        "lease_expire_us": _opt_to_us(job.lease_expire_time),
        "timeout_us": timeout_us,
        "deadline_us": _opt_to_us(job.deadline),
        "idempotency_key": job.idempotency_key,
        "start_us": _opt_to_us(job.start_time),
        "end_us": _opt_to_us(job.end_time),
    }


def job_from_row(row: Row) -> Job:
    """Runs for every job claimed or completed and every event tailed, so the time
    conversions are written out here rather than called."""
    error = None
    if row["error_code"] is not None:
        error = JobError(
            code=row["error_code"],
            message=row["error_message"] or "",
            retryable=bool(row["error_retryable"]),
            details=row["error_details"] or "",
        )
    result = row["result"]
    lease_expire_us = row["lease_expire_us"]
    timeout_us = row["timeout_us"]
    start_us = row["start_us"]
    end_us = row["end_us"]
    return Job(
        id=row["id"],
        type=row["type"],
        payload=_load_object(row["payload"]),
        state=_STATES[row["state"]],
        priority=row["priority"],
        labels=_load_object(row["labels"]),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        create_time=EPOCH + timedelta(0, 0, row["create_us"]),
        update_time=EPOCH + timedelta(0, 0, row["update_us"]),
        run_after=EPOCH + timedelta(0, 0, row["run_after_us"]),
        progress=Progress(
            float(row["progress_percent"]), row["progress_stage"], row["progress_message"]
        ),
        result=None if result is None else _load_object(result),
        error=error,
        cancel_requested=bool(row["cancel_requested"]),
        cancel_reason=row["cancel_reason"],
        worker_id=row["worker_id"],
        lease_id=row["lease_id"],
        lease_expire_time=None
        if lease_expire_us is None
        else EPOCH + timedelta(0, 0, lease_expire_us),
        timeout=None if timeout_us is None else timedelta(0, 0, timeout_us),
        idempotency_key=row["idempotency_key"],
        start_time=None if start_us is None else EPOCH + timedelta(0, 0, start_us),
        end_time=None if end_us is None else EPOCH + timedelta(0, 0, end_us),
    )


def event_from_row(row: Row) -> JobEvent:
    stored = json.loads(row["job"])
    if isinstance(stored, list):  # since migration 6: [layout, values...]
        job = dict(zip(EVENT_LAYOUTS[stored[0]], stored[1:], strict=True))
    else:
        job = stored
        job.setdefault("error_details", None)  # stored before migration 5
    return JobEvent(
        sequence=row["seq"],
        kind=EventKind(row["kind"]),
        time=from_us(row["time_us"]),
        job=job_from_row(job),
    )


def worker_from_row(row: Row, current_job_ids: tuple[str, ...] = ()) -> Worker:
    return Worker(
        id=row["id"],
        name=row["name"],
        host=row["host"],
        pid=row["pid"],
        job_types=tuple(json.loads(row["job_types"])),
        concurrency=row["concurrency"],
        state=WorkerState(row["state"]),
        start_time=from_us(row["start_us"]),
        heartbeat_time=from_us(row["heartbeat_us"]),
        stop_time=_opt_from_us(row["stop_us"]),
        current_job_ids=current_job_ids,
    )
