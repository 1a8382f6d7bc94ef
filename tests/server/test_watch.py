"""WatchJob and WatchJobs against real server processes, with changes made by other
processes, server restarts and shutdowns."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from jobcontrol.jobs import JobSpec, Progress
from jobcontrol.store.sqlite import SqliteJobStore
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import ROOT, ServerProcess, start_server

K = pb.EventKind
LEASE = timedelta(seconds=30)


def test_watch_sees_every_transition_made_by_another_process_in_order(
    server: ServerProcess, stub: job_control_pb2_grpc.JobControlStub
):
    job = stub.SubmitJob(api.SubmitJobRequest(type="demo.sleep"), timeout=5).job
    stream = stub.WatchJob(api.WatchJobRequest(job_id=job.id), timeout=30)
    first = next(stream).event
    assert first.kind == K.EVENT_KIND_SNAPSHOT
    assert first.job.state == pb.JOB_STATE_PENDING
    driver = subprocess.run(
        [sys.executable, "-m", "tests.server.job_driver", str(server.store_path), job.id],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert driver.returncode == 0, driver.stderr
    events = [message.event for message in stream]  # ends by itself after the terminal event

    transitions = [
        e.kind for e in events if e.kind not in (K.EVENT_KIND_PROGRESS, K.EVENT_KIND_QUEUE_POSITION)
    ]
    assert transitions == [
        K.EVENT_KIND_STARTED,
        K.EVENT_KIND_RETRY_SCHEDULED,
        K.EVENT_KIND_STARTED,
        K.EVENT_KIND_SUCCEEDED,
    ]
    stored = [e for e in events if e.kind != K.EVENT_KIND_QUEUE_POSITION]
    sequences = [e.sequence for e in stored]
    assert sequences == sorted(set(sequences))
    assert sequences[0] > first.sequence
    progress = [e.job.progress.percent for e in events if e.kind == K.EVENT_KIND_PROGRESS]
    assert set(progress) <= {10, 40, 90}
    assert events[-1].job.state == pb.JOB_STATE_SUCCEEDED
    assert dict(events[-1].job.result) == {"ok": True}


async def _run_job_partly(store: SqliteJobStore, job_id: str) -> str:
    (job,) = await store.claim_jobs(
        worker_id="w", types=["demo.sleep"], limit=1, lease_timeout=LEASE
    )
    assert job.id == job_id
    assert job.lease_id is not None
    await store.report_progress(job_id=job_id, lease_id=job.lease_id, progress=Progress(10))
    return job.lease_id


async def test_resume_after_kill_9_replays_exactly_the_missed_events(tmp_path: Path):
    store = await SqliteJobStore.open(tmp_path / "jobs.db")
    first_server = start_server(tmp_path)
    try:
        job = (await store.create_job(JobSpec(type="demo.sleep"))).job
        with first_server.channel() as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            stream = stub.WatchJob(api.WatchJobRequest(job_id=job.id), timeout=30)
            seen = [next(stream).event]
            lease = await _run_job_partly(store, job.id)
            while len(seen) < 3:  # snapshot, STARTED, PROGRESS 10
                seen.append(next(stream).event)
            assert [e.kind for e in seen] == [
                K.EVENT_KIND_SNAPSHOT,
                K.EVENT_KIND_STARTED,
                K.EVENT_KIND_PROGRESS,
            ]
            first_server.kill()
            with pytest.raises(grpc.RpcError) as broken:
                next(stream)
            assert broken.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        first_server.kill()
    # While no server runs, the worker carries on.
    await store.report_progress(job_id=job.id, lease_id=lease, progress=Progress(60))
    await store.complete_job(job_id=job.id, lease_id=lease, result={"n": 1})
    second_server = start_server(tmp_path)
    try:
        with second_server.channel() as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            resumed = stub.WatchJob(
                api.WatchJobRequest(job_id=job.id, after_sequence=seen[-1].sequence), timeout=30
            )
            rest = [m.event for m in resumed]
    finally:
        second_server.stop()
        await store.close()
    assert [e.kind for e in rest] == [K.EVENT_KIND_PROGRESS, K.EVENT_KIND_SUCCEEDED]
    assert rest[0].job.progress.percent == 60
    assert rest[0].sequence == seen[-1].sequence + 1
    assert rest[1].sequence == seen[-1].sequence + 2


async def test_resume_from_zero_replays_the_whole_history(tmp_path: Path):
    store = await SqliteJobStore.open(tmp_path / "jobs.db")
    server = start_server(tmp_path)
    try:
        job = (await store.create_job(JobSpec(type="demo.sleep"))).job
        lease = await _run_job_partly(store, job.id)
        await store.complete_job(job_id=job.id, lease_id=lease, result={})
        with server.channel() as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            events = [
                m.event
                for m in stub.WatchJob(
                    api.WatchJobRequest(job_id=job.id, after_sequence=0), timeout=10
                )
            ]
    finally:
        server.stop()
        await store.close()
    assert [e.kind for e in events] == [
        K.EVENT_KIND_SUBMITTED,
        K.EVENT_KIND_STARTED,
        K.EVENT_KIND_PROGRESS,
        K.EVENT_KIND_SUCCEEDED,
    ]


async def test_watch_jobs_follows_matching_jobs_and_replays_from_a_sequence(tmp_path: Path):
    store = await SqliteJobStore.open(tmp_path / "jobs.db")
    server = start_server(tmp_path)
    try:
        with server.channel() as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            stream = stub.WatchJobs(
                api.WatchJobsRequest(filter=api.JobFilter(labels={"team": "a"}), after_sequence=0),
                timeout=30,
            )
            received: list[pb.JobEvent] = []
            done = threading.Event()

            def read() -> None:
                try:
                    for message in stream:
                        received.append(message.event)
                        if len(received) == 3:
                            done.set()
                            return
                except grpc.RpcError:
                    done.set()

            reader = threading.Thread(target=read, daemon=True)
            before = (await store.create_job(JobSpec(type="t", labels={"team": "a"}))).job
            reader.start()
            await store.create_job(JobSpec(type="t", labels={"team": "b"}))
            after = (await store.create_job(JobSpec(type="t", labels={"team": "a"}))).job
            await store.cancel_job(after.id)
            assert done.wait(20)
            stream.cancel()
            reader.join(5)
    finally:
        server.stop()
        await store.close()
    assert [(e.job.id, e.kind) for e in received] == [
        (before.id, K.EVENT_KIND_SUBMITTED),
        (after.id, K.EVENT_KIND_SUBMITTED),
        (after.id, K.EVENT_KIND_CANCELLED),
    ]


def test_shutdown_ends_open_streams_with_unavailable_and_a_resume_point(
    server: ServerProcess, stub: job_control_pb2_grpc.JobControlStub
):
    job = stub.SubmitJob(api.SubmitJobRequest(type="demo.sleep"), timeout=5).job
    stream = stub.WatchJob(api.WatchJobRequest(job_id=job.id), timeout=30)
    snapshot = next(stream).event
    assert server.stop() == 0
    with pytest.raises(grpc.RpcError) as ended:
        next(stream)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert f"after_sequence={snapshot.sequence}" in (ended.value.details() or "")


async def test_a_watched_pending_job_gets_queue_position_updates(tmp_path: Path):
    store = await SqliteJobStore.open(tmp_path / "jobs.db")
    server = start_server(tmp_path)
    try:
        ahead = [(await store.create_job(JobSpec(type="demo.sleep"))).job for _ in range(2)]
        mine = (await store.create_job(JobSpec(type="demo.sleep"))).job
        with server.channel() as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            stream = stub.WatchJob(api.WatchJobRequest(job_id=mine.id), timeout=30)
            snapshot = next(stream).event
            assert snapshot.job.queue_position == 2
            await store.claim_jobs(
                worker_id="w", types=["demo.sleep"], limit=1, lease_timeout=LEASE
            )
            update = next(stream).event  # the next position tick (about a second)
            stream.cancel()
    finally:
        server.stop()
        await store.close()
    assert ahead
    assert update.kind == K.EVENT_KIND_QUEUE_POSITION
    assert update.job.queue_position == 1
    assert update.sequence == snapshot.sequence
