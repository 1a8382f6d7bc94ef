"""A store outage while jobs finish must not make any of them run twice.

A real server and a real worker process on a real sqld (JOB_STORE_BACKEND=turso). Jobs
finish while sqld is stopped (SIGSTOP): the worker cannot store their final progress or
results, so it keeps them and retries, renewing their leases, until sqld answers again.
Every job must then end SUCCEEDED having run once: one line in the counting log, one
STARTED event. A worker that drops a result it cannot write leaves its job RUNNING
until the lease expires, and the reaper then runs it a second time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import struct_pb2

from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import ROOT, ServerProcess, start_server, wait_until
from tests.e2e.counting_handlers import LOG_ENV
from tests.sqld import SqldProcess
from tests.worker.conftest import StartWorker, WorkerProcess

pytestmark = pytest.mark.slow
Stub = job_control_pb2_grpc.JobControlStub

JOBS = 8
LEASE = 45.0  # --lease-timeout: the outage below (about 20 s, see the test) is shorter
# The remote driver waits up to 10 s for an answer before it reports the store
# unavailable; a stopped sqld just holds requests until then. So the outage must be
# longer than that for a write to fail at all: the test waits for a failed write
# before it resumes sqld, which is 10 s plus a few after the jobs finish.
REQUEST_TIMEOUT = 10.0


def _payload(**values: object) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


@pytest.fixture
def turso_env(sqld: SqldProcess, tmp_path: Path) -> dict[str, str]:
    assert sqld.token is not None
    return {
        "JOB_STORE_BACKEND": "turso",
        "TURSO_DATABASE_URL": sqld.url,
        "TURSO_AUTH_TOKEN": sqld.token,
        "PYTHONPATH": str(ROOT),
        LOG_ENV: str(tmp_path / "finished.log"),
    }


@pytest.fixture
def server(tmp_path: Path, turso_env: dict[str, str]) -> Iterator[ServerProcess]:
    started = start_server(tmp_path, env=turso_env, args=["--reap-interval", "0.5s"])
    try:
        yield started
    finally:
        started.stop()


def finished_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def states(stub: Stub, ids: list[str]) -> list[int]:
    return [stub.GetJob(api.GetJobRequest(job_id=i), timeout=10).job.state for i in ids]


def alive(worker: WorkerProcess) -> None:
    if worker.process.poll() is not None:
        raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.log}")


def test_jobs_finishing_while_sqld_is_stopped_are_recorded_once_and_never_rerun(
    tmp_path: Path,
    sqld: SqldProcess,
    turso_env: dict[str, str],
    server: ServerProcess,
    start_worker: StartWorker,
):
    finished_log = Path(turso_env[LOG_ENV])
    worker = start_worker(
        tmp_path / "unused.db",
        "--handlers",
        "tests.e2e.counting_handlers",
        "--concurrency",
        str(JOBS),
        "--lease-timeout",
        str(LEASE),
        "--heartbeat-interval",
        "2",
        "--poll-interval",
        "0.1",
        env=turso_env,
    )
    with server.channel() as channel:
        stub = Stub(channel)
        # 2.0 to 3.4 s each, a progress report every 0.1 s: the last report is still
        # waiting for the writer's throttle when the handler returns.
        requests = [
            api.SubmitJobRequest(
                type="test.count_sleep",
                payload=_payload(seconds=2.0 + 0.2 * i, steps=20 + 2 * i),
                max_attempts=3,
            )
            for i in range(JOBS)
        ]
        ids = [
            j.id for j in stub.SubmitJobs(api.SubmitJobsRequest(requests=requests), timeout=30).jobs
        ]

        def all_running() -> bool:
            alive(worker)
            return states(stub, ids) == [pb.JOB_STATE_RUNNING] * JOBS

        wait_until(all_running, timeout=60, interval=0.05, what="every job to run")
        sqld.pause()
        try:
            # Every handler returns during the outage...
            wait_until(
                lambda: len(finished_lines(finished_log)) == JOBS,
                timeout=30,
                interval=0.05,
                what="every handler to finish",
            )
            # ...and the worker fails to store what they left (today's wording, or the
            # old one, so that the old worker fails this test for the right reason).
            wait_until(
                lambda: re.search(r"recording outcomes failed|could not record job", worker.log),
                timeout=REQUEST_TIMEOUT + 20,
                interval=0.1,
                what="a write of a finished job to fail",
            )
            alive(worker)
        finally:
            sqld.resume()

        wait_until(
            lambda: states(stub, ids) == [pb.JOB_STATE_SUCCEEDED] * JOBS,
            timeout=120,
            interval=0.2,
            what="every job to succeed",
        )
        histories = {
            i: [
                m.event
                for m in stub.WatchJob(api.WatchJobRequest(job_id=i, after_sequence=0), timeout=30)
            ]
            for i in ids
        }
    alive(worker)

    # Each job ran exactly once: one completion of its handler, attempt 1.
    lines = finished_lines(finished_log)
    reruns = [line for line in lines if not line.endswith(" 1")]
    assert not reruns, f"{len(reruns)} of {JOBS} jobs ran again after the outage: {reruns}"
    assert sorted(lines) == sorted(f"{i} 1" for i in ids)
    for job_id, events in histories.items():
        started = [e for e in events if e.kind == pb.EVENT_KIND_STARTED]
        assert len(started) == 1, (job_id, [pb.EventKind.Name(e.kind) for e in events])
        final = events[-1]
        assert final.kind == pb.EVENT_KIND_SUCCEEDED
        assert final.job.attempt == 1
        # The handler's last progress report was stored before the result.
        steps = int(final.job.result["steps"])
        assert final.job.progress.message == f"step {steps}/{steps}", final.job.progress

    log = worker.log
    # One line when the episode began, not one per retry; one when it ended.
    assert len(re.findall(r"recording outcomes failed", log)) == 1, log
    assert "recording outcomes: store reachable again after" in log, log
    assert "could not record" not in log
    assert "will run again" not in log
