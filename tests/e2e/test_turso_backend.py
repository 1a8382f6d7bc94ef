"""The whole system on JOB_STORE_BACKEND=turso over HTTP: a server, two workers and a
watcher sharing one remote libSQL database, a real sqld with JWT auth."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2

from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import (
    BIN,
    ServerProcess,
    health_status,
    start_server,
    wait_until,
)
from tests.sqld import SqldProcess

pytestmark = pytest.mark.slow
K = pb.EventKind


@dataclass
class RemoteSystem:
    sqld: SqldProcess
    env: dict[str, str]
    server: ServerProcess
    workers: list[subprocess.Popen[bytes]]


def _worker(directory: Path, env: dict[str, str], n: int) -> subprocess.Popen[bytes]:
    log = (directory / f"worker-{n}.log").open("wb")
    with log:
        return subprocess.Popen(
            [
                str(BIN / "jobcontrol-worker"),
                "--concurrency",
                "4",
                "--lease-timeout",
                "4",
                "--heartbeat-interval",
                "1",
                "--poll-interval",
                "0.1",
                "--drain-grace",
                "2",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )


@pytest.fixture
def system(tmp_path: Path, sqld: SqldProcess) -> Iterator[RemoteSystem]:
    assert sqld.token is not None
    env = {
        "JOB_STORE_BACKEND": "turso",
        "TURSO_DATABASE_URL": sqld.url,
        "TURSO_AUTH_TOKEN": sqld.token,
    }
    server = start_server(tmp_path, env=env, args=["--reap-interval", "0.5s"])
    workers = [_worker(tmp_path, env, n) for n in range(2)]
    running = RemoteSystem(sqld, env, server, workers)
    try:
        yield running
    finally:
        for worker in running.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in running.workers:
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(5)
        running.server.stop()


def _payload(**values: object) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def test_a_job_streams_to_succeeded_and_a_cancel_reaches_the_worker(system: RemoteSystem):
    with system.server.channel() as channel:
        stub = job_control_pb2_grpc.JobControlStub(channel)
        job = stub.SubmitJob(
            api.SubmitJobRequest(type="demo.sleep", payload=_payload(seconds=1, steps=5)),
            timeout=10,
        ).job
        events = [m.event for m in stub.WatchJob(api.WatchJobRequest(job_id=job.id), timeout=60)]
        kinds = [e.kind for e in events if e.kind != K.EVENT_KIND_QUEUE_POSITION]
        assert kinds[-1] == K.EVENT_KIND_SUCCEEDED
        assert K.EVENT_KIND_STARTED in kinds
        assert events[-1].job.progress.percent == 100

        long = stub.SubmitJob(
            api.SubmitJobRequest(type="demo.sleep", payload=_payload(seconds=60, steps=60)),
            timeout=10,
        ).job
        stream = stub.WatchJob(api.WatchJobRequest(job_id=long.id), timeout=60)
        for message in stream:
            if message.event.job.state == pb.JOB_STATE_RUNNING:
                break
        cancelled_at = time.monotonic()
        stub.CancelJob(api.CancelJobRequest(job_id=long.id, reason="e2e"), timeout=10)
        rest = [m.event for m in stream]
        took = time.monotonic() - cancelled_at
    assert rest[-1].kind == K.EVENT_KIND_CANCELLED
    assert rest[-1].job.state == pb.JOB_STATE_CANCELLED
    print(f"cancel over the remote driver reached CANCELLED in {took * 1000:.0f} ms")


def test_an_outage_of_the_database_is_survived_without_running_an_attempt_twice(
    system: RemoteSystem,
):
    with system.server.channel() as channel:
        stub = job_control_pb2_grpc.JobControlStub(channel)
        requests = [
            api.SubmitJobRequest(
                type="demo.sleep", payload=_payload(seconds=0.2 + (i % 4) * 0.1, steps=2)
            )
            for i in range(40)
        ]
        ids = [
            j.id for j in stub.SubmitJobs(api.SubmitJobsRequest(requests=requests), timeout=30).jobs
        ]

        def some_succeeded() -> bool:
            page = stub.ListJobs(
                api.ListJobsRequest(
                    filter=api.JobFilter(states=[pb.JOB_STATE_SUCCEEDED]), page_size=1
                ),
                timeout=10,
            )
            return bool(page.jobs)

        wait_until(some_succeeded, timeout=60, interval=0.1, what="a first job to succeed")
        system.sqld.stop()
        outage_started = time.monotonic()

        def refused() -> grpc.StatusCode | None:
            try:
                stub.SubmitJob(api.SubmitJobRequest(type="demo.sleep"), timeout=10)
            except grpc.RpcError as error:
                return error.code()
            return None

        assert wait_until(refused, timeout=20, interval=0.2, what="an RPC to fail") == (
            grpc.StatusCode.UNAVAILABLE
        )
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        wait_until(lambda: health_status(channel) == not_serving, timeout=20, what="NOT_SERVING")
        # The outage itself lasts a few seconds: long enough for heartbeats to fail.
        time.sleep(max(0.0, 3.0 - (time.monotonic() - outage_started)))
        system.sqld.restart()  # same port, same data

        serving = health_pb2.HealthCheckResponse.SERVING
        wait_until(lambda: health_status(channel) == serving, timeout=30, what="SERVING again")

        def all_terminal() -> bool:
            jobs = [stub.GetJob(api.GetJobRequest(job_id=i), timeout=10).job for i in ids]
            return all(
                j.state in (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
                for j in jobs
            )

        wait_until(all_terminal, timeout=120, interval=0.5, what="every job to finish")
        histories = {
            i: [
                m.event
                for m in stub.WatchJob(api.WatchJobRequest(job_id=i, after_sequence=0), timeout=30)
            ]
            for i in ids
        }
    for job_id, events in histories.items():
        attempts = [e.job.attempt for e in events if e.kind == K.EVENT_KIND_STARTED]
        assert attempts == sorted(set(attempts)), f"{job_id} ran an attempt twice: {attempts}"
        finals = [e for e in events if e.kind == K.EVENT_KIND_SUCCEEDED]
        assert len(finals) <= 1
        assert events[-1].job.state == pb.JOB_STATE_SUCCEEDED, (job_id, events[-1])


def test_while_sqld_hangs_the_server_answers_health_and_streams_flow_from_what_it_read(
    tmp_path: Path, sqld: SqldProcess
):
    """A store call waiting on a hung database must not stop the process: Health/Check
    answers, and a dashboard's stream delivers the events the server had already read.
    (With a driver that holds the GIL through the network wait, neither happens.)"""
    assert sqld.token is not None
    env = {
        "JOB_STORE_BACKEND": "turso",
        "TURSO_DATABASE_URL": sqld.url,
        "TURSO_AUTH_TOKEN": sqld.token,
    }
    server = start_server(tmp_path, env=env)
    try:
        with server.channel() as channel:
            stub = job_control_pb2_grpc.JobControlStub(channel)
            start = stub.SubmitJob(api.SubmitJobRequest(type="e2e.nobody"), timeout=10).job
            dashboard = stub.WatchJobs(
                api.WatchJobsRequest(filter=api.JobFilter(types=["e2e.nobody"]), after_sequence=0),
                timeout=120,
            )
            assert next(dashboard).event.job.id == start.id
            # Nobody serves this type, so these 200 events are all the feed holds.
            requests = [api.SubmitJobRequest(type="e2e.nobody") for _ in range(200)]
            ids = [
                j.id
                for j in stub.SubmitJobs(api.SubmitJobsRequest(requests=requests), timeout=30).jobs
            ]
            # The 200 events committed in one statement, so the server's read that
            # brought the first of them brought them all.
            first = next(dashboard).event.job.id
            sqld.pause()
            try:
                received = [first] + [next(dashboard).event.job.id for _ in ids[1:]]
                # Health answers all along, until the server's own ping gives up on the
                # hung database and says so.
                answers: list[int | None] = []
                not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

                def check() -> bool:
                    answers.append(health_status(channel))
                    return answers[-1] == not_serving

                wait_until(check, timeout=60, interval=0.2, what="NOT_SERVING")
                still_paused = sqld.running and _stopped(sqld.pid)
            finally:
                sqld.resume()
            dashboard.cancel()
    finally:
        server.stop()
    assert received == ids
    assert None not in answers, answers
    assert still_paused, "sqld came back before the checks ended: they proved nothing"


def _stopped(pid: int) -> bool:
    """Whether the process is stopped by a signal (state T in /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0] == "T"
