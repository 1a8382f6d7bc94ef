"""Contract: heartbeat, progress, complete, fail, cancelled, release, all fenced by the lease."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from jobcontrol import jobs
from jobcontrol.errors import InvalidArgument, LeaseLost
from jobcontrol.jobs import ErrorCode, EventKind, Job, JobError, JobSpec, JobState, Progress
from jobcontrol.retry import DEFAULT_RETRY_POLICY
from jobcontrol.store import Completion
from jobcontrol.store.core import SqlJobStore
from tests.conftest import ManualClock

LEASE = timedelta(seconds=30)


async def running(store: SqlJobStore, **spec: object) -> Job:
    await store.create_job(JobSpec(**{"type": "t", **spec}))  # type: ignore[arg-type]
    (job,) = await store.claim_jobs(worker_id="w1", types=["t"], limit=1, lease_timeout=LEASE)
    assert job.lease_id is not None
    return job


def lease(job: Job) -> dict[str, str]:
    assert job.lease_id is not None
    return {"job_id": job.id, "lease_id": job.lease_id}


async def test_heartbeat_extends_the_lease(store: SqlJobStore, clock: ManualClock):
    job = await running(store)
    clock.advance(20)
    ack = await store.heartbeat_job(**lease(job), lease_timeout=LEASE)
    assert ack.lease_expire_time == clock() + LEASE
    assert not ack.cancel_requested
    assert (await store.get_job(job.id)).lease_expire_time == clock() + LEASE


async def test_heartbeat_reports_a_cancel_request(store: SqlJobStore):
    job = await running(store)
    await store.cancel_job(job.id, reason="user changed their mind")
    ack = await store.heartbeat_job(**lease(job), lease_timeout=LEASE)
    assert ack.cancel_requested


async def test_one_heartbeat_renews_many_leases_each_fenced_on_its_own(
    store: SqlJobStore, clock: ManualClock
):
    live, cancelling, finished = [await running(store) for _ in range(3)]
    await store.cancel_job(cancelling.id)
    await store.complete_job(**lease(finished), result={})
    leases = {job.id: job.lease_id or "" for job in (live, cancelling, finished)}
    leases["0" * 26] = "f" * 32  # no such job
    clock.advance(20)
    acks = await store.heartbeat_jobs(leases, lease_timeout=LEASE)
    assert set(acks) == {live.id, cancelling.id}
    assert [acks[live.id].cancel_requested, acks[cancelling.id].cancel_requested] == [False, True]
    assert acks[live.id].lease_expire_time == clock() + LEASE
    assert (await store.get_job(cancelling.id)).lease_expire_time == clock() + LEASE
    assert await store.heartbeat_jobs({}, lease_timeout=LEASE) == {}


async def test_progress_is_recorded_with_an_event(store: SqlJobStore):
    job = await running(store)
    updated = await store.report_progress(
        **lease(job), progress=Progress(42.5, "transcoding", "3 of 7 minutes")
    )
    assert updated.progress == Progress(42.5, "transcoding", "3 of 7 minutes")
    event = (await store.list_events(after_sequence=0, job_id=job.id))[-1]
    assert event.kind is EventKind.PROGRESS
    assert event.job.progress.percent == 42.5


async def test_a_fractional_percent_is_the_same_in_the_row_and_its_event(store: SqlJobStore):
    """SQLite's JSON keeps 15 significant digits of a REAL: 100/3 once came back from the
    event as 33.3333333333333 while the row held 33.333333333333336."""
    job = await running(store)
    updated = await store.report_progress(**lease(job), progress=Progress(100 / 3))
    event = (await store.list_events(after_sequence=0, job_id=job.id))[-1]
    assert event.job.progress == updated.progress == (await store.get_job(job.id)).progress
    assert updated.progress.percent == pytest.approx(100 / 3, abs=1e-4)


@pytest.mark.parametrize(
    ("progress", "field"),
    [
        (Progress(-1), "percent"),
        (Progress(100.5), "percent"),
        (Progress(float("nan")), "percent"),
        (Progress(1, stage="x" * 65), "stage"),
        (Progress(1, message="x" * 1025), "message"),
    ],
)
async def test_progress_out_of_range_is_refused(store: SqlJobStore, progress: Progress, field: str):
    job = await running(store)
    with pytest.raises(InvalidArgument) as caught:
        await store.report_progress(**lease(job), progress=progress)
    assert caught.value.field == field


async def test_complete_records_the_result(store: SqlJobStore, clock: ManualClock):
    job = await running(store)
    clock.advance(3)
    done = await store.complete_job(**lease(job), result={"output": "/tmp/x.mp3", "bytes": 12})
    assert done.state is JobState.SUCCEEDED
    assert done.result == {"output": "/tmp/x.mp3", "bytes": 12}
    assert done.end_time == clock()
    assert done.progress.percent == 100
    assert await store.get_job(job.id) == done


async def test_success_clears_progress_words_said_before_the_end(store: SqlJobStore):
    """A "step 3/4" stored mid-way would be stale on a finished job; words said at 100%
    are the handler's last and stay."""
    midway, at_end = await running(store), await running(store)
    await store.report_progress(**lease(midway), progress=Progress(75, "sleeping", "step 3/4"))
    await store.report_progress(**lease(at_end), progress=Progress(100, "done", "wrote 3 files"))
    await store.complete_jobs([Completion(j.id, j.lease_id or "", {}) for j in (midway, at_end)])
    for job_id, expected in (
        (midway.id, Progress(100)),
        (at_end.id, Progress(100, "done", "wrote 3 files")),
    ):
        assert (await store.get_job(job_id)).progress == expected
        event = (await store.list_events(after_sequence=0, job_id=job_id))[-1]
        assert (event.kind, event.job.progress) == (EventKind.SUCCEEDED, expected)


async def test_complete_statement_agrees_with_the_state_machine(
    store: SqlJobStore, clock: ManualClock
):
    job = await running(store, timeout=timedelta(minutes=5))
    job = await store.report_progress(**lease(job), progress=Progress(40, "encoding", "half"))
    await store.cancel_job(job.id, reason="too late")
    job = await store.get_job(job.id)
    clock.advance(3)
    done = await store.complete_job(**lease(job), result={"k": [1, "two"]})
    expected, kind = jobs.succeed(job, {"k": [1, "two"]}, now=clock())
    assert done == expected
    assert await store.get_job(job.id) == expected
    event = (await store.list_events(after_sequence=0, job_id=job.id))[-1]
    assert (event.kind, event.job) == (kind, expected)


async def test_complete_jobs_fences_each_completion_on_its_own(store: SqlJobStore):
    first, second, third = [await running(store) for _ in range(3)]
    await store.cancel_job(second.id)
    await store.record_cancelled(**lease(second))
    before = await store.last_sequence()
    done = await store.complete_jobs(
        [
            Completion(first.id, first.lease_id or "", {"n": 1}),
            Completion(second.id, second.lease_id or "", {"n": 2}),
            Completion(third.id, "f" * 32, {"n": 3}),
        ]
    )
    assert done == [True, False, False]
    assert (await store.get_job(first.id)).result == {"n": 1}
    assert (await store.get_job(second.id)).state is JobState.CANCELLED
    assert (await store.get_job(third.id)) == third
    events = await store.list_events(after_sequence=before)
    assert [(e.job.id, e.kind) for e in events] == [(first.id, EventKind.SUCCEEDED)]


async def test_complete_jobs_of_one_is_fenced_like_a_batch(store: SqlJobStore):
    """A batch of one has a statement of its own (`sql.COMPLETE_JOB`)."""
    job = await running(store)
    assert await store.complete_jobs([Completion(job.id, "f" * 32, {"n": 1})]) == [False]
    assert (await store.get_job(job.id)) == job
    assert await store.complete_jobs([Completion(job.id, job.lease_id or "", {"n": 1})]) == [True]
    assert (await store.get_job(job.id)).result == {"n": 1}
    assert await store.complete_jobs([Completion(job.id, job.lease_id or "", {"n": 2})]) == [False]
    assert (await store.get_job(job.id)).result == {"n": 1}


async def test_complete_jobs_with_one_bad_result_writes_nothing(store: SqlJobStore):
    good, bad = await running(store), await running(store)
    before = await store.last_sequence()
    with pytest.raises(InvalidArgument) as caught:
        await store.complete_jobs(
            [
                Completion(good.id, good.lease_id or "", {"ok": True}),
                Completion(bad.id, bad.lease_id or "", {"x": float("nan")}),
            ]
        )
    assert caught.value.field == "completions[1].result"
    assert await store.last_sequence() == before
    assert (await store.get_job(good.id)).state is JobState.RUNNING
    assert await store.complete_jobs([]) == []


async def test_complete_jobs_agrees_with_the_state_machine(store: SqlJobStore, clock: ManualClock):
    plain, busy = await running(store), await running(store, timeout=timedelta(minutes=1))
    busy = await store.report_progress(**lease(busy), progress=Progress(70, "mixing", "x"))
    await store.cancel_job(busy.id)
    busy = await store.get_job(busy.id)
    clock.advance(1)
    results = {plain.id: {"a": 1}, busy.id: {"b": [2, None]}}
    done = await store.complete_jobs(
        [Completion(j.id, j.lease_id or "", results[j.id]) for j in (busy, plain)]
    )
    assert done == [True, True]
    for job in (plain, busy):
        expected, _ = jobs.succeed(job, results[job.id], now=clock())
        assert await store.get_job(job.id) == expected


async def test_retryable_failure_goes_back_to_pending_after_backoff(
    store: SqlJobStore, clock: ManualClock
):
    job = await running(store)
    failed = await store.fail_job(**lease(job), error=JobError("boom", "disk hiccup", True))
    assert failed.state is JobState.PENDING
    assert failed.error == JobError("boom", "disk hiccup", True)
    delay = failed.run_after - clock()
    assert (
        DEFAULT_RETRY_POLICY.nominal_delay(1) / 2 <= delay <= DEFAULT_RETRY_POLICY.nominal_delay(1)
    )
    assert await store.claim_jobs(worker_id="w", types=["t"], limit=1, lease_timeout=LEASE) == []
    clock.advance(delay)
    (again,) = await store.claim_jobs(worker_id="w2", types=["t"], limit=1, lease_timeout=LEASE)
    assert again.attempt == 2
    assert again.lease_id != job.lease_id


async def test_failure_on_the_last_attempt_is_final(store: SqlJobStore):
    job = await running(store, max_attempts=1)
    failed = await store.fail_job(**lease(job), error=JobError("boom", "still broken", True))
    assert failed.state is JobState.FAILED
    assert failed.end_time is not None


async def test_permanent_failure_is_final_even_with_attempts_left(store: SqlJobStore):
    job = await running(store, max_attempts=5)
    failed = await store.fail_job(**lease(job), error=JobError("bad_input", "no such file", False))
    assert failed.state is JobState.FAILED
    assert failed.attempt == 1


async def test_long_error_messages_are_truncated_not_refused(store: SqlJobStore):
    job = await running(store, max_attempts=1)
    failed = await store.fail_job(**lease(job), error=JobError("x" * 500, "m" * 100_000, True))
    assert failed.error is not None
    assert len(failed.error.message) == 4096
    assert len(failed.error.code) == 64


async def test_error_details_are_stored_and_carried_by_the_event(
    store: SqlJobStore, clock: ManualClock
):
    job = await running(store, max_attempts=2)
    details = 'Traceback (most recent call last):\n  ...\nKeyError: "missing"\n'
    error = JobError("handler_error", "KeyError: 'missing'", True, details=details)
    retrying = await store.fail_job(**lease(job), error=error)
    assert retrying.state is JobState.PENDING
    assert retrying.error == error
    clock.advance(retrying.run_after - clock())
    (again,) = await store.claim_jobs(worker_id="w2", types=["t"], limit=1, lease_timeout=LEASE)
    final = dataclasses.replace(error, retryable=False, details="second traceback")
    failed = await store.fail_job(**lease(again), error=final)
    assert (await store.get_job(job.id)).error == final == failed.error
    events = await store.list_events(after_sequence=0, job_id=job.id)
    assert [(e.kind, e.job.error) for e in events if e.job.error] == [
        (EventKind.RETRY_SCHEDULED, error),
        (EventKind.STARTED, error),  # the last attempt's error stays while it runs again
        (EventKind.FAILED, final),
    ]


async def test_long_error_details_keep_their_end_within_16_kib(store: SqlJobStore):
    job = await running(store, max_attempts=1)
    # Multi-byte characters, so the cut may fall inside one.
    details = "".join(f"frame {i} é€\n" for i in range(10_000)) + "KeyError: 'missing'\n"
    failed = await store.fail_job(**lease(job), error=JobError("x", "m", True, details=details))
    assert failed.error is not None
    kept = failed.error.details
    assert len(kept.encode()) <= 16 * 1024
    marker, _, end = kept.partition("\n")
    cut = int(marker.removeprefix("[first ").removesuffix(" bytes cut]"))
    assert cut + len(end.encode()) == len(details.encode())
    assert details.endswith(end)
    assert end.endswith("frame 9999 é€\nKeyError: 'missing'\n")
    assert len(end.encode()) > 16 * 1024 - 64  # nearly the whole budget is kept
    event = (await store.list_events(after_sequence=0, job_id=job.id))[-1]
    assert event.job.error == failed.error


async def test_short_error_details_are_kept_whole(store: SqlJobStore):
    job = await running(store, max_attempts=1)
    details = "é" * (8 * 1024)  # 16 KiB of UTF-8 exactly
    failed = await store.fail_job(**lease(job), error=JobError("x", "m", True, details=details))
    assert failed.error is not None
    assert failed.error.details == details


async def test_record_cancelled_finishes_the_job(store: SqlJobStore):
    job = await running(store)
    await store.cancel_job(job.id)
    cancelled = await store.record_cancelled(**lease(job))
    assert cancelled.state is JobState.CANCELLED
    assert not cancelled.cancel_requested


async def test_release_hands_the_job_back_without_charging_the_attempt(
    store: SqlJobStore, clock: ManualClock
):
    job = await running(store)
    released = await store.release_job(**lease(job))
    assert released.state is JobState.PENDING
    assert released.attempt == 0
    assert released.run_after == clock()
    (again,) = await store.claim_jobs(worker_id="w2", types=["t"], limit=1, lease_timeout=LEASE)
    assert again.attempt == 1


async def test_release_of_a_job_being_cancelled_cancels_it(store: SqlJobStore):
    job = await running(store)
    await store.cancel_job(job.id)
    assert (await store.release_job(**lease(job))).state is JobState.CANCELLED


async def test_a_timed_out_attempt_is_retried_with_the_reapers_error(
    store: SqlJobStore, clock: ManualClock
):
    job = await running(store, timeout=timedelta(seconds=5))
    clock.advance(timedelta(seconds=6))
    timed_out = await store.time_out_job(**lease(job))
    assert timed_out.state is JobState.PENDING
    assert timed_out.error is not None
    assert timed_out.error.code == ErrorCode.DEADLINE_EXCEEDED
    assert timed_out.error.message == "attempt ran past its timeout of 5s"


async def _write_with(store: SqlJobStore, action: str, job: Job) -> None:
    args = lease(job)
    if action == "heartbeat":
        await store.heartbeat_job(**args, lease_timeout=LEASE)
    elif action == "progress":
        await store.report_progress(**args, progress=Progress(50))
    elif action == "complete":
        await store.complete_job(**args, result={})
    elif action == "fail":
        await store.fail_job(**args, error=JobError("x", "y", True))
    elif action == "cancelled":
        await store.record_cancelled(**args)
    elif action == "release":
        await store.release_job(**args)
    elif action == "timeout":
        await store.time_out_job(**args)


ACTIONS = ["heartbeat", "progress", "complete", "fail", "cancelled", "release", "timeout"]


@pytest.mark.parametrize("action", ACTIONS)
async def test_stale_lease_after_reap_changes_nothing(
    store: SqlJobStore, clock: ManualClock, action: str
):
    old = await running(store)
    clock.advance(LEASE + timedelta(seconds=1))
    reaped = await store.reap()
    assert reaped.retried == [old.id]
    clock.advance(timedelta(minutes=10))
    (new,) = await store.claim_jobs(worker_id="w2", types=["t"], limit=1, lease_timeout=LEASE)
    assert new.attempt == 2
    before_job = await store.get_job(old.id)
    before_seq = await store.last_sequence()
    with pytest.raises(LeaseLost):
        await _write_with(store, action, old)
    assert await store.get_job(old.id) == before_job
    assert await store.last_sequence() == before_seq
    await store.complete_job(**lease(new), result={"ok": True})  # the new attempt still works


@pytest.mark.parametrize("action", ACTIONS)
async def test_writes_after_the_job_finished_are_refused(store: SqlJobStore, action: str):
    job = await running(store)
    await store.complete_job(**lease(job), result={})
    with pytest.raises(LeaseLost):
        await _write_with(store, action, job)
    assert (await store.get_job(job.id)).state is JobState.SUCCEEDED


@pytest.mark.parametrize("action", ACTIONS)
async def test_writes_with_a_made_up_lease_are_refused(store: SqlJobStore, action: str):
    job = await running(store)
    forged = dataclasses.replace(job, lease_id="f" * 32)
    with pytest.raises(LeaseLost):
        await _write_with(store, action, forged)
    assert (await store.get_job(job.id)) == job
