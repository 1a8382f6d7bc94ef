"""What a user debugs with, through real `jobcontrol-worker` and `jobcontrol-server`
processes: a failed job's traceback in GetJob and WatchJob (bounded, keeping its end)
and in the worker's log; one log line per step of each job's life, as text and as JSON;
and a finished job's progress, which shows no stale step."""

from __future__ import annotations

import json
import re
import signal
from typing import Any

from jobcontrol.jobs import JobState
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import ROOT, ServerProcess, wait_until
from tests.worker.conftest import StartWorker, SyncStore, WorkerProcess
from tests.worker.test_worker_processes import (
    TERMINAL,
    Stub,
    submit_with,
    wait_running,
    wait_state,
    watch_until_done,
)

SAMPLE_HANDLERS = ("--handlers", "tests.worker.sample_handlers")
ON_PATH = {"PYTHONPATH": str(ROOT)}
MAX_DETAILS_BYTES = 16 * 1024


def start_sample_worker(
    start_worker: StartWorker, server: ServerProcess, *args: str
) -> WorkerProcess:
    return start_worker(server.store_path, *SAMPLE_HANDLERS, *args, env=ON_PATH)


def get_job(stub: Stub, job_id: str) -> pb.Job:
    return stub.GetJob(api.GetJobRequest(job_id=job_id), timeout=10).job


def log_has(worker: WorkerProcess, text: str) -> bool:
    return text in worker.log


def test_a_handler_error_keeps_its_traceback_in_the_job_and_the_worker_log(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker
):
    worker = start_sample_worker(start_worker, server)
    job_id = submit_with(stub, "sample.missing_key", {}, max_attempts=2)
    wait_state(store, job_id, *TERMINAL)

    job = get_job(stub, job_id)
    assert job.state == pb.JOB_STATE_FAILED
    assert job.error.message == "KeyError: 'missing'"
    details = job.error.details
    assert details.startswith("Traceback (most recent call last):")
    assert "in look_up_the_missing_key" in details
    assert 'settings[ctx.payload.get("key", "missing")]' in details
    assert details.rstrip().endswith("KeyError: 'missing'")
    # The thread pool a plain handler runs in is not the user's code.
    assert "concurrent/futures" not in details

    history = stub.WatchJob(api.WatchJobRequest(job_id=job_id, after_sequence=0), timeout=30)
    events = [message.event for message in history]
    failures = [
        e for e in events if e.kind in (pb.EVENT_KIND_RETRY_SCHEDULED, pb.EVENT_KIND_FAILED)
    ]
    assert [e.kind for e in failures] == [pb.EVENT_KIND_RETRY_SCHEDULED, pb.EVENT_KIND_FAILED]
    assert all(e.job.error.details == details for e in failures)

    # The worker logged it too: the first attempt at WARNING (retried), the last at ERROR.
    wait_until(lambda: log_has(worker, "attempt 2/2 failed"), timeout=10, what="the failure log")
    log = worker.log
    retried = re.search(
        rf"WARNING jobcontrol.worker.runtime: job {job_id} sample.missing_key attempt 1/2 "
        r"failed in \d+\.\d\ds: handler_error: KeyError: 'missing'; will retry in \d+\.\ds\n"
        r"Traceback \(most recent call last\):\n(.*\n)*?KeyError: 'missing'\n",
        log,
    )
    assert retried, log
    assert "in look_up_the_missing_key" in retried.group(0)
    assert re.search(
        rf"ERROR jobcontrol.worker.runtime: job {job_id} sample.missing_key attempt 2/2 "
        r"failed in \d+\.\d\ds: handler_error: KeyError: 'missing'\nTraceback",
        log,
    ), log


def test_an_overlong_traceback_is_bounded_and_keeps_its_end(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker
):
    worker = start_sample_worker(start_worker, server)
    job_id = submit_with(stub, "sample.deep_failure", {"depth": 400}, max_attempts=1)
    wait_state(store, job_id, *TERMINAL)

    details = get_job(stub, job_id).error.details
    assert len(details.encode()) <= MAX_DETAILS_BYTES
    marker = re.match(r"\[first (\d+) bytes cut\]\n", details)
    assert marker, details[:200]
    assert int(marker.group(1)) > 0
    assert details.rstrip().endswith("KeyError: 'bottom'")
    assert "in _descend_left" in details
    assert "in _descend_right" in details
    # The worker's log holds all of it, the first frames included.
    wait_until(lambda: log_has(worker, "KeyError: 'bottom'"), timeout=10, what="the failure log")
    assert "in fail_deep_down" in worker.log
    assert "in fail_deep_down" not in details


def life_records(worker: WorkerProcess) -> list[dict[str, Any]]:
    """The worker's JSON log records about jobs (every line must be JSON)."""
    records = [json.loads(line) for line in worker.log.splitlines() if line.strip()]
    return [r for r in records if "outcome" in r]


def test_each_jobs_life_is_one_line_per_step_with_fields_in_json(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker
):
    worker = start_worker(
        server.store_path, "--log-format", "json", "--drain-grace", "100ms", "--concurrency", "4"
    )
    sleep = {"seconds": 0.1, "steps": 2}
    ids = {
        "succeeds": submit_with(stub, "demo.sleep", sleep, max_attempts=1),
        "fails": submit_with(stub, "demo.sleep", {**sleep, "fail": "permanent"}, max_attempts=3),
        "retries": submit_with(stub, "demo.sleep", {**sleep, "fail": "transient"}, max_attempts=2),
        "is cancelled": submit_with(stub, "demo.sleep", {"seconds": 60, "steps": 60}),
        "is released": submit_with(stub, "demo.sleep", {"seconds": 60, "steps": 60}),
    }
    for name in ("succeeds", "fails", "retries"):
        wait_state(store, ids[name], *TERMINAL)
    wait_running(store, ids["is cancelled"], worker)
    stub.CancelJob(api.CancelJobRequest(job_id=ids["is cancelled"]), timeout=10)
    wait_state(store, ids["is cancelled"], JobState.CANCELLED)
    wait_running(store, ids["is released"], worker)
    worker.send(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.log

    records = life_records(worker)
    by_job = {
        name: [(r["outcome"], r["level"], r["attempt"]) for r in records if r["job_id"] == job_id]
        for name, job_id in ids.items()
    }
    assert by_job == {
        "succeeds": [("claimed", "info", 1), ("succeeded", "info", 1)],
        "fails": [("claimed", "info", 1), ("failed", "error", 1)],
        "retries": [
            ("claimed", "info", 1),
            ("retried", "warning", 1),
            ("claimed", "info", 2),
            ("failed", "error", 2),
        ],
        "is cancelled": [("claimed", "info", 1), ("cancelled", "info", 1)],
        "is released": [("claimed", "info", 1), ("released", "info", 1)],
    }
    for record in records:
        assert record["job_type"] == "demo.sleep"
        assert record["max_attempts"] == store.get_job(record["job_id"]).max_attempts
        if record["outcome"] == "claimed":
            assert "duration_seconds" not in record
        else:
            assert isinstance(record["duration_seconds"], float)
            assert record["duration_seconds"] >= 0
        attempts = f"attempt {record['attempt']}/{record['max_attempts']}"
        assert record["message"].startswith(f"job {record['job_id']} demo.sleep {attempts} ")
    failed = next(r for r in records if r["job_id"] == ids["fails"] and r["outcome"] == "failed")
    assert failed["error_code"] == "demo_permanent"
    assert "demo.sleep was asked to fail (permanent)" in failed["traceback"]
    retried = next(r for r in records if r["outcome"] == "retried")
    assert retried["error_code"] == "demo_transient"
    assert retried["retry_in_seconds"] >= 0
    assert "RetryableError" in retried["traceback"]
    succeeded = next(r for r in records if r["outcome"] == "succeeded")
    assert re.fullmatch(
        rf"job {ids['succeeds']} demo.sleep attempt 1/1 succeeded in \d+\.\d\ds",
        succeeded["message"],
    )


def test_a_finished_job_shows_full_progress_without_a_stale_step(
    server: ServerProcess, stub: Stub, start_worker: StartWorker
):
    """A handler that reports progress short of 100% and returns (as most do) leaves no
    stale words on the SUCCEEDED job; one that reports its end keeps its last words."""
    start_sample_worker(start_worker, server)
    stops_early = submit_with(stub, "sample.stops_early", {})
    four_steps = submit_with(stub, "demo.sleep", {"seconds": 0.2, "steps": 4})

    early = watch_until_done(stub, stops_early)
    assert early[-1].kind == pb.EVENT_KIND_SUCCEEDED
    assert [e.job.progress.message for e in early if e.kind == pb.EVENT_KIND_PROGRESS] == [
        "step 3/4"
    ]
    final = early[-1].job.progress
    assert (final.percent, final.stage, final.message) == (100, "", "")
    assert get_job(stub, stops_early).progress == final

    sleep = watch_until_done(stub, four_steps)
    assert sleep[-1].kind == pb.EVENT_KIND_SUCCEEDED
    final = sleep[-1].job.progress
    assert (final.percent, final.stage, final.message) == (100, "sleeping", "step 4/4")


def test_the_text_log_is_readable_per_job(
    server: ServerProcess, stub: Stub, store: SyncStore, start_worker: StartWorker
):
    worker = start_worker(server.store_path)
    job_id = submit_with(stub, "demo.sleep", {"seconds": 0, "steps": 0}, max_attempts=3)
    wait_state(store, job_id, JobState.SUCCEEDED)
    wait_until(lambda: log_has(worker, "succeeded in"), timeout=10, what="the success log")
    assert re.search(
        rf"INFO jobcontrol.worker.runtime: job {job_id} demo.sleep attempt 1/3 claimed\n",
        worker.log,
    ), worker.log
    assert re.search(
        rf"INFO jobcontrol.worker.runtime: job {job_id} demo.sleep attempt 1/3 succeeded in "
        r"\d+\.\d\ds\n",
        worker.log,
    ), worker.log
