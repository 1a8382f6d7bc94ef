"""Workers as real processes: `jobcontrol-server` and `jobcontrol-worker` started as users
start them, sharing one SQLite store, driven over loopback gRPC and checked through the
store's event log. Covers many workers at once, cancellation (demo.sleep and ffmpeg),
kill -9 and lease fencing, SIGTERM draining, retries, transcoding and --with-worker."""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2

from jobcontrol.errors import LeaseLost
from jobcontrol.jobs import EventKind, Job, JobEvent, JobState, Progress
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import ServerProcess, start_server, wait_until
from tests.store_checks import histories
from tests.worker.conftest import StartWorker, SyncStore, WorkerProcess, processes_mentioning

Stub = job_control_pb2_grpc.JobControlStub

HEARTBEAT = 1.0  # --heartbeat-interval for the cancellation tests
FAST_LEASE = ("--lease-timeout", "3", "--heartbeat-interval", str(HEARTBEAT))
TERMINAL = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[Stub]:
    with server.channel() as channel:
        yield Stub(channel)


def struct(values: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def submit(stub: Stub, job_type: str = "demo.sleep", **payload: Any) -> str:
    return submit_with(stub, job_type, payload)


def submit_with(stub: Stub, job_type: str, payload: dict[str, Any], **fields: Any) -> str:
    request = api.SubmitJobRequest(type=job_type, payload=struct(payload), **fields)
    return str(stub.SubmitJob(request, timeout=10).job.id)


def events_of(store: SyncStore, job_id: str) -> list[JobEvent]:
    events: list[JobEvent] = store.list_events(after_sequence=0, job_id=job_id, limit=1000)
    return events


def kinds(events: list[JobEvent]) -> list[EventKind]:
    return [e.kind for e in events]


def job_in(store: SyncStore, job_id: str, *states: JobState) -> Job | None:
    job: Job = store.get_job(job_id)
    return job if job.state in states else None


def wait_state(store: SyncStore, job_id: str, *states: JobState, timeout: float = 20.0) -> Job:
    return wait_until(
        lambda: job_in(store, job_id, *states),
        timeout=timeout,
        interval=0.02,
        what=f"job {job_id} to be {'/'.join(states)}",
    )


def wait_running(
    store: SyncStore, job_id: str, worker: WorkerProcess, timeout: float = 20.0
) -> Job:
    def running() -> Job | None:
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited with {worker.process.returncode}:\n{worker.log}")
        return job_in(store, job_id, JobState.RUNNING)

    return wait_until(running, timeout=timeout, interval=0.02, what=f"job {job_id} to run")


def cancel_and_time(store: SyncStore, stub: Stub, job_id: str, deadline: float) -> float:
    """CancelJob, then wait for CANCELLED with `deadline` counted from the call."""
    started = time.monotonic()
    stub.CancelJob(api.CancelJobRequest(job_id=job_id, reason="test"), timeout=5)
    remaining = deadline - (time.monotonic() - started)
    wait_until(
        lambda: job_in(store, job_id, JobState.CANCELLED),
        timeout=remaining,
        interval=0.01,
        what=f"job {job_id} to be CANCELLED within {deadline}s of CancelJob",
    )
    return time.monotonic() - started


# ---- many workers -------------------------------------------------------------------

TOTAL_JOBS = 2000
WORKERS = 4


def test_four_worker_processes_run_2000_jobs_each_exactly_once(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker
):
    workers = [
        start_worker(server.store_path, "--concurrency", "8", "--name", f"w{n}")
        for n in range(WORKERS)
    ]
    worker_ids = {store.worker_of(w).id for w in workers}
    assert len(worker_ids) == WORKERS

    request = api.SubmitJobRequest(type="demo.sleep", payload=struct({"seconds": 0, "steps": 0}))
    started = time.monotonic()
    job_ids: list[str] = []
    for _ in range(TOTAL_JOBS // 1000):
        batch = api.SubmitJobsRequest(requests=[request] * 1000)
        job_ids += [job.id for job in stub.SubmitJobs(batch, timeout=30).jobs]
    assert len(set(job_ids)) == TOTAL_JOBS

    def all_succeeded() -> bool:
        counts = store.count_jobs_by_state()
        assert counts.get(JobState.FAILED, 0) == 0, counts
        return bool(counts.get(JobState.SUCCEEDED, 0) == TOTAL_JOBS)

    wait_until(all_succeeded, timeout=120, interval=0.05, what="every job to succeed")
    elapsed = time.monotonic() - started
    rate = TOTAL_JOBS / elapsed
    print(f"\n{TOTAL_JOBS} jobs on {WORKERS}x8 worker slots: {elapsed:.2f}s, {rate:.0f} jobs/s")

    by_job = histories(store)
    assert set(by_job) == set(job_ids)
    ran_on: Counter[str] = Counter()
    for job_id in job_ids:
        story = by_job[job_id]
        assert kinds(story) == [EventKind.SUBMITTED, EventKind.STARTED, EventKind.SUCCEEDED], job_id
        started_event, succeeded_event = story[1], story[2]
        assert started_event.job.attempt == succeeded_event.job.attempt == 1
        assert started_event.job.worker_id in worker_ids
        assert succeeded_event.job.worker_id == started_event.job.worker_id
        ran_on[started_event.job.worker_id] += 1
    assert len(ran_on) > 1, f"every job ran on one worker: {ran_on}"
    print(f"jobs per worker: {sorted(ran_on.values())}")


# ---- cancellation -------------------------------------------------------------------


def test_cancel_running_demo_sleep_ends_cancelled_within_two_heartbeats(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker
):
    worker = start_worker(server.store_path, *FAST_LEASE)
    job_id = submit(stub, seconds=30, steps=30)
    wait_running(store, job_id, worker)

    latency = cancel_and_time(store, stub, job_id, deadline=2 * HEARTBEAT)
    print(f"\ndemo.sleep cancel latency: {latency * 1000:.0f} ms")

    job = store.get_job(job_id)
    assert job.attempt == 1
    assert job.end_time is not None
    assert kinds(events_of(store, job_id))[-2:] == [EventKind.CANCEL_REQUESTED, EventKind.CANCELLED]
    assert worker.process.poll() is None, "the worker must keep running after a cancel"


def ffmpeg_processes_mentioning(text: str) -> list[str]:
    return [line for _, line in processes_mentioning(text) if "ffmpeg" in line]


def make_tone(path: Path, seconds: float, sample_rate: int = 8000) -> Path:
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={sample_rate}:duration={seconds}",
            "-ac", "1", str(path),
        ],
        check=True,
        timeout=60,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def long_tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Half an hour of 8 kHz audio: ffmpeg's AAC encoder needs about 20 s for it here, so
    a job is still transcoding when cancelled; and it takes well under a second to make."""
    return make_tone(tmp_path_factory.mktemp("tone") / "long.wav", seconds=1800)


def wait_transcoding(store: SyncStore, job_id: str, worker: WorkerProcess) -> Job:
    def transcoding() -> Job | None:
        job = wait_running(store, job_id, worker)
        progress = job.progress
        return job if progress.stage == "transcoding" and progress.percent > 0 else None

    job: Job = wait_until(transcoding, timeout=30, interval=0.05, what="ffmpeg progress")
    assert job.progress.percent < 100
    return job


def test_cancel_running_transcode_kills_ffmpeg_and_removes_partial_output(
    tmp_path: Path,
    long_tone: Path,
    server: ServerProcess,
    stub: Stub,
    store: SyncStore,
    start_worker: StartWorker,
):
    output = tmp_path / "out" / "long.m4a"
    output.parent.mkdir()
    worker = start_worker(server.store_path, *FAST_LEASE)
    job_id = submit(stub, "audio.transcode", input=str(long_tone), output=str(output), codec="aac")
    wait_transcoding(store, job_id, worker)
    partials = list(output.parent.glob(".long.partial-*"))
    assert len(partials) == 1, partials
    partial = str(partials[0])
    assert ffmpeg_processes_mentioning(partial), "ffmpeg should be running now"

    latency = cancel_and_time(store, stub, job_id, deadline=2 * HEARTBEAT)
    print(f"\naudio.transcode cancel latency: {latency * 1000:.0f} ms")

    assert ffmpeg_processes_mentioning(partial) == []
    assert list(output.parent.iterdir()) == [], "neither partial nor output may remain"
    assert store.get_job(job_id).result is None


def test_two_transcodes_to_one_output_write_separate_partial_files(
    tmp_path: Path,
    long_tone: Path,
    server: ServerProcess,
    stub: Stub,
    store: SyncStore,
    start_worker: StartWorker,
):
    output = tmp_path / "out" / "same.m4a"
    output.parent.mkdir()
    worker = start_worker(server.store_path, "--concurrency", "2", *FAST_LEASE)
    payload = {"input": str(long_tone), "output": str(output), "codec": "aac"}
    job_ids = [submit(stub, "audio.transcode", **payload) for _ in range(2)]
    for job_id in job_ids:
        wait_transcoding(store, job_id, worker)

    partials = sorted(output.parent.glob(".same.partial-*"))
    assert len(partials) == 2, f"the jobs share a partial file: {partials}"

    for job_id in job_ids:
        cancel_and_time(store, stub, job_id, deadline=2 * HEARTBEAT)
    assert ffmpeg_processes_mentioning(str(output.parent)) == []
    assert list(output.parent.iterdir()) == []


# ---- kill -9 and fencing ------------------------------------------------------------


def test_job_of_killed_worker_is_rerun_elsewhere_and_stale_lease_writes_change_nothing(
    tmp_path: Path, store_path: Path, store: SyncStore, start_worker: StartWorker
):
    server = start_server(tmp_path, store_path=store_path, args=["--reap-interval", "0.2s"])
    try:
        lease = ("--lease-timeout", "2", "--heartbeat-interval", "0.5")
        worker_a = start_worker(server.store_path, *lease, "--name", "A")
        a_id = store.worker_of(worker_a).id
        with server.channel() as channel:
            job_id = submit(Stub(channel), seconds=3, steps=3)
        job = wait_running(store, job_id, worker_a)
        assert job.worker_id == a_id
        worker_a.kill()
        assert worker_a.process.returncode == -signal.SIGKILL

        worker_b = start_worker(server.store_path, *lease, "--name", "B")
        b_id = store.worker_of(worker_b).id
        done = wait_state(store, job_id, *TERMINAL, timeout=30)
        assert done.state is JobState.SUCCEEDED
        assert done.attempt == 2
        assert done.worker_id == b_id

        events = events_of(store, job_id)
        starts = [e for e in events if e.kind is EventKind.STARTED]
        assert [(e.job.attempt, e.job.worker_id) for e in starts] == [(1, a_id), (2, b_id)]
        lost = [e for e in events if e.kind is EventKind.RETRY_SCHEDULED]
        assert len(lost) == 1
        assert lost[0].job.error is not None
        assert lost[0].job.error.code == "worker_lost"

        # A's attempt comes back from the dead: its lease is fenced off.
        stale_lease = starts[0].job.lease_id
        assert stale_lease is not None
        assert stale_lease != starts[1].job.lease_id
        before, last_before = store.get_job(job_id), store.last_sequence(job_id=job_id)
        with pytest.raises(LeaseLost):
            store.report_progress(
                job_id=job_id, lease_id=stale_lease, progress=Progress(50, "late", "from A")
            )
        with pytest.raises(LeaseLost):
            store.complete_job(job_id=job_id, lease_id=stale_lease, result={"from": "A"})
        assert store.get_job(job_id) == before
        assert store.last_sequence(job_id=job_id) == last_before
    finally:
        server.stop()


# ---- SIGTERM ------------------------------------------------------------------------


def worker_state(stub: Stub, worker_id: str) -> int:
    response = stub.ListWorkers(api.ListWorkersRequest(show_stopped=True), timeout=5)
    states = {w.id: w.state for w in response.workers}
    return states[worker_id]


def test_sigterm_lets_short_jobs_finish_hands_long_ones_back_and_exits_zero(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker
):
    short = [submit(stub, seconds=1, steps=2) for _ in range(2)]
    long = [submit(stub, seconds=60, steps=60) for _ in range(2)]
    worker = start_worker(server.store_path, "--concurrency", "4", "--drain-grace", "2")
    worker_id = store.worker_of(worker).id
    for job_id in short + long:
        wait_running(store, job_id, worker)
    signalled_at = datetime.now(UTC)
    worker.send(signal.SIGTERM)

    assert worker.wait(timeout=20) == 0
    for job_id in short:
        job = store.get_job(job_id)
        assert job.state is JobState.SUCCEEDED, job
        assert job.attempt == 1
        assert job.end_time is not None
        assert job.end_time > signalled_at, "the short job should have finished while draining"
    for job_id in long:
        job = store.get_job(job_id)
        assert job.state is JobState.PENDING, job
        assert job.attempt == 0
        assert job.lease_id is None
        assert kinds(events_of(store, job_id))[-1] is EventKind.RELEASED
    assert store.count_jobs_by_state().get(JobState.RUNNING, 0) == 0
    assert worker_state(stub, worker_id) == pb.WORKER_STATE_STOPPED


def test_second_sigterm_stops_at_once_without_waiting_the_grace(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker
):
    long = [submit(stub, seconds=60, steps=60) for _ in range(2)]
    worker = start_worker(server.store_path, "--concurrency", "2", "--drain-grace", "60")
    worker_id = store.worker_of(worker).id
    for job_id in long:
        wait_running(store, job_id, worker)

    worker.send(signal.SIGTERM)
    # Signals of one kind do not queue: send the second once the first was handled.
    wait_until(
        lambda: worker_state(stub, worker_id) == pb.WORKER_STATE_DRAINING,
        timeout=10,
        what="the worker to start draining",
    )
    worker.send(signal.SIGTERM)

    assert worker.wait(timeout=15) == 0  # far less than the 60 s grace
    for job_id in long:
        job = store.get_job(job_id)
        assert (job.state, job.attempt) == (JobState.PENDING, 0), job
    assert worker_state(stub, worker_id) == pb.WORKER_STATE_STOPPED


# ---- failures -----------------------------------------------------------------------


def test_transient_failure_is_retried_with_backoff_then_failed_after_max_attempts(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker
):
    start_worker(server.store_path, "--poll-interval", "0.1")
    job_id = submit_with(
        stub, "demo.sleep", {"seconds": 0, "steps": 0, "fail": "transient"}, max_attempts=3
    )
    job = wait_state(store, job_id, *TERMINAL, timeout=30)

    assert job.state is JobState.FAILED
    assert job.attempt == 3
    assert job.error is not None
    assert job.error.code == "demo_transient"
    events = events_of(store, job_id)
    starts = [e for e in events if e.kind is EventKind.STARTED]
    assert [e.job.attempt for e in starts] == [1, 2, 3]
    retries = [e for e in events if e.kind is EventKind.RETRY_SCHEDULED]
    assert len(retries) == 2
    for retry, next_start in zip(retries, starts[1:], strict=True):
        assert retry.job.run_after > retry.time, "a retry waits a backoff"
        assert next_start.time >= retry.job.run_after, "not claimed before its backoff ended"
    assert kinds(events)[-1] is EventKind.FAILED


def test_permanent_failure_fails_at_once_without_retry(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker
):
    start_worker(server.store_path)
    job_id = submit_with(
        stub, "demo.sleep", {"seconds": 0, "steps": 0, "fail": "permanent"}, max_attempts=3
    )
    job = wait_state(store, job_id, *TERMINAL)

    assert job.state is JobState.FAILED
    assert job.attempt == 1
    assert job.error is not None
    assert job.error.retryable is False
    assert job.error.code == "demo_permanent"
    assert kinds(events_of(store, job_id)) == [
        EventKind.SUBMITTED,
        EventKind.STARTED,
        EventKind.FAILED,
    ]


# ---- audio.transcode ----------------------------------------------------------------


def watch_until_done(stub: Stub, job_id: str, timeout: float = 60) -> list[pb.JobEvent]:
    stream = stub.WatchJob(api.WatchJobRequest(job_id=job_id), timeout=timeout)
    return [message.event for message in stream]


def test_transcode_reports_rising_progress_and_writes_a_readable_mp3(
    tmp_path: Path, server: ServerProcess, stub: Stub, start_worker: StartWorker
):
    source = make_tone(tmp_path / "tone.wav", seconds=5, sample_rate=44100)
    output = tmp_path / "tone.mp3"
    job_id = submit(
        stub, "audio.transcode", input=str(source), output=str(output),
        codec="libmp3lame", bitrate="64k",
    )  # fmt: skip
    # Follow the job from before a worker exists, so the stream sees it all.
    stream = stub.WatchJob(api.WatchJobRequest(job_id=job_id), timeout=60)
    first = next(stream).event
    assert first.job.state == pb.JOB_STATE_PENDING
    start_worker(server.store_path)
    events = [first, *(message.event for message in stream)]

    final = events[-1].job
    assert final.state == pb.JOB_STATE_SUCCEEDED, final
    percents = [e.job.progress.percent for e in events if e.job.state == pb.JOB_STATE_RUNNING]
    assert percents, "no progress seen while running"
    assert percents == sorted(percents), f"progress went backwards: {percents}"
    assert percents[-1] > percents[0], f"progress never rose: {percents}"
    assert final.progress.percent == 100
    stages = {e.job.progress.stage for e in events if e.kind == pb.EVENT_KIND_PROGRESS}
    assert stages & {"probing", "transcoding", "finalizing"}, stages
    result = dict(final.result)
    assert result["output"] == str(output.resolve())
    assert result["duration_s"] == pytest.approx(5, abs=0.1)
    assert result["bytes"] == output.stat().st_size > 0

    probed = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration",
         "-of", "default=noprint_wrappers=1:nokey=1", str(output)],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert float(probed.stdout) == pytest.approx(5, abs=0.2)
    assert [p.name for p in tmp_path.glob(".tone.partial-*")] == []


def test_transcode_of_missing_input_fails_at_once_with_a_clear_error(
    tmp_path: Path, server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker
):
    missing = tmp_path / "no-such-input.wav"
    start_worker(server.store_path)
    job_id = submit(stub, "audio.transcode", input=str(missing), output=str(tmp_path / "x.mp3"))
    job = wait_state(store, job_id, *TERMINAL)

    assert job.state is JobState.FAILED
    assert job.attempt == 1
    assert job.error is not None
    assert job.error.retryable is False
    assert "cannot read input" in job.error.message
    assert str(missing) in job.error.message
    assert not (tmp_path / "x.mp3").exists()


def test_transcode_that_ffmpeg_refuses_names_the_output_path_not_its_partial_file(
    tmp_path: Path, server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker
):
    source = make_tone(tmp_path / "tone.wav", seconds=1)
    start_worker(server.store_path)
    # ffprobe reads the input; ffmpeg then fails on the output: no format for the
    # extension, and a directory that does not exist.
    for output in (tmp_path / "tone.nosuchformat", tmp_path / "no-such-dir" / "tone.mp3"):
        job_id = submit(stub, "audio.transcode", input=str(source), output=str(output))
        job = wait_state(store, job_id, *TERMINAL)

        assert job.state is JobState.FAILED
        assert job.error is not None
        assert job.error.code == "ffmpeg_failed"
        assert str(output) in job.error.message
        assert "partial" not in job.error.message
        assert "file:" not in job.error.message
        assert not output.exists()
    assert list(tmp_path.rglob(".tone.partial-*")) == []


# ---- one-command setup --------------------------------------------------------------


def test_server_with_worker_runs_jobs_without_a_separate_worker(tmp_path: Path):
    server = start_server(tmp_path, args=["--with-worker"])
    try:
        with server.channel() as channel:
            stub = Stub(channel)
            job_id = submit(stub, seconds=0.5, steps=2)
            events = watch_until_done(stub, job_id)
            workers = stub.ListWorkers(api.ListWorkersRequest(), timeout=5).workers
    finally:
        exit_code = server.stop()
    assert exit_code == 0, server.log
    final = events[-1]
    assert final.kind == pb.EVENT_KIND_SUCCEEDED
    assert final.job.state == pb.JOB_STATE_SUCCEEDED
    assert final.job.result["steps"] == 2
    assert final.job.attempt == 1
    assert [w.pid for w in workers] == [server.process.pid]
    assert final.job.worker_id == workers[0].id
