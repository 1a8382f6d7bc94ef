"""Slow readers against a real server: a WatchJobs reader that stops reading while
thousands of events happen is kept current (each job's newest and every terminal state)
instead of cut off, and is ended only past its bound; a WatchJob reader still gets
every state change of its job.

The reader is a real gRPC client that stops reading; the changes are written straight
to the store by the test, as workers in other processes would, and reach the server
through its event tailer. BDP probing is off on the reader's channel so the transport
does not grow its window and soak up the backlog itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from jobcontrol.jobs import JobError, JobSpec, Progress
from jobcontrol.retry import RetryPolicy
from jobcontrol.server.hub import BACKLOG_JOBS
from jobcontrol.store import Completion
from jobcontrol.store.sqlite import SqliteJobStore
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import ServerProcess, start_server, wait_until_async

K = pb.EventKind
LEASE = timedelta(seconds=60)
TYPE = "slow.reader"
TERMINAL = {pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED}


def slow_channel(server: ServerProcess) -> grpc.Channel:
    return grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)])


async def submit(store: SqliteJobStore, count: int) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, 1000):
        specs = [JobSpec(type=TYPE) for _ in range(min(1000, count - start))]
        ids += [submitted.job.id for submitted in await store.create_jobs(specs)]
    return ids


async def run_to_success(store: SqliteJobStore, count: int) -> None:
    """Claim, report progress on and complete `count` jobs: four events each."""
    done = 0
    while done < count:
        claimed = await store.claim_jobs(
            worker_id="test", types=[TYPE], limit=min(500, count - done), lease_timeout=LEASE
        )
        assert claimed, f"only {done} of {count} jobs were claimable"
        for job in claimed:
            assert job.lease_id is not None
            await store.report_progress(job_id=job.id, lease_id=job.lease_id, progress=Progress(50))
        completed = await store.complete_jobs(
            [Completion(job_id=job.id, lease_id=job.lease_id or "", result={}) for job in claimed]
        )
        assert all(completed)
        done += len(claimed)


def read_until(
    stream: Iterator[api.WatchJobsResponse], done: Callable[[Sequence[pb.JobEvent]], bool]
) -> list[pb.JobEvent]:
    events: list[pb.JobEvent] = []
    for message in stream:
        events.append(message.event)
        if done(events):
            return events
    raise AssertionError(f"the stream ended after {len(events)} messages")


def read_into(events: list[pb.JobEvent], stream: Iterator[api.WatchJobsResponse]) -> None:
    """Every message until the stream ends; those read stay read if it ends in error."""
    for message in stream:
        events.append(message.event)


def assert_in_sequence_order(events: Sequence[pb.JobEvent]) -> None:
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences)), "messages out of sequence order"


async def test_a_slow_jobs_reader_gets_every_jobs_terminal_state_and_is_not_cut_off(
    tmp_path: Path,
):
    jobs = 3000  # 12,000 events, 9,000 of them state changes: far past WatchJob's buffer
    store = await SqliteJobStore.open(tmp_path / "jobs.db")
    server = start_server(tmp_path)
    try:
        with slow_channel(server) as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            stream = stub.WatchJobs(
                api.WatchJobsRequest(filter=api.JobFilter(types=[TYPE])), timeout=120
            )
            (marker,) = await submit(store, 1)
            first = next(stream).event  # subscribed; now stop reading
            assert first.job.id == marker
            ids = {marker, *await submit(store, jobs)}
            await run_to_success(store, len(ids))
            terminal: dict[str, pb.JobEvent] = {}

            def all_ended(events: Sequence[pb.JobEvent]) -> bool:
                last = events[-1]
                if last.job.state in TERMINAL:
                    terminal[last.job.id] = last
                return ids <= terminal.keys()

            events = read_until(stream, all_ended)
            stream.cancel()
    finally:
        server.stop()
        await store.close()

    assert_in_sequence_order([first, *events])
    assert all(e.kind == K.EVENT_KIND_SUCCEEDED for e in terminal.values())
    assert len(events) < 4 * len(ids), "nothing was coalesced: the reader was never behind"
    order = [pb.JOB_STATE_PENDING, pb.JOB_STATE_RUNNING, pb.JOB_STATE_SUCCEEDED]
    reached: dict[str, int] = {}
    for event in events:  # no job's messages go back to an earlier state
        rank = order.index(event.job.state)
        assert rank >= reached.get(event.job.id, 0), event
        reached[event.job.id] = rank


async def test_a_jobs_reader_behind_on_too_many_jobs_is_ended_with_a_resume_point(
    tmp_path: Path,
):
    jobs = BACKLOG_JOBS + 2000  # more distinct jobs than the bound, past what transport holds
    store = await SqliteJobStore.open(tmp_path / "jobs.db")
    server = start_server(tmp_path)
    try:
        with slow_channel(server) as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            request = api.WatchJobsRequest(filter=api.JobFilter(types=[TYPE]))
            stream = stub.WatchJobs(request, timeout=120)
            (marker,) = await submit(store, 1)
            received = [next(stream).event]
            assert received[0].job.id == marker
            ids = set(await submit(store, jobs))
            with pytest.raises(grpc.RpcError) as ended:
                read_into(received, stream)
            assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = ended.value.details() or ""
            assert f"more than {BACKLOG_JOBS:,} jobs" in details
            resume_at = re.search(r"resume with after_sequence=(\d+)", details)
            assert resume_at, details
            assert int(resume_at.group(1)) == received[-1].sequence

            request.after_sequence = int(resume_at.group(1))
            resumed = stub.WatchJobs(request, timeout=120)
            missing = ids - {e.job.id for e in received}

            def none_missing(events: Sequence[pb.JobEvent]) -> bool:
                missing.discard(events[-1].job.id)
                return not missing

            rest = read_until(resumed, none_missing)
            resumed.cancel()
    finally:
        server.stop()
        await store.close()

    assert_in_sequence_order(received)
    assert_in_sequence_order(rest)
    assert rest[0].sequence > received[-1].sequence


async def test_a_slow_job_reader_still_gets_every_state_change(tmp_path: Path):
    quick_retry = RetryPolicy(base=timedelta(milliseconds=10), cap=timedelta(milliseconds=10))
    store = await SqliteJobStore.open(tmp_path / "jobs.db", retry_policy=quick_retry)
    server = start_server(tmp_path)
    attempts = 4
    try:
        job = (await store.create_job(JobSpec(type=TYPE, max_attempts=attempts))).job
        with slow_channel(server) as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            stream = stub.WatchJob(api.WatchJobRequest(job_id=job.id), timeout=120)
            assert next(stream).event.kind == K.EVENT_KIND_SNAPSHOT  # now stop reading
            for attempt in range(1, attempts + 1):
                lease = await claim(store)
                for percent in range(1, 1000):
                    progress = Progress(percent / 10)
                    await store.report_progress(job_id=job.id, lease_id=lease, progress=progress)
                if attempt < attempts:
                    error = JobError("flaky", "again", retryable=True)
                    await store.fail_job(job_id=job.id, lease_id=lease, error=error)
                else:
                    await store.complete_job(job_id=job.id, lease_id=lease, result={})
            events = [message.event for message in stream]  # ends after the terminal event
    finally:
        server.stop()
        await store.close()

    assert_in_sequence_order(events)
    changes = [e.kind for e in events if e.kind != K.EVENT_KIND_PROGRESS]
    assert changes == [K.EVENT_KIND_STARTED, K.EVENT_KIND_RETRY_SCHEDULED] * (attempts - 1) + [
        K.EVENT_KIND_STARTED,
        K.EVENT_KIND_SUCCEEDED,
    ]
    progress = [e for e in events if e.kind == K.EVENT_KIND_PROGRESS]
    assert len(progress) < attempts * 999, "nothing was coalesced: the reader was never behind"


async def claim(store: SqliteJobStore) -> str:
    """Claim the one job once its retry backoff has passed."""

    async def claimed() -> str | None:
        jobs = await store.claim_jobs(worker_id="test", types=[TYPE], limit=1, lease_timeout=LEASE)
        return jobs[0].lease_id if jobs else None

    return await wait_until_async(claimed, timeout=30, what="the job to be claimable")
