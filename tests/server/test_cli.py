"""`jobcontrol-server`'s command line as a user meets it: `--help` in one duration
syntax, one-line errors, `--log-format json`, and the in-process worker's drain grace."""

from __future__ import annotations

import json
import re
import signal
from datetime import timedelta
from pathlib import Path

import pytest
from google.protobuf import struct_pb2

from jobcontrol.server import cli
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from jobcontrol.worker.runtime import WorkerConfig
from tests.conftest import ServerProcess, run_cli, start_server, wait_until

DURATION_FLAGS = (
    "--tail-interval",
    "--reap-interval",
    "--worker-lost-after",
    "--retention",
    "--prune-interval",
    "--worker-drain-grace",
)


def test_help_states_durations_once_and_every_default_in_their_syntax():
    result = run_cli("jobcontrol-server", "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    flat = " ".join(text.split())
    for mess in ("days,", "0:00:", "(default: None)", "(default: )", "(default: False)"):
        assert mess not in text, mess
    assert flat.count("a bare number is seconds") == 1
    for flag in DURATION_FLAGS:
        assert f"{flag} DURATION" in text, flag
    assert "older than this (default: 7d)" in flat
    assert "without a heartbeat (default: 1m)" in flat
    assert "(default 50ms for SQLite, 200ms for a remote libSQL store)" in flat
    assert "--log-format {text,json}" in text
    options = [a for a in cli.parser()._actions if a.option_strings]
    assert [a.dest for a in options if not a.help] == []


def test_duration_flags_take_units_and_the_drain_grace_defaults_to_the_workers():
    args = cli.parser().parse_args(
        ["--retention", "2h", "--reap-interval", "500ms", "--worker-lost-after", "90"]
    )
    config = cli.config_from_args(args)
    assert config.housekeeping.retention == timedelta(hours=2)
    assert config.housekeeping.reap_interval == 0.5
    assert config.housekeeping.worker_lost_after == timedelta(seconds=90)
    assert config.worker_drain_grace == WorkerConfig().drain_grace
    assert config.reject_unserved_types is False
    drained = cli.parser().parse_args(["--worker-drain-grace", "2m", "--reject-unserved-types"])
    assert cli.config_from_args(drained).worker_drain_grace == timedelta(minutes=2)
    assert cli.config_from_args(drained).reject_unserved_types is True


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--retention", "a week"], {}, "--retention"),
        (["--reap-interval", "0"], {}, "--reap-interval"),
        (["--worker-drain-grace", "5x"], {}, "--worker-drain-grace"),
        (["--log-level", "loud"], {}, "--log-level"),
        ([], {"JOBCONTROL_LOG_FORMAT": "xml"}, "JOBCONTROL_LOG_FORMAT"),
        ([], {"JOBCONTROL_REJECT_UNSERVED_TYPES": "maybe"}, "JOBCONTROL_REJECT_UNSERVED_TYPES"),
    ],
)
def test_a_bad_flag_is_one_clear_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], named: str
):
    result = run_cli("jobcontrol-server", "--store-path", str(tmp_path / "jobs.db"), *args, env=env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("jobcontrol-server: ")
    assert named in result.stderr
    assert not (tmp_path / "jobs.db").exists()


def test_a_bad_duration_states_the_syntax(tmp_path: Path):
    result = run_cli(
        "jobcontrol-server", "--store-path", str(tmp_path / "jobs.db"), "--retention", "soon"
    )
    assert result.returncode == 2
    assert result.stderr == (
        "jobcontrol-server: argument --retention: not a duration: 'soon' (a duration is a "
        "number with a unit: 500ms, 30s, 5m, 2h or 7d (a bare number is seconds))\n"
    )


def test_log_format_json_writes_one_object_per_line(tmp_path: Path):
    server = start_server(tmp_path, args=["--log-format", "json"])
    assert server.stop() == 0
    entries = [json.loads(line) for line in server.log.splitlines() if line.strip()]
    messages = [entry["message"] for entry in entries]
    assert any(m.startswith("listening on ") for m in messages), messages
    assert "stopped" in messages
    assert {entry["logger"] for entry in entries} >= {"jobcontrol.server.app"}
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)


# ---- the in-process worker's drain ----------------------------------------------------


def start_long_job(server: ServerProcess) -> str:
    """A demo.sleep of ten minutes, once the in-process worker is running it."""
    with server.channel() as channel:
        stub = job_control_pb2_grpc.JobControlStub(channel)
        payload = struct_pb2.Struct()
        payload.update({"seconds": 600, "steps": 600})
        job_id: str = stub.SubmitJob(
            api.SubmitJobRequest(type="demo.sleep", payload=payload), timeout=10
        ).job.id
        wait_until(
            lambda: job_state(stub, job_id) == pb.JOB_STATE_RUNNING,
            timeout=30,
            interval=0.05,
            what="the in-process worker to run the job",
        )
    return job_id


def job_state(stub: job_control_pb2_grpc.JobControlStub, job_id: str) -> int:
    return int(stub.GetJob(api.GetJobRequest(job_id=job_id), timeout=10).job.state)


def state_after(tmp_path: Path, server: ServerProcess, job_id: str) -> int:
    """The job's state in the store once the server has stopped, read by a new one."""
    reader = start_server(tmp_path, store_path=server.store_path, name="reader")
    try:
        with reader.channel() as channel:
            return job_state(job_control_pb2_grpc.JobControlStub(channel), job_id)
    finally:
        reader.stop()


def test_worker_drain_grace_reaches_the_in_process_worker(tmp_path: Path):
    server = start_server(tmp_path, args=["--with-worker", "--worker-drain-grace", "1s"])
    job_id = start_long_job(server)

    assert server.stop() == 0, server.log  # stop() kills what takes over 15 s
    assert "stopping the in-process worker: drain grace 1s;" in server.log
    assert re.search(r"draining: 1 jobs? ha(s|ve) 1s to finish", server.log), server.log
    assert state_after(tmp_path, server, job_id) == pb.JOB_STATE_PENDING  # handed back


def test_a_second_signal_ends_the_in_process_workers_drain_at_once(tmp_path: Path):
    server = start_server(tmp_path, args=["--with-worker", "--worker-drain-grace", "10m"])
    job_id = start_long_job(server)

    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "draining" in server.log, timeout=30, what="the drain to begin")
    assert server.process.poll() is None, "the server stopped before the drain grace ended"
    server.process.send_signal(signal.SIGTERM)

    assert server.process.wait(30) == 0, server.log
    assert "600s to finish" in server.log, server.log
    assert state_after(tmp_path, server, job_id) == pb.JOB_STATE_PENDING
