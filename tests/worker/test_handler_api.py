"""The handler API: what a handler sees of its job, and per-type settings on `@handler`
(max_attempts, timeout, retry), checked when decorating and applied by real workers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobcontrol.jobs import EventKind, Job, JobEvent, JobSpec, JobState
from jobcontrol.retry import RetryPolicy
from jobcontrol.worker import JobContext, Registry
from jobcontrol.worker.handlers import Handler
from tests.conftest import ROOT, wait_until
from tests.worker.conftest import StartWorker, SyncStore
from tests.worker.typed_handlers import SLOW_BACKOFF

TYPED_HANDLERS = ("--handlers", "tests.worker.typed_handlers", "--poll-interval", "0.05")


def noop(ctx: JobContext) -> dict[str, Any]:
    return {}


def test_a_handler_sees_its_job_and_none_of_the_runtime():
    public = {name for name in dir(JobContext) if not name.startswith("_")}
    assert public == {
        "attempt",
        "cancelled",
        "fetch_allow",
        "job_id",
        "job_type",
        "labels",
        "lease_id",
        "logger",
        "max_attempts",
        "payload",
        "raise_if_cancelled",
        "report_progress",
        "sleep",
        "wait_cancelled",
    }


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"max_attempts": 0}, ValueError, "max_attempts must be between 1 and 100, got 0"),
        ({"max_attempts": 101}, ValueError, "max_attempts must be between 1 and 100"),
        ({"max_attempts": "3"}, TypeError, "max_attempts must be an int, got '3'"),
        ({"max_attempts": True}, TypeError, "max_attempts must be an int"),
        ({"timeout": 0}, ValueError, "timeout must be more than zero"),
        ({"timeout": -1.5}, ValueError, "timeout must be more than zero"),
        ({"timeout": float("inf")}, ValueError, "timeout must be at most a year"),
        ({"timeout": "soon"}, ValueError, "timeout: not a duration: 'soon'"),
        ({"timeout": [1]}, TypeError, "timeout must be a timedelta, seconds or a duration"),
        ({"retry": {"base": 1}}, TypeError, "retry must be a jobcontrol.worker.RetryPolicy"),
    ],
)
def test_bad_settings_are_refused_when_decorating(
    settings: dict[str, Any], error: type[Exception], message: str
):
    with pytest.raises(error, match=r"^@handler\('app.work'\): ") as raised:
        Registry().handler("app.work", **settings)(noop)
    assert message in str(raised.value)


def test_a_bad_job_type_is_refused_when_decorating():
    with pytest.raises(ValueError, match=r"^@handler\('9lives'\): the job type must be"):
        Registry().handler("9lives")(noop)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"base": 1}, "base must be a datetime.timedelta, got 1"),
        ({"cap": timedelta(seconds=-1)}, "cap must not be negative"),
        ({"factor": 0.5}, "factor must be at least 1, got 0.5"),
        ({"factor": float("nan")}, "factor must be at least 1"),
        ({"factor": "2"}, "factor must be a number"),
    ],
)
def test_a_bad_retry_policy_is_refused_when_made(fields: dict[str, Any], message: str):
    with pytest.raises((TypeError, ValueError), match=message):
        RetryPolicy(**fields)


def test_settings_are_kept_in_one_spelling():
    registry = Registry()
    registry.handler("a.minute", timeout="1m", max_attempts=5, retry=SLOW_BACKOFF)(noop)
    registry.handler("a.second", timeout=1.5)(noop)
    registry.handler("a.day", timeout=timedelta(days=1))(noop)
    minute = registry.get("a.minute")
    assert minute is not None
    assert (minute.timeout, minute.max_attempts, minute.retry) == (
        timedelta(minutes=1),
        5,
        SLOW_BACKOFF,
    )
    assert [registry.get(t).timeout for t in ("a.second", "a.day")] == [  # type: ignore[union-attr]
        timedelta(seconds=1.5),
        timedelta(days=1),
    ]


def _job(max_attempts: int, timeout: timedelta | None = None) -> Job:
    now = datetime.now(UTC)
    return Job(
        id="j",
        type="a.b",
        payload={},
        state=JobState.RUNNING,
        priority=0,
        labels={},
        attempt=1,
        max_attempts=max_attempts,
        create_time=now,
        update_time=now,
        run_after=now,
        timeout=timeout,
    )


def test_the_handlers_max_attempts_applies_only_where_the_submitter_kept_the_default():
    capped = Handler("a.b", noop, False, max_attempts=1, timeout=timedelta(seconds=9))
    assert capped.attempts_for(_job(3)) == 1  # the default: the handler decides
    assert capped.attempts_for(_job(5)) == 5  # the submitter chose
    assert Handler("a.b", noop, False).attempts_for(_job(3)) == 3
    assert capped.timeout_for(_job(3)) == timedelta(seconds=9)
    assert capped.timeout_for(_job(3, timeout=timedelta(seconds=2))) == timedelta(seconds=2)


# ---- applied by real workers ---------------------------------------------------------


def _events(store: SyncStore, job_id: str) -> list[JobEvent]:
    events: list[JobEvent] = store.list_events(after_sequence=0, job_id=job_id, limit=100)
    return events


def _finished(store: SyncStore, job_id: str) -> Job:
    def done() -> Job | None:
        job: Job = store.get_job(job_id)
        return job if job.is_terminal else None

    return wait_until(done, timeout=30, interval=0.02, what=f"job {job_id} to finish")


def _submit(store: SyncStore, job_type: str, **fields: Any) -> str:
    return str(store.create_job(JobSpec(type=job_type, **fields)).job.id)


def test_a_type_with_max_attempts_1_fails_without_retry_unless_the_job_asks_for_more(
    store: SyncStore, store_path: Path, start_worker: StartWorker
):
    worker = start_worker(store_path, *TYPED_HANDLERS, env={"PYTHONPATH": str(ROOT)})
    defaulted = _submit(store, "typed.once")
    chosen = _submit(store, "typed.once", max_attempts=2)

    job = _finished(store, defaulted)
    assert job.state is JobState.FAILED, worker.log
    assert (job.attempt, job.max_attempts) == (1, 1)
    assert job.error is not None
    assert job.error.message == "RuntimeError: attempt 1 of 1 failed"
    assert [e.kind for e in _events(store, defaulted)] == [
        EventKind.SUBMITTED,
        EventKind.STARTED,
        EventKind.FAILED,
    ]

    # The submitter's own choice wins over the handler's.
    job = _finished(store, chosen)
    assert job.state is JobState.FAILED, worker.log
    assert (job.attempt, job.max_attempts) == (2, 2)
    assert [e.kind for e in _events(store, chosen)].count(EventKind.RETRY_SCHEDULED) == 1


def test_a_type_with_a_timeout_stops_an_attempt_that_runs_over(
    store: SyncStore, store_path: Path, start_worker: StartWorker
):
    worker = start_worker(store_path, *TYPED_HANDLERS, env={"PYTHONPATH": str(ROOT)})
    job_id = _submit(store, "typed.slow")

    job = _finished(store, job_id)
    assert job.state is JobState.FAILED, worker.log
    assert job.error is not None
    assert job.error.code == "deadline_exceeded"
    assert job.error.message == "attempt ran past its timeout of 0.3s"
    assert job.result is None
    assert [e.kind for e in _events(store, job_id)][-1] is EventKind.FAILED


def test_a_types_retry_policy_sets_the_backoff_and_its_max_attempts_is_stored(
    store: SyncStore, store_path: Path, start_worker: StartWorker
):
    worker = start_worker(store_path, *TYPED_HANDLERS, env={"PYTHONPATH": str(ROOT)})
    job_id = _submit(store, "typed.backoff")

    def retry_scheduled() -> JobEvent | None:
        kinds = {e.kind: e for e in _events(store, job_id)}
        return kinds.get(EventKind.RETRY_SCHEDULED)

    event = wait_until(retry_scheduled, timeout=30, interval=0.02, what="a retry to be scheduled")
    backoff = event.job.run_after - event.time
    # Attempt 1's nominal delay is the policy's base; equal jitter keeps the upper half.
    assert SLOW_BACKOFF.base / 2 <= backoff <= SLOW_BACKOFF.base, worker.log
    assert (event.job.attempt, event.job.max_attempts) == (1, 2)
    job: Job = store.get_job(job_id)
    assert job.state is JobState.PENDING
    assert job.run_after == event.job.run_after
