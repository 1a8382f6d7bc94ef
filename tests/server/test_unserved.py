"""Job types no live worker serves: `Job.unserved`, SubmitJob's warnings, what a watcher
is told when a worker for the type comes or goes, and `--reject-unserved-types`; with a
real server and real `jobcontrol-worker` processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from jobcontrol.server.metrics import Metrics, metered
from jobcontrol.server.served import MAX_AGE_SECONDS, ServedTypes
from jobcontrol.store.sqlite import SqliteJobStore
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import BIN, ServerProcess, read_metrics, start_server, wait_until
from tests.worker.conftest import WorkerProcess

Stub = job_control_pb2_grpc.JobControlStub
StartWorker = Callable[..., WorkerProcess]


def warning(job_type: str) -> str:
    return (
        f'no live worker serves job type "{job_type}"; the job waits until one registers '
        "(ListWorkers shows the types workers serve)"
    )


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """`start_worker(store_path, *args)`: a `jobcontrol-worker` process, stopped at the end."""
    started: list[WorkerProcess] = []

    def start(store_path: Path, *args: str) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}-{time.monotonic_ns()}.log"
        command = [str(BIN / "jobcontrol-worker"), "--store-path", str(store_path), *args]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
            )
        worker = WorkerProcess(process, log_path)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.shut_down()


def submit(stub: Stub, job_type: str, *, later: bool = False) -> api.SubmitJobResponse:
    """A job of `job_type`; `later` delays it an hour, so a worker serving the type
    leaves it PENDING."""
    request = api.SubmitJobRequest(type=job_type)
    if later:
        request.delay.CopyFrom(duration_pb2.Duration(seconds=3600))
    response: api.SubmitJobResponse = stub.SubmitJob(request, timeout=10)
    return response


def get(stub: Stub, job_id: str) -> pb.Job:
    job: pb.Job = stub.GetJob(api.GetJobRequest(job_id=job_id), timeout=10).job
    return job


def wait_served(stub: Stub, job_id: str, served: bool) -> pb.Job:
    """The PENDING job once the server counts a live worker for its type (or none)."""
    return wait_until(
        lambda: (job := get(stub, job_id)).unserved is not served and job,
        timeout=20,
        interval=0.05,
        what=f"job {job_id} to be {'served' if served else 'unserved'}",
    )


def wait_worker(stub: Stub, worker: WorkerProcess) -> None:
    def registered() -> bool:
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited:\n{worker.log}")
        workers = stub.ListWorkers(api.ListWorkersRequest(), timeout=10).workers
        return any(w.pid == worker.pid for w in workers)

    wait_until(registered, timeout=30, interval=0.05, what="the worker to register")


class Watch:
    """A WatchJob stream read on a thread, its events kept in order."""

    def __init__(self, server: ServerProcess, job_id: str) -> None:
        self._channel = server.channel()
        self._call = Stub(self._channel).WatchJob(api.WatchJobRequest(job_id=job_id))
        self.events: list[pb.JobEvent] = []
        self.error: grpc.RpcError | None = None
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self.events.append(response.event)
        except grpc.RpcError as error:
            self.error = error

    def wait(self, condition: Callable[[pb.JobEvent], bool], what: str) -> pb.JobEvent:
        def seen() -> pb.JobEvent | None:
            return next((e for e in list(self.events) if condition(e)), None)

        return wait_until(seen, timeout=30, interval=0.02, what=what)

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(10)
        self._channel.close()


@pytest.fixture
def watches() -> Iterator[Callable[[ServerProcess, str], Watch]]:
    opened: list[Watch] = []

    def open_watch(server: ServerProcess, job_id: str) -> Watch:
        watch = Watch(server, job_id)
        opened.append(watch)
        return watch

    try:
        yield open_watch
    finally:
        for watch in opened:
            watch.close()


def test_a_submit_of_a_type_no_worker_serves_warns_and_every_read_marks_it_unserved(
    stub: Stub,
):
    response = submit(stub, "no.such.type")
    assert list(response.warnings) == [warning("no.such.type")]
    assert response.job.state == pb.JOB_STATE_PENDING
    assert response.job.unserved is True
    assert get(stub, response.job.id).unserved is True
    listed = stub.ListJobs(api.ListJobsRequest(), timeout=10).jobs
    assert [(j.id, j.unserved) for j in listed] == [(response.job.id, True)]

    batch = stub.SubmitJobs(
        api.SubmitJobsRequest(
            requests=[api.SubmitJobRequest(type=t) for t in ("a.b", "c.d", "a.b")]
        ),
        timeout=10,
    )
    assert [j.unserved for j in batch.jobs] == [True, True, True]
    assert list(batch.warnings) == [
        'no live worker serves job type "a.b"; the 2 jobs of that type wait until one '
        "registers (ListWorkers shows the types workers serve)",
        warning("c.d"),
    ]

    cancelled = stub.CancelJob(api.CancelJobRequest(job_id=response.job.id), timeout=10).job
    assert cancelled.state == pb.JOB_STATE_CANCELLED
    assert cancelled.unserved is False  # only a PENDING job is unserved


def test_a_type_a_live_worker_serves_gets_no_warning(
    server: ServerProcess, stub: Stub, start_worker: StartWorker
):
    first = submit(stub, "demo.sleep", later=True)
    assert list(first.warnings) == [warning("demo.sleep")]
    wait_worker(stub, start_worker(server.store_path, "--types", "demo.sleep"))
    wait_served(stub, first.job.id, served=True)

    response = submit(stub, "demo.sleep", later=True)
    assert list(response.warnings) == []
    assert response.job.unserved is False

    batch = stub.SubmitJobs(
        api.SubmitJobsRequest(
            requests=[api.SubmitJobRequest(type=t) for t in ("demo.sleep", "audio.transcode")]
        ),
        timeout=10,
    )
    assert list(batch.warnings) == [warning("audio.transcode")]
    assert [j.unserved for j in batch.jobs] == [False, True]


def test_a_watcher_of_an_unserved_job_sees_it_claimed_once_a_worker_for_its_type_starts(
    server: ServerProcess,
    stub: Stub,
    start_worker: StartWorker,
    watches: Callable[[ServerProcess, str], Watch],
):
    job_id = submit(stub, "demo.sleep").job.id
    watch = watches(server, job_id)
    snapshot = watch.wait(lambda e: True, "the snapshot")
    assert snapshot.kind == pb.EVENT_KIND_SNAPSHOT
    assert snapshot.job.state == pb.JOB_STATE_PENDING
    assert snapshot.job.unserved is True

    start_worker(server.store_path, "--types", "demo.sleep")

    done = watch.wait(lambda e: e.kind == pb.EVENT_KIND_SUCCEEDED, "the job to succeed")
    assert done.job.unserved is False
    started = watch.wait(lambda e: e.kind == pb.EVENT_KIND_STARTED, "the claim")
    assert started.job.state == pb.JOB_STATE_RUNNING
    assert started.job.unserved is False


def test_a_worker_stopping_makes_a_watched_pending_job_unserved_again(
    server: ServerProcess,
    stub: Stub,
    start_worker: StartWorker,
    watches: Callable[[ServerProcess, str], Watch],
):
    worker = start_worker(server.store_path, "--types", "demo.sleep")
    wait_worker(stub, worker)
    job_id = submit(stub, "demo.sleep", later=True).job.id
    wait_served(stub, job_id, served=True)
    watch = watches(server, job_id)
    snapshot = watch.wait(lambda e: True, "the snapshot")
    assert snapshot.job.state == pb.JOB_STATE_PENDING
    assert snapshot.job.unserved is False

    assert worker.stop() == 0, worker.log

    flipped = watch.wait(lambda e: e.job.unserved, "the job to become unserved")
    assert flipped.kind == pb.EVENT_KIND_QUEUE_POSITION
    assert flipped.job.state == pb.JOB_STATE_PENDING
    assert get(stub, job_id).unserved is True


def test_a_watcher_is_told_when_a_worker_for_the_type_registers(
    server: ServerProcess,
    stub: Stub,
    start_worker: StartWorker,
    watches: Callable[[ServerProcess, str], Watch],
):
    job_id = submit(stub, "demo.sleep", later=True).job.id
    watch = watches(server, job_id)
    assert watch.wait(lambda e: True, "the snapshot").job.unserved is True

    start_worker(server.store_path, "--types", "demo.sleep")

    served = watch.wait(lambda e: not e.job.unserved, "the job to become served")
    assert served.kind == pb.EVENT_KIND_QUEUE_POSITION
    assert served.job.state == pb.JOB_STATE_PENDING


def refusal(error: grpc.RpcError) -> tuple[grpc.StatusCode, str, list[str]]:
    """The status code, message and PreconditionFailure subjects of a refused call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    subjects: list[str] = []
    for detail in status.details:
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            assert {v.type for v in failure.violations} == {"UNSERVED_JOB_TYPE"}
            subjects += [v.subject for v in failure.violations]
    return error.code(), error.details() or "", subjects


@pytest.mark.parametrize("switch", ["flag", "env"])
def test_reject_unserved_types_refuses_them_with_failed_precondition(
    tmp_path: Path, start_worker: StartWorker, switch: str
):
    server = start_server(
        tmp_path,
        args=["--reject-unserved-types"] if switch == "flag" else [],
        env={"JOBCONTROL_REJECT_UNSERVED_TYPES": "1"} if switch == "env" else {},
    )
    try:
        with server.channel() as channel:
            stub = Stub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                submit(stub, "no.such.type")
            code, message, subjects = refusal(caught.value)
            assert code is grpc.StatusCode.FAILED_PRECONDITION
            assert message == (
                'no live worker serves job type "no.such.type" (no worker is live), and this '
                "server refuses jobs no worker serves (--reject-unserved-types)"
            )
            assert subjects == ["no.such.type"]

            wait_worker(stub, start_worker(server.store_path, "--types", "demo.sleep"))
            # The server counts the worker within a second; until then it still refuses.
            accepted = wait_until(
                lambda: _accepted(stub, "demo.sleep"), timeout=20, what="demo.sleep accepted"
            )
            assert list(accepted.warnings) == []

            batch = api.SubmitJobsRequest(
                requests=[api.SubmitJobRequest(type=t) for t in ("demo.sleep", "x.y", "x.y")]
            )
            with pytest.raises(grpc.RpcError) as caught:
                stub.SubmitJobs(batch, timeout=10)
            code, message, subjects = refusal(caught.value)
            assert code is grpc.StatusCode.FAILED_PRECONDITION
            assert message.startswith(
                'no live worker serves job type "x.y" (live workers serve "demo.sleep"), '
            )
            assert subjects == ["x.y"]
            # Refused whole: only the one accepted job exists.
            listed = stub.ListJobs(api.ListJobsRequest(), timeout=10).jobs
            assert [j.id for j in listed] == [accepted.job.id]
    finally:
        server.stop()


def _accepted(stub: Stub, job_type: str) -> api.SubmitJobResponse | None:
    try:
        return submit(stub, job_type, later=True)
    except grpc.RpcError as error:
        if error.code() is not grpc.StatusCode.FAILED_PRECONDITION:
            raise
        return None


# ---- cost ------------------------------------------------------------------------------


def served_reads(server: ServerProcess) -> float:
    assert server.metrics_address is not None
    samples = read_metrics(server.metrics_address)
    return samples.get(("jobcontrol_store_calls_total", (("operation", "served_job_types"),)), 0)


def test_submits_do_not_cost_a_store_read_each(tmp_path: Path):
    server = start_server(tmp_path, metrics=True)
    try:
        with server.channel() as channel:
            stub = Stub(channel)
            started = time.monotonic()
            for _ in range(300):
                submit(stub, "no.such.type")
            seconds = time.monotonic() - started
        reads = served_reads(server)
    finally:
        server.stop()
    # One read per MAX_AGE_SECONDS of submitting at most (plus the read at each end).
    assert 1 <= reads <= seconds / MAX_AGE_SECONDS + 2, (reads, seconds)


async def test_callers_at_once_share_one_read(tmp_path: Path):
    metrics = Metrics()
    store = metered(await SqliteJobStore.open(tmp_path / "jobs.db"), metrics)
    try:
        served = ServedTypes(store, max_age=3600)
        answers = await asyncio.gather(*(served.get() for _ in range(500)))
        again = await served.get()
    finally:
        await store.close()
    assert set(answers) == {frozenset()}
    assert again == frozenset()
    assert metrics.store_calls.labels("served_job_types")._value.get() == 1
