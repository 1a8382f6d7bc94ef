"""Contract: submitting jobs, idempotency, validation, reading them back."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from jobcontrol.errors import AlreadyExists, InvalidArgument, JobNotFound
from jobcontrol.ids import new_id
from jobcontrol.jobs import DEFAULT_MAX_ATTEMPTS, EventKind, JobSpec, JobState
from jobcontrol.store import JobFilter
from jobcontrol.store.core import SqlJobStore
from tests.conftest import ManualClock


async def test_submit_stores_a_pending_job_with_defaults(store: SqlJobStore, clock: ManualClock):
    submitted = await store.create_job(
        JobSpec(type="demo.sleep", payload={"seconds": 1.5, "nested": {"a": [1, "x"]}})
    )
    assert submitted.created
    job = submitted.job
    assert job.state is JobState.PENDING
    assert job.attempt == 0
    assert job.max_attempts == DEFAULT_MAX_ATTEMPTS
    assert job.create_time == job.run_after == clock()
    fetched = await store.get_job(job.id)
    assert fetched.payload == {"seconds": 1.5, "nested": {"a": [1, "x"]}}
    assert fetched.queue_position == 0
    assert fetched == dataclasses.replace(job, queue_position=0)


async def test_submit_with_delay_or_run_after_schedules_the_job(
    store: SqlJobStore, clock: ManualClock
):
    delayed = (await store.create_job(JobSpec(type="t", delay=timedelta(seconds=90)))).job
    assert delayed.run_after == clock() + timedelta(seconds=90)
    at = clock() + timedelta(hours=1)
    scheduled = (await store.create_job(JobSpec(type="t", run_after=at))).job
    assert scheduled.run_after == at


async def test_same_idempotency_key_and_request_returns_the_existing_job(store: SqlJobStore):
    spec = JobSpec(type="audio.transcode", payload={"input": "a.wav"}, idempotency_key="req-1")
    first = await store.create_job(spec)
    again = await store.create_job(spec)
    assert first.created
    assert not again.created
    assert again.job.id == first.job.id
    events = await store.list_events(after_sequence=0)
    assert [e.kind for e in events] == [EventKind.SUBMITTED]


async def test_same_idempotency_key_with_a_different_request_is_refused(store: SqlJobStore):
    await store.create_job(JobSpec(type="t", payload={"n": 1}, idempotency_key="req-1"))
    with pytest.raises(AlreadyExists, match="req-1"):
        await store.create_job(JobSpec(type="t", payload={"n": 2}, idempotency_key="req-1"))


async def test_delay_makes_an_idempotent_retry_match_even_later(
    store: SqlJobStore, clock: ManualClock
):
    spec = JobSpec(type="t", delay=timedelta(seconds=5), idempotency_key="k")
    first = await store.create_job(spec)
    clock.advance(3)
    again = await store.create_job(spec)
    assert not again.created
    assert again.job.id == first.job.id


async def test_batch_submit_is_all_or_nothing(store: SqlJobStore):
    await store.create_job(JobSpec(type="t", payload={"n": 1}, idempotency_key="taken"))
    specs = [JobSpec(type="t", payload={"i": i}) for i in range(5)]
    specs.append(JobSpec(type="t", payload={"n": 2}, idempotency_key="taken"))
    with pytest.raises(AlreadyExists):
        await store.create_jobs(specs)
    page = await store.list_jobs(job_filter=JobFilter(), page_size=100)
    assert len(page.jobs) == 1
    assert await store.last_sequence() == 1


async def test_a_batch_too_big_for_one_statement_is_still_all_or_nothing(store: SqlJobStore):
    """Past MAX_ARGUMENT_BYTES a batch is several INSERTs (sqld refuses bigger arguments):
    they land together, in order, or not at all."""
    big = "x" * 200_000
    specs = [JobSpec(type="t", payload={"i": i, "blob": big}) for i in range(20)]
    results = await store.create_jobs(specs)
    events = await store.list_events(after_sequence=0)
    assert [e.job.payload["i"] for e in events] == list(range(20))
    assert [r.job.id for r in results] == [e.job.id for e in events]

    specs.append(JobSpec(type="t", payload={"n": 2}, idempotency_key="taken"))
    await store.create_job(JobSpec(type="t", idempotency_key="taken"))
    before = await store.last_sequence()
    with pytest.raises(AlreadyExists):
        await store.create_jobs(specs)
    assert await store.last_sequence() == before
    counts = await store.count_jobs_by_state()
    assert sum(counts.values()) == 21


async def test_batch_submit_returns_jobs_in_request_order(store: SqlJobStore):
    specs = [JobSpec(type="t", payload={"i": i}) for i in range(50)]
    results = await store.create_jobs(specs)
    assert [r.job.payload["i"] for r in results] == list(range(50))
    assert all(r.created for r in results)


async def test_batch_field_errors_name_the_failing_request(store: SqlJobStore):
    specs = [JobSpec(type="t"), JobSpec(type="t", priority=-1)]
    with pytest.raises(InvalidArgument) as caught:
        await store.create_jobs(specs)
    assert caught.value.field == "requests[1].priority"


@pytest.mark.parametrize("count", [0, 1001])
async def test_batch_size_is_limited(store: SqlJobStore, count: int):
    with pytest.raises(InvalidArgument, match="between 1 and 1000"):
        await store.create_jobs([JobSpec(type="t")] * count)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (JobSpec(type=""), "type"),
        (JobSpec(type="no spaces"), "type"),
        (JobSpec(type="1starts.with.digit"), "type"),
        (JobSpec(type="a" * 129), "type"),
        (JobSpec(type="t", priority=-1), "priority"),
        (JobSpec(type="t", priority=1001), "priority"),
        (JobSpec(type="t", max_attempts=0), "max_attempts"),
        (JobSpec(type="t", max_attempts=101), "max_attempts"),
        (JobSpec(type="t", delay=timedelta(seconds=-1)), "delay"),
        (JobSpec(type="t", timeout=timedelta(0)), "timeout"),
        (JobSpec(type="t", timeout=timedelta(seconds=-5)), "timeout"),
        (JobSpec(type="t", payload={"x": float("nan")}), "payload"),
        (JobSpec(type="t", payload={"x": "\ud800"}), "payload"),
        (JobSpec(type="t", payload={"x": "a" * (1024 * 1024)}), "payload"),
        (JobSpec(type="t", idempotency_key=""), "idempotency_key"),
        (JobSpec(type="t", labels={"bad key": "v"}), "labels['bad key']"),
        (JobSpec(type="t", labels={"k": "v\x00"}), "labels['k']"),
    ],
)
async def test_submit_refuses_invalid_fields(store: SqlJobStore, spec: JobSpec, field: str):
    with pytest.raises(InvalidArgument) as caught:
        await store.create_job(spec)
    assert caught.value.field == field
    assert await store.last_sequence() == 0


async def test_payload_just_under_the_limit_is_accepted(store: SqlJobStore):
    big = "a" * (1024 * 1024 - len('{"x":""}'))
    job = (await store.create_job(JobSpec(type="t", payload={"x": big}))).job
    assert (await store.get_job(job.id)).payload["x"] == big


async def test_get_unknown_job_is_not_found(store: SqlJobStore):
    with pytest.raises(JobNotFound):
        await store.get_job(new_id())


@pytest.mark.parametrize("bad_id", ["", "nope", "123", "x" * 36, "'; DROP TABLE jobs; --"])
async def test_get_with_malformed_id_is_invalid_argument(store: SqlJobStore, bad_id: str):
    with pytest.raises(InvalidArgument) as caught:
        await store.get_job(bad_id)
    assert caught.value.field == "job_id"
