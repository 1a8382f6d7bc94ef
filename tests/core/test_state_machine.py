"""The pure state machine: allowed transitions and what each change does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from jobcontrol import jobs
from jobcontrol.errors import InvalidTransition
from jobcontrol.jobs import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
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
