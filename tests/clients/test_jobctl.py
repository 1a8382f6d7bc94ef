"""`jobctl` run as users run it, as a subprocess, against real servers: following jobs
(plain lines, JSON lines, and a live progress bar in a pseudo-terminal), exit codes
that reflect the final state, and errors as `jobctl: STATUS: message` with no traceback.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import termios
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest

from jobcontrol.client.cli import EXIT_CANCELLED, EXIT_ERROR, EXIT_FAILED, EXIT_USAGE
from tests.clients.conftest import server_dir
from tests.conftest import BIN, ServerProcess, free_port, start_server
from tests.server.test_auth_tls import make_certs

JOBCTL = str(BIN / "jobctl")
QUICK_JOB = json.dumps({"seconds": 0.5, "steps": 5})
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def environment(address: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBCONTROL_")}
    if address is not None:
        env["JOBCONTROL_ADDR"] = address
    return {**env, **extra}


def jobctl(
    *args: str, address: str | None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [JOBCTL, *args],
        env=environment(address, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def submitted_id(server: ServerProcess, *args: str) -> str:
    result = jobctl("submit", *args, address=server.address)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert str(uuid.UUID(job_id)) == job_id
    return job_id


def assert_clean_error(result: subprocess.CompletedProcess[str], status: str) -> None:
    assert result.returncode == EXIT_ERROR, result
    assert result.stderr.startswith(f"jobctl: {status}: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def run_in_terminal(
    args: Sequence[str], env: dict[str, str], timeout: float = 60
) -> tuple[int, str]:
    """Run with stdin/stdout/stderr on a 120x40 pseudo-terminal; all it wrote, and its
    exit code. Reads until the terminal closes, with a deadline."""
    controller, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        list(args),
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env={**env, "TERM": "xterm-256color"},
        start_new_session=True,
    )
    os.close(terminal)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            output += chunk
        returncode = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        os.close(controller)
    return returncode, output.decode(errors="replace")


# ---- following jobs --------------------------------------------------------------------


def test_submit_watch_follows_a_job_to_success_and_exits_zero(worker_server: ServerProcess):
    result = jobctl(
        "submit", "demo.sleep", "--payload", QUICK_JOB, "--watch", address=worker_server.address
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("submitted job ")
    assert " SNAPSHOT " in lines[1]
    assert any(" PROGRESS RUNNING " in line and "sleeping" in line for line in lines)
    assert " SUCCEEDED SUCCEEDED 100%" in lines[-2]
    assert re.fullmatch(r"job \S+ SUCCEEDED after [\d.]+s: \{.*\}", lines[-1]), lines[-1]
    assert "\x1b[" not in result.stdout  # not a terminal: no escape codes


def test_a_failed_job_exits_one_and_says_why(worker_server: ServerProcess):
    payload = json.dumps({"seconds": 0.1, "steps": 1, "fail": "permanent"})

    result = jobctl(
        "submit", "demo.sleep", "--payload", payload, "--watch", address=worker_server.address
    )

    assert result.returncode == EXIT_FAILED, result
    assert re.fullmatch(
        r"job \S+ FAILED after [\d.]+s: demo_permanent: demo.sleep was asked to fail.*",
        result.stdout.splitlines()[-1],
    ), result.stdout


def test_a_cancelled_job_exits_two(worker_server: ServerProcess):
    job_id = submitted_id(worker_server, "demo.sleep", "--delay", "3600")

    cancelled = jobctl("cancel", job_id, "--reason", "not today", address=worker_server.address)
    watched = jobctl("watch", job_id, address=worker_server.address)

    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.strip() == f"{job_id} CANCELLED"
    assert watched.returncode == EXIT_CANCELLED, watched
    assert watched.stdout.splitlines()[-1] == f"job {job_id} CANCELLED: not today"


def test_watch_json_prints_one_proto3_json_object_per_event(worker_server: ServerProcess):
    # Submitted and watched by one process, so the watch starts before the job ends.
    result = jobctl(
        "submit",
        "demo.sleep",
        "--payload",
        QUICK_JOB,
        "--watch",
        "--json",
        address=worker_server.address,
    )

    assert result.returncode == 0, result.stderr
    job_id = result.stderr.removeprefix("submitted job ").strip()
    events = [json.loads(line) for line in result.stdout.splitlines()]  # nothing but JSON
    assert events[0]["kind"] == "EVENT_KIND_SNAPSHOT"
    assert events[-1]["kind"] == "EVENT_KIND_SUCCEEDED"
    assert events[-1]["job"]["state"] == "JOB_STATE_SUCCEEDED"
    assert events[-1]["job"]["maxAttempts"] == 3  # lowerCamelCase names
    sequences = [int(e["sequence"]) for e in events if e["kind"] != "EVENT_KIND_QUEUE_POSITION"]
    assert sequences == sorted(set(sequences))
    assert all(e["job"]["id"] == job_id for e in events)


def test_watch_on_a_terminal_draws_a_progress_bar_with_percent_and_stage(
    worker_server: ServerProcess,
):
    payload = json.dumps({"seconds": 1.0, "steps": 4})

    code, raw = run_in_terminal(
        [JOBCTL, "submit", "demo.sleep", "--payload", payload, "--watch"],
        environment(worker_server.address),
    )

    screen = _ANSI.sub("", raw)
    assert code == 0, screen
    assert "\x1b[" in raw  # drawn in place with escape codes
    assert re.search(r"RUNNING\s.*\b(25|50|75)%\s+sleeping\s+step \d/4", screen), screen
    assert re.search(r"SUCCEEDED\s.*100%\s+sleeping", screen), screen
    assert "elapsed" in screen
    assert "ETA" in screen
    assert re.search(r"job \S+ SUCCEEDED after", screen), screen


# ---- the other commands ----------------------------------------------------------------


def test_get_prints_the_job_as_json(worker_server: ServerProcess):
    job_id = submitted_id(worker_server, "demo.sleep", "--delay", "3600", "--priority", "9")

    result = jobctl("get", job_id, address=worker_server.address)

    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["id"] == job_id
    assert job["state"] == "JOB_STATE_PENDING"
    assert job["priority"] == 9
    assert "queuePosition" in job


def test_list_filters_by_label_and_state_and_honours_the_limit(worker_server: ServerProcess):
    label = f"run={uuid.uuid4().hex[:8]}"
    ids = [
        submitted_id(worker_server, "demo.sleep", "--delay", "3600", "--label", label)
        for _ in range(3)
    ]
    jobctl("cancel", ids[0], address=worker_server.address)

    table = jobctl("list", "--label", label, address=worker_server.address)
    limited = jobctl(
        "list", "--label", label, "--limit", "2", "--json", address=worker_server.address
    )
    cancelled = jobctl(
        "list", "--label", label, "--state", "cancelled", "--json", address=worker_server.address
    )

    rows = table.stdout.splitlines()
    assert rows[0].split() == ["ID", "TYPE", "STATE", "PROGRESS", "ATTEMPT", "CREATED"]
    assert [row.split()[0] for row in rows[1:]] == ids[::-1]
    assert [json.loads(line)["id"] for line in limited.stdout.splitlines()] == ids[:0:-1]
    assert [json.loads(line)["id"] for line in cancelled.stdout.splitlines()] == [ids[0]]


def test_retry_and_workers(worker_server: ServerProcess):
    job_id = submitted_id(worker_server, "demo.sleep", "--delay", "3600")
    jobctl("cancel", job_id, address=worker_server.address)

    retried = jobctl("retry", job_id, address=worker_server.address)
    workers = jobctl("workers", "--all", address=worker_server.address)

    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.startswith(f"{job_id} PENDING")
    assert workers.returncode == 0, workers.stderr
    header, row = workers.stdout.splitlines()
    assert header.split()[:3] == ["ID", "NAME", "STATE"]
    assert " ACTIVE " in row
    assert "demo.sleep" in row


def test_connection_flags_work_after_the_subcommand_too(worker_server: ServerProcess):
    result = jobctl("workers", "--addr", worker_server.address, address="127.0.0.1:1")

    assert result.returncode == 0, result.stderr


# ---- errors ----------------------------------------------------------------------------


def test_an_unknown_job_is_not_found_without_a_traceback(worker_server: ServerProcess):
    missing = str(uuid.uuid4())

    for command in ("get", "watch", "cancel", "retry"):
        result = jobctl(command, missing, address=worker_server.address)
        assert_clean_error(result, "NOT_FOUND")
        assert result.stderr.strip() == f"jobctl: NOT_FOUND: job {missing} not found"


def test_a_malformed_id_and_a_refused_transition_are_reported_with_their_status(
    worker_server: ServerProcess,
):
    done = submitted_id(worker_server, "demo.sleep", "--payload", '{"seconds": 0}')
    jobctl("watch", done, address=worker_server.address)

    assert_clean_error(jobctl("get", "nope", address=worker_server.address), "INVALID_ARGUMENT")
    refused = jobctl("cancel", done, address=worker_server.address)
    assert_clean_error(refused, "FAILED_PRECONDITION")
    assert "SUCCEEDED" in refused.stderr


def test_no_server_is_unavailable_without_a_traceback():
    address = f"127.0.0.1:{free_port()}"

    for command in (["get", str(uuid.uuid4())], ["submit", "demo.sleep"], ["workers"]):
        result = jobctl(*command, address=address)
        assert_clean_error(result, "UNAVAILABLE")
        assert "onnect" in result.stderr  # gRPC's own words: "failed to connect ..."


def test_a_server_with_auth_needs_the_token_from_env_or_file(
    auth_server: ServerProcess, auth_token: str, tmp_path: Path
):
    token_file = tmp_path / "token"
    token_file.write_text(f"# jobctl token\n{auth_token}\n")

    without = jobctl("workers", address=auth_server.address)
    from_env = jobctl("workers", address=auth_server.address, JOBCONTROL_AUTH_TOKEN=auth_token)
    from_file = jobctl("--token-file", str(token_file), "workers", address=auth_server.address)

    assert_clean_error(without, "UNAUTHENTICATED")
    assert from_env.returncode == 0, from_env.stderr
    assert from_file.returncode == 0, from_file.stderr


def test_tls_flags_reach_a_tls_server(tmp_path: Path):
    certs = make_certs(server_dir(tmp_path, "certs"))
    server = start_server(
        server_dir(tmp_path, "tls"),
        args=["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)],
    )
    try:
        with_ca = jobctl("--tls-ca", str(certs.ca), "workers", address=server.address)
        plaintext = jobctl("workers", address=server.address)
    finally:
        server.stop()

    assert with_ca.returncode == 0, with_ca.stderr
    assert_clean_error(plaintext, "UNAVAILABLE")


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "demo.sleep", "--payload", "{not json"],
        ["submit", "demo.sleep", "--payload", "[1, 2]"],
        ["submit", "demo.sleep", "--label", "novalue"],
        ["list", "--state", "sleeping"],
        ["list", "--limit", "-1"],
        ["--token-file", "/nonexistent/token", "workers"],
        ["frobnicate"],
    ],
)
def test_a_bad_command_line_is_a_usage_error(args: list[str]):
    result = jobctl(*args, address=f"127.0.0.1:{free_port()}")

    assert result.returncode == EXIT_USAGE, result
    assert "error:" in result.stderr
    assert "Traceback" not in result.stderr
