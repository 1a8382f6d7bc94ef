"""Faults injected into a running system (issue 8, part 1): real `jobcontrol-server` and
`jobcontrol-worker` processes on loopback, with workers killed -9 over and over, a store
that turns read-only or runs out of disk, a remote database that goes away, a delayed
job, and a worker frozen past its lease. Every test ends by checking the store's own
record: each job's row matches its newest event, and every event follows the state
machine (docs/architecture.md, "Jobs and their state machine"), so no fault left a
transition half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, struct_pb2
from grpc_health.v1 import health_pb2

from jobcontrol.jobs import EventKind, Job, JobEvent, JobState
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import (
    ROOT,
    ServerProcess,
    health_status,
    start_server,
    wait_until,
)
from tests.sqld import SqldProcess
from tests.store_checks import (
    TERMINAL,
    assert_no_partial_transitions,
    histories,
    started_attempts,
)
from tests.worker.conftest import StartWorker, SyncStore, WorkerProcess

Stub = job_control_pb2_grpc.JobControlStub
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
PB_TERMINAL = (pb.JOB_STATE_SUCCEEDED, pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED)
LEASE_TIMEOUT = 2.0
FAST_LEASE = ("--lease-timeout", str(LEASE_TIMEOUT), "--heartbeat-interval", "0.5")
FAST_WORKER = (*FAST_LEASE, "--poll-interval", "0.05")
FAST_REAPER = ("--reap-interval", "0.2s")


# ---- helpers ------------------------------------------------------------------------


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def sleep_request(seconds: float, steps: int = 1, **fields: Any) -> api.SubmitJobRequest:
    return api.SubmitJobRequest(
        type="demo.sleep", payload=struct(seconds=seconds, steps=steps), **fields
    )


def refusal(stub: Stub, request: api.SubmitJobRequest) -> grpc.RpcError | None:
    """The error SubmitJob answers with, or None (and the job is real) if it succeeded."""
    try:
        stub.SubmitJob(request, timeout=15)
    except grpc.RpcError as error:
        return error
    return None


def wait_terminal(store: SyncStore, job_ids: list[str], timeout: float) -> list[Job]:
    def finished() -> list[Job] | None:
        found = [store.get_job(job_id) for job_id in job_ids]
        return found if all(job.state in TERMINAL for job in found) else None

    return wait_until(finished, timeout=timeout, interval=0.1, what="every job to finish")


def wait_in_log(worker: WorkerProcess, pattern: str, timeout: float) -> re.Match[str]:
    return wait_until(
        lambda: re.search(pattern, worker.log),
        timeout=timeout,
        interval=0.05,
        what=f"{pattern!r} in the worker's log",
    )


# ---- mounts -------------------------------------------------------------------------


def _run(*command: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=60, check=False
    )


def unmount(target: Path) -> None:
    """Unmount, retrying while a process we killed still lets go of its files; a lazy
    unmount as the last resort so nothing stays mounted after the test."""
    try:
        wait_until(lambda: _run("umount", target).returncode == 0, timeout=10, interval=0.1)
    except AssertionError:
        _run("umount", "-l", target)


@contextlib.contextmanager
def mounted(target: Path, *mount_args: str | Path) -> Iterator[Path]:
    target.mkdir()
    result = _run("mount", *mount_args, target)
    if result.returncode != 0:  # e.g. no loop devices in this sandbox
        pytest.skip(f"cannot mount {' '.join(map(str, mount_args))}: {result.stderr.strip()}")
    try:
        yield target
    finally:
        unmount(target)


@pytest.fixture
def mounts_allowed(tmp_path: Path) -> None:
    """Skip (saying why) where this sandbox may not mount; try first, root usually can."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("mount/umount are not installed")
    probe = tmp_path / "mount-probe"
    probe.mkdir()
    result = _run("mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe)
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")
    unmount(probe)


@dataclasses.dataclass
class System:
    server: ServerProcess
    worker: WorkerProcess
    stub: Stub
    channel: grpc.Channel
    store: SyncStore


@contextlib.contextmanager
def system_on(store_path: Path, directory: Path, start_worker: StartWorker) -> Iterator[System]:
    """A server (fast reaper) and a worker (fast lease) on one SQLite file; always
    stopped, and their files closed, when the block ends."""
    with contextlib.ExitStack() as stack:
        server = start_server(directory, store_path=store_path, args=FAST_REAPER)
        stack.callback(server.kill)
        worker = start_worker(store_path, *FAST_WORKER, "--concurrency", "4")
        stack.callback(worker.kill)
        store = SyncStore(store_path)
        stack.callback(store.close)
        store.worker_of(worker)
        channel = stack.enter_context(server.channel())
        yield System(server, worker, Stub(channel), channel, store)


def run_jobs(system: System, count: int, seconds: float) -> list[str]:
    requests = [sleep_request(seconds, max_attempts=10) for _ in range(count)]
    reply = system.stub.SubmitJobs(api.SubmitJobsRequest(requests=requests), timeout=15)
    return [job.id for job in reply.jobs]


def wait_running_on(system: System, job_ids: list[str]) -> None:
    def running() -> bool:
        return all(system.store.get_job(i).state is JobState.RUNNING for i in job_ids)

    wait_until(running, timeout=20, interval=0.02, what="the jobs to run")


def assert_health_stays(channel: grpc.Channel, status: int, seconds: float) -> None:
    """Health answers `status` at every check for `seconds` (over two health intervals,
    so a ping that succeeds in between cannot flip it back unseen)."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.append(health_status(channel))
        time.sleep(0.02)
    assert set(seen) == {status}, Counter(seen)


def assert_store_refusal(error: grpc.RpcError, store_path: Path) -> None:
    assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION), (
        error.code(),
        error.details(),
    )
    details = error.details() or ""
    assert str(store_path) in details, details
    assert "unavailable" in details, details


def assert_recovers(system: System, before: list[str], store_path: Path) -> list[str]:
    """Without a restart: SubmitJob works again, health is SERVING, and every job, those
    caught by the fault and new ones, succeeds."""
    accepted = wait_until(
        lambda: refusal(system.stub, sleep_request(0.05)) is None,
        timeout=30,
        interval=0.2,
        what="SubmitJob to work again",
    )
    assert accepted
    wait_until(
        lambda: health_status(system.channel) == SERVING, timeout=15, interval=0.1, what="SERVING"
    )
    after = run_jobs(system, 5, 0.1)
    finished = wait_terminal(system.store, before + after, timeout=60)
    assert {job.state for job in finished} == {JobState.SUCCEEDED}, [
        (job.id, job.state, job.error) for job in finished if job.state != JobState.SUCCEEDED
    ]
    assert system.server.process.poll() is None
    assert system.worker.process.poll() is None
    return after


# ---- 1. worker churn ----------------------------------------------------------------

CHURN_JOBS = 1000
CHURN_WORKERS = 4
KILL_EVERY = 1.0
MAX_KILLS = 25
CHURN_WORKER = (*FAST_WORKER, "--concurrency", "8", "--handlers", "tests.e2e.counting_handlers")
FINISHED_LOG_ENV = "COUNTING_HANDLER_LOG"  # read by tests/e2e/counting_handlers.py


@pytest.mark.slow
def test_killing_a_random_worker_every_second_finishes_every_job_exactly_once(
    tmp_path: Path, start_worker: StartWorker
):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    print(f"\nseed {seed}")
    finished_log = tmp_path / "handler-finished.txt"
    env = {"PYTHONPATH": str(ROOT), FINISHED_LOG_ENV: str(finished_log)}
    server = start_server(tmp_path, args=FAST_REAPER)
    store = SyncStore(server.store_path)
    try:

        def new_worker() -> WorkerProcess:
            return start_worker(server.store_path, *CHURN_WORKER, env=env)

        live = [new_worker() for _ in range(CHURN_WORKERS)]
        for worker in live:
            store.worker_of(worker)
        requests = [
            api.SubmitJobRequest(
                type="test.count_sleep",
                payload=struct(seconds=round(rng.uniform(0.05, 0.5), 3), steps=rng.randint(1, 3)),
                max_attempts=10,
            )
            for _ in range(CHURN_JOBS)
        ]
        with server.channel() as channel:
            started = time.monotonic()
            reply = Stub(channel).SubmitJobs(api.SubmitJobsRequest(requests=requests), timeout=60)
        job_ids = [job.id for job in reply.jobs]

        def unfinished() -> int:
            counts = store.count_jobs_by_state()
            return counts[JobState.PENDING] + counts[JobState.RUNNING]

        kills = 0
        while kills < MAX_KILLS and unfinished():
            time.sleep(KILL_EVERY)  # the fault itself: one kill -9 a second
            live.pop(rng.randrange(len(live))).kill()
            kills += 1
            live.append(new_worker())
        jobs = wait_terminal(store, job_ids, timeout=150)
        elapsed = time.monotonic() - started
        stories = assert_no_partial_transitions(store)
    finally:
        store.close()
        server.stop()

    assert {job.state for job in jobs} == {JobState.SUCCEEDED}, Counter(j.state for j in jobs)
    lost = 0
    for job in jobs:
        story = stories[job.id]
        attempts = started_attempts(story)
        assert len(attempts) == len(set(attempts)), f"{job.id} started an attempt twice"
        succeeded = [e for e in story if e.kind is EventKind.SUCCEEDED]
        assert len(succeeded) == 1, f"{job.id} succeeded {len(succeeded)} times"
        assert succeeded[0].job.attempt == attempts[-1] == job.attempt
        assert job.result is not None
        assert job.result["attempt"] == job.attempt
        lost += sum(
            e.kind is EventKind.RETRY_SCHEDULED
            and e.job.error is not None
            and e.job.error.code == "worker_lost"
            for e in story
        )

    finished = Counter(tuple(line.split()) for line in finished_log.read_text().splitlines())
    twice = [key for key, n in finished.items() if n > 1]
    assert not twice, f"handler finished one attempt more than once: {twice[:5]}"
    for job in jobs:
        assert finished[(job.id, str(job.attempt))] == 1, f"{job.id} final attempt not finished"
    assert lost > 0, "no kill caught a running job: the test exercised nothing"
    wasted = sum(finished.values()) - len(jobs)
    print(
        f"{CHURN_JOBS} jobs, {kills} kills -9: {elapsed:.1f}s, {CHURN_JOBS / elapsed:.0f} jobs/s; "
        f"{lost} attempts reaped as worker_lost, {wasted} finished handlers not recorded"
    )


# ---- 2. store faults on SQLite ------------------------------------------------------


@pytest.mark.slow
def test_a_read_only_database_refuses_writes_as_unavailable_and_recovers_without_restart(
    tmp_path: Path, start_worker: StartWorker, mounts_allowed: None
):
    """The store lives on a loop-mounted ext4 image whose database and WAL are made
    immutable while the server and a worker run. (`mount -o remount,ro` is what an
    operator would expect to use, but the kernel refuses to remount a filesystem
    read-only with EBUSY while any file on it is open for writing, which SQLite's always
    are; the immutable attribute makes every write(2) fail with EPERM even through
    descriptors opened earlier, and root cannot bypass it. The -shm file stays writable:
    it is mmapped, and an immutable one kills SQLite with SIGBUS.)"""
    if shutil.which("mkfs.ext4") is None or shutil.which("chattr") is None:
        pytest.skip("mkfs.ext4 and chattr are needed for a filesystem that can refuse writes")
    image = tmp_path / "store.ext4"
    with image.open("wb") as file:
        file.truncate(32 * 1024 * 1024)
    assert _run("mkfs.ext4", "-q", "-F", image).returncode == 0
    with (
        mounted(tmp_path / "mnt", "-o", "loop", image) as mnt,
        system_on(mnt / "jobs.db", tmp_path, start_worker) as system,
    ):
        store_path = mnt / "jobs.db"
        frozen = [store_path, Path(f"{store_path}-wal")]
        before = run_jobs(system, 5, 0.1)
        wait_terminal(system.store, before, timeout=30)
        caught = run_jobs(system, 3, 1.5)  # running when the store turns read-only
        wait_running_on(system, caught)
        jobs_before = sum(system.store.count_jobs_by_state().values())
        try:
            assert _run("chattr", "+i", *frozen).returncode == 0

            error = refusal(system.stub, sleep_request(0.1))
            assert error is not None, "SubmitJob succeeded on a read-only store"
            assert_store_refusal(error, store_path)
            batch = api.SubmitJobsRequest(requests=[sleep_request(0.1)] * 3)
            with pytest.raises(grpc.RpcError) as batch_error:
                system.stub.SubmitJobs(batch, timeout=15)
            assert_store_refusal(batch_error.value, store_path)
            print(f"\nread-only: SubmitJob -> {error.code().name}: {error.details()}")
            print(f"read-only: SubmitJobs -> {batch_error.value.code().name}")
            wait_until(
                lambda: health_status(system.channel) == NOT_SERVING,
                timeout=10,
                interval=0.05,
                what="health NOT_SERVING",
            )
            assert_health_stays(system.channel, NOT_SERVING, seconds=2.5)
            # The caught jobs' handlers end meanwhile; recording them fails, and is retried.
            wait_in_log(system.worker, r"recording outcomes failed", timeout=10)
            assert sum(system.store.count_jobs_by_state().values()) == jobs_before
            assert_no_partial_transitions(system.store)
        finally:
            _run("chattr", "-i", *frozen)
        assert_recovers(system, before + caught, store_path)
        stories = assert_no_partial_transitions(system.store)
    for job_id in caught:
        attempts = started_attempts(stories[job_id])
        assert attempts == sorted(set(attempts)), (job_id, attempts)


def fill(directory: Path) -> Path:
    """Write a filler file until the filesystem has no space left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (1 << 16, 512):  # big chunks, then the last partial pages
            while _write_or_full(fd, b"\0" * size):
                pass
    finally:
        os.close(fd)
    return filler


def _write_or_full(fd: int, data: bytes) -> bool:
    try:
        os.write(fd, data)
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        return False
    return True


@pytest.mark.slow
def test_a_full_disk_refuses_writes_as_unavailable_and_recovers_when_space_is_freed(
    tmp_path: Path, start_worker: StartWorker, mounts_allowed: None
):
    with (
        mounted(tmp_path / "mnt", "-t", "tmpfs", "-o", "size=2m", "tmpfs") as mnt,
        system_on(mnt / "jobs.db", tmp_path, start_worker) as system,
    ):
        store_path = mnt / "jobs.db"
        before = run_jobs(system, 5, 0.1)
        wait_terminal(system.store, before, timeout=30)
        caught = run_jobs(system, 3, 1.5)  # running when the disk fills up
        wait_running_on(system, caught)
        jobs_before = sum(system.store.count_jobs_by_state().values())
        filler = fill(mnt)
        try:
            # The WAL may have room for a small write or two; the same idempotency key
            # makes those one job at most.
            fitted: list[str] = []

            def refused() -> grpc.RpcError | None:
                error = refusal(system.stub, sleep_request(0.1, idempotency_key="full"))
                if error is None:
                    fitted.append("one more")
                return error

            error = wait_until(refused, timeout=20, interval=0.01, what="SubmitJob to fail")
            assert_store_refusal(error, store_path)
            status = health_status(system.channel)
            print(
                f"\ndisk full: {len(fitted)} writes fitted, then SubmitJob -> "
                f"{error.code().name}: {error.details()}; health right then: "
                f"{health_pb2.HealthCheckResponse.ServingStatus.Name(status or 0)}"
            )
            jobs_now = sum(system.store.count_jobs_by_state().values())
            assert jobs_now == jobs_before + bool(fitted)
            # The caught jobs end but cannot be recorded; once their leases expire the
            # reaper cannot write its retries either, and the server stops SERVING.
            wait_in_log(system.worker, r"recording outcomes failed", timeout=10)
            wait_until(
                lambda: health_status(system.channel) == NOT_SERVING,
                timeout=3 * LEASE_TIMEOUT,
                interval=0.05,
                what="health NOT_SERVING",
            )
            assert_health_stays(system.channel, NOT_SERVING, seconds=2.5)
            assert_no_partial_transitions(system.store)
        finally:
            filler.unlink()
        assert_recovers(system, before + caught, store_path)
        assert_no_partial_transitions(system.store)


# ---- 3. the remote libSQL database goes away ----------------------------------------


@pytest.mark.slow
def test_after_a_remote_database_outage_every_job_matches_its_newest_event(
    tmp_path: Path, start_worker: StartWorker, sqld: SqldProcess
):
    """sqld crashes (kill -9) under a server and a worker and comes back on the same
    port and data; afterwards its data file, read directly, must hold no half-written
    transition and no job run twice."""
    assert sqld.token is not None
    env = {
        "JOB_STORE_BACKEND": "turso",
        "TURSO_DATABASE_URL": sqld.url,
        "TURSO_AUTH_TOKEN": sqld.token,
    }
    unused = tmp_path / "unused.db"  # the worker's --store-path; the env says turso
    try:
        server = start_server(tmp_path, env=env, args=FAST_REAPER)
        try:
            worker = start_worker(unused, *FAST_WORKER, "--concurrency", "4", env=env)
            with server.channel() as channel:
                stub = Stub(channel)
                requests = [
                    sleep_request(0.2 + (i % 3) * 0.2, 2, max_attempts=10) for i in range(24)
                ]
                reply = stub.SubmitJobs(api.SubmitJobsRequest(requests=requests), timeout=30)
                job_ids = [job.id for job in reply.jobs]

                def some_done() -> bool:
                    filter_ = api.JobFilter(states=[pb.JOB_STATE_SUCCEEDED])
                    return bool(stub.ListJobs(api.ListJobsRequest(filter=filter_), timeout=10).jobs)

                wait_until(some_done, timeout=30, interval=0.05, what="a first job to succeed")
                sqld.kill()  # a crash: nothing of sqld's shutdown runs
                # The outage lasts until the driver has given up retrying (5 s): every
                # process then sees writes fail mid-run, not just slow down.
                outage = time.monotonic()
                error = refusal(stub, sleep_request(0.1))
                assert error is not None, "SubmitJob succeeded with the database down"
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                print(
                    f"\nremote outage: SubmitJob -> {error.code().name} after "
                    f"{time.monotonic() - outage:.1f}s: {error.details()}"
                )
                sqld.restart()

                def all_terminal() -> bool:
                    return all(
                        stub.GetJob(api.GetJobRequest(job_id=i), timeout=10).job.state
                        in PB_TERMINAL
                        for i in job_ids
                    )

                wait_until(all_terminal, timeout=90, interval=0.2, what="every job to finish")
            worker.shut_down()
        finally:
            server.stop()
    finally:
        sqld.stop()
    store = SyncStore(sqld.data_file)  # sqld keeps the database in a plain SQLite file
    try:
        stories = assert_no_partial_transitions(store)
        assert set(stories) == set(job_ids), "the refused SubmitJob left a job behind"
        for job_id in job_ids:
            attempts = started_attempts(stories[job_id])
            assert attempts == sorted(set(attempts)), (job_id, attempts)
            assert store.get_job(job_id).state is JobState.SUCCEEDED
    finally:
        store.close()


# ---- 4. clock and timing ------------------------------------------------------------


def test_a_delayed_job_stays_pending_until_its_run_after_and_then_runs(
    tmp_path: Path, start_worker: StartWorker
):
    server = start_server(tmp_path, args=FAST_REAPER)
    store = SyncStore(server.store_path)
    try:
        worker = start_worker(server.store_path, *FAST_WORKER)
        store.worker_of(worker)
        with server.channel() as channel:
            request = sleep_request(0.05, delay=duration_pb2.Duration(seconds=2))
            job = Stub(channel).SubmitJob(request, timeout=10).job
        run_after = job.run_after.ToDatetime(tzinfo=UTC)
        assert (run_after - job.create_time.ToDatetime(tzinfo=UTC)).total_seconds() == 2
        polls = 0
        while datetime.now(UTC) < run_after:  # the idle worker polls every 50 ms meanwhile
            seen = store.get_job(job.id)
            if datetime.now(UTC) < run_after:
                assert seen.state is JobState.PENDING, f"claimed early: {seen}"
                polls += 1
            time.sleep(0.02)
        assert polls > 20
        wait_until(
            lambda: store.get_job(job.id).state is JobState.SUCCEEDED,
            timeout=10,
            interval=0.02,
            what="the job to succeed",
        )
        story = histories(store)[job.id]
    finally:
        store.close()
        server.stop()
    started = [e for e in story if e.kind is EventKind.STARTED]
    assert len(started) == 1
    assert started[0].time >= run_after, (started[0].time, run_after)
    print(
        f"\nclaimed {(started[0].time - run_after).total_seconds() * 1000:.0f} ms after run_after"
    )


def test_a_worker_frozen_past_its_lease_loses_the_job_and_its_late_writes_are_refused(
    tmp_path: Path, start_worker: StartWorker
):
    server = start_server(tmp_path, args=FAST_REAPER)
    store = SyncStore(server.store_path)
    frozen: WorkerProcess | None = None
    try:
        frozen = start_worker(server.store_path, *FAST_WORKER, "--name", "a")
        a_id = store.worker_of(frozen).id
        with server.channel() as channel:
            stub = Stub(channel)
            job_id = stub.SubmitJob(sleep_request(4, 8, max_attempts=5), timeout=10).job.id

            def progressing() -> bool:
                job = store.get_job(job_id)
                return job.state is JobState.RUNNING and job.progress.percent > 0

            wait_until(progressing, timeout=20, interval=0.02, what="A to run the job")
            frozen.send(signal.SIGSTOP)
            job = store.get_job(job_id)
            assert job.worker_id == a_id
            assert job.attempt == 1

            def reaped() -> JobEvent | None:
                story = histories(store)[job_id]
                return next((e for e in story if e.kind is EventKind.RETRY_SCHEDULED), None)

            retry = wait_until(
                reaped, timeout=10, interval=0.05, what="the reaper to retry the job"
            )
            assert retry.job.error is not None
            assert retry.job.error.code == "worker_lost"
            assert retry.job.state is JobState.PENDING

            other = start_worker(server.store_path, *FAST_WORKER, "--name", "b")
            b_id = store.worker_of(other).id
            done = wait_until(
                lambda: (j := store.get_job(job_id)).state in TERMINAL and j,
                timeout=30,
                interval=0.05,
                what="B to finish the job",
            )
            last_sequence = store.last_sequence(job_id=job_id)

            frozen.send(signal.SIGCONT)
            wait_in_log(frozen, rf"(lost the lease on job|lease on job) {job_id}", timeout=15)
            # A is alive and working again: with B gone, only A can run the next job.
            other.stop()
            next_id = stub.SubmitJob(sleep_request(0.1, 1), timeout=10).job.id
            ran = wait_until(
                lambda: (j := store.get_job(next_id)).state in TERMINAL and j,
                timeout=20,
                interval=0.05,
                what="A to run a new job after SIGCONT",
            )
        late = store.list_events(after_sequence=last_sequence, job_id=job_id)
        final = store.get_job(job_id)
        assert_no_partial_transitions(store)
    finally:
        if frozen is not None:
            frozen.send(signal.SIGCONT)
        store.close()
        server.stop()
    assert late == [], f"A wrote for the job after losing it: {late}"
    assert final == done
    assert final.state is JobState.SUCCEEDED
    assert final.worker_id == b_id
    assert final.attempt == 2
    assert final.result is not None
    assert final.result["attempt"] == 2
    assert ran.state is JobState.SUCCEEDED
    assert ran.worker_id == a_id
    assert frozen.process.poll() is None, "A should keep working after losing a lease"
