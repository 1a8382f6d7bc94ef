"""The pure state machine: allowed transitions and what each change does."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest

from jobcontrol import jobs
from jobcontrol.errors import InvalidTransition
from jobcontrol.jobs import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    ErrorCode,
    EventKind,
    Job,
    JobError,
    JobSpec,
    JobState,
    Progress,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _pending(**spec: object) -> Job:
    job, kind = jobs.submit(JobSpec(**{"type": "t", **spec}), job_id="j", now=NOW)  # type: ignore[arg-type]
    assert kind is EventKind.SUBMITTED
    return job


def _running(**spec: object) -> Job:
    job, _ = jobs.start(
        _pending(**spec), worker_id="w", lease_id="l", lease_expire_time=NOW, now=NOW
    )
    return job


def test_every_state_has_a_row_and_terminal_states_only_leave_by_retry():
    assert set(ALLOWED_TRANSITIONS) == set(JobState)
    assert ALLOWED_TRANSITIONS[JobState.SUCCEEDED] == frozenset()
    for state in TERMINAL_STATES - {JobState.SUCCEEDED}:
        assert ALLOWED_TRANSITIONS[state] == frozenset({JobState.PENDING})
    assert {s for s in JobState if s.is_terminal} == TERMINAL_STATES


def test_start_counts_an_attempt_and_resets_progress():
    job = _running()
    assert job.state is JobState.RUNNING
    assert job.attempt == 1
    assert job.progress == Progress()


@pytest.mark.parametrize(
    "change",
    [
        lambda job: jobs.succeed(job, {}, now=NOW),
        lambda job: jobs.report_progress(job, Progress(1), now=NOW),
        lambda job: jobs.release(job, now=NOW),
        lambda job: jobs.fail(job, JobError("x", "y", True), now=NOW),
    ],
)
def test_worker_changes_are_refused_for_a_pending_job(change):
    with pytest.raises(InvalidTransition):
        change(_pending())


def test_finished_jobs_never_change_except_by_retry():
    done, _ = jobs.succeed(_running(), {"ok": 1}, now=NOW)
    for change in (
        lambda: jobs.start(done, worker_id="w", lease_id="l", lease_expire_time=NOW, now=NOW),
        lambda: jobs.request_cancel(done, reason="", now=NOW),
        lambda: jobs.retry(done, now=NOW),
        lambda: jobs.fail(done, JobError("x", "y", True), now=NOW),
    ):
        with pytest.raises(InvalidTransition):
            change()


def test_fail_retries_while_attempts_are_left_then_fails():
    job = _running(max_attempts=2)
    retried, kind = jobs.fail(job, JobError("x", "y", True), now=NOW)
    assert (retried.state, kind) == (JobState.PENDING, EventKind.RETRY_SCHEDULED)
    assert retried.lease_id is None
    again, _ = jobs.start(retried, worker_id="w", lease_id="l2", lease_expire_time=NOW, now=NOW)
    failed, kind = jobs.fail(again, JobError("x", "y", True), now=NOW)
    assert (failed.state, kind) == (JobState.FAILED, EventKind.FAILED)
    assert failed.end_time == NOW


def test_cancel_requests_are_idempotent():
    requested, kind = jobs.request_cancel(_running(), reason="r", now=NOW) or (None, None)
    assert requested is not None
    assert kind is EventKind.CANCEL_REQUESTED
    assert jobs.request_cancel(requested, reason="again", now=NOW) is None


def test_release_does_not_charge_the_attempt():
    released, kind = jobs.release(_running(), now=NOW + timedelta(seconds=1))
    assert (released.state, released.attempt, kind) == (JobState.PENDING, 0, EventKind.RELEASED)


def test_a_running_job_cannot_be_claimed_again():
    with pytest.raises(InvalidTransition, match="only a PENDING job can be claimed"):
        jobs.start(_running(), worker_id="w", lease_id="l", lease_expire_time=NOW, now=NOW)


def test_a_pending_job_cannot_be_confirmed_cancelled_by_a_worker():
    with pytest.raises(InvalidTransition):
        jobs.confirm_cancelled(_pending(), now=NOW)


LATER = NOW + timedelta(seconds=60)


@pytest.mark.parametrize(
    ("lease_expired", "past_deadline", "worker_gone", "cancel_requested", "expected"),
    [
        (False, False, False, False, None),
        (False, False, False, True, None),  # its live worker will stop it
        (False, False, True, False, None),  # a stopped worker's lease still runs out
        (False, False, True, True, (JobState.CANCELLED, EventKind.CANCELLED)),
        (True, False, False, False, (JobState.PENDING, EventKind.RETRY_SCHEDULED)),
        (True, False, False, True, (JobState.CANCELLED, EventKind.CANCELLED)),
        (False, True, False, False, (JobState.PENDING, EventKind.RETRY_SCHEDULED)),
        (False, True, False, True, (JobState.CANCELLED, EventKind.CANCELLED)),
    ],
)
def test_reap_decides_what_becomes_of_a_running_job(
    lease_expired, past_deadline, worker_gone, cancel_requested, expected
):
    job, _ = jobs.start(
        _pending(timeout=timedelta(seconds=30 if past_deadline else 600)),
        worker_id="w",
        lease_id="l",
        lease_expire_time=NOW + (timedelta(seconds=1) if lease_expired else timedelta(hours=1)),
        now=NOW,
    )
    if cancel_requested:
        job, _ = jobs.request_cancel(job, reason="r", now=NOW) or (job, None)
    change = jobs.reap(job, worker_gone=worker_gone, now=LATER)
    assert (change and (change[0].state, change[1])) == expected


def test_reap_names_why_the_attempt_failed():
    lost, _ = jobs.start(_pending(), worker_id="w", lease_id="l", lease_expire_time=NOW, now=NOW)
    overdue = _running(timeout=timedelta(seconds=30))
    overdue = dataclasses.replace(overdue, lease_expire_time=LATER + timedelta(hours=1))
    codes = []
    for job in (lost, overdue):
        change = jobs.reap(job, worker_gone=False, now=LATER)
        assert change is not None
        assert change[0].error is not None
        codes.append(change[0].error.code)
    assert codes == [ErrorCode.WORKER_LOST, ErrorCode.DEADLINE_EXCEEDED]


def test_a_timeout_is_the_same_error_whoever_notices_it():
    job = _running(timeout=timedelta(seconds=30))
    job = dataclasses.replace(job, lease_expire_time=LATER + timedelta(hours=1))
    by_worker, _ = jobs.time_out(job, now=LATER)
    by_reaper, _ = jobs.reap(job, worker_gone=False, now=LATER) or (None, None)
    assert by_reaper is not None
    assert by_worker.error == by_reaper.error
    assert by_worker.error is not None
    assert "timeout of 30s" in by_worker.error.message


def test_the_deadline_is_the_attempt_start_plus_the_timeout_and_only_while_running():
    assert _pending(timeout=timedelta(seconds=30)).deadline is None
    assert _running().deadline is None
    assert _running(timeout=timedelta(seconds=30)).deadline == NOW + timedelta(seconds=30)


def test_a_retryable_failure_of_a_job_being_cancelled_cancels_it():
    job, _ = jobs.request_cancel(_running(), reason="r", now=NOW) or (None, None)
    assert job is not None
    cancelled, kind = jobs.fail(job, JobError("x", "y", True), now=NOW)
    assert (cancelled.state, kind) == (JobState.CANCELLED, EventKind.CANCELLED)
    assert cancelled.error == JobError("x", "y", True)
    failed, kind = jobs.fail(job, JobError("x", "y", False), now=NOW)
    assert (failed.state, kind) == (JobState.FAILED, EventKind.FAILED)
