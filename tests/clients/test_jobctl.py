"""`jobctl` run as users run it, as a subprocess, against real servers: following jobs
(plain lines, JSON lines, and a live progress bar in a pseudo-terminal), exit codes
that reflect the final state, and errors as `jobctl: STATUS: message` with no traceback.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import queue
import re
import select
import struct
import subprocess
import termios
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from jobcontrol.client.cli import EXIT_CANCELLED, EXIT_ERROR, EXIT_FAILED, EXIT_USAGE, parser
from tests.clients.conftest import StartNumberWorker, server_dir
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
    assert " SUBMITTED PENDING " in lines[1]  # the job's story from its first event
    assert any(" PROGRESS RUNNING " in line and "sleeping" in line for line in lines)
    assert " SUCCEEDED SUCCEEDED 100%" in lines[-2]
    assert re.fullmatch(r"job \S+ SUCCEEDED after [\d.]+s: \{.*\}", lines[-1]), lines[-1]
    assert "\x1b[" not in result.stdout  # not a terminal: no escape codes


def test_submit_watch_of_a_job_an_earlier_submission_made_starts_from_its_snapshot(
    worker_server: ServerProcess,
):
    """The same idempotency key returns the first job, whose history may be long: the
    watch shows where it stands, not every event it ever had."""
    key = f"twice-{uuid.uuid4()}"
    command = ("submit", "demo.sleep", "--payload", QUICK_JOB, "--idempotency-key", key, "--watch")
    first = jobctl(*command, address=worker_server.address)
    again = jobctl(*command, address=worker_server.address)

    assert first.returncode == 0, first.stderr
    assert " SUBMITTED PENDING " in first.stdout.splitlines()[1]
    assert again.returncode == 0, again.stderr
    lines = again.stdout.splitlines()
    assert lines[0] == first.stdout.splitlines()[0]  # "submitted job <the same id>"
    assert " SNAPSHOT SUCCEEDED " in lines[1], lines
    assert len(lines) == 3, lines  # the snapshot, then how it ended


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
    # The handler's traceback follows on stderr, to debug with.
    assert "Traceback (most recent call last):" in result.stderr
    assert 'demo_sleep.py", line' in result.stderr
    assert result.stderr.rstrip().endswith("demo.sleep was asked to fail (permanent)")


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
    assert events[0]["kind"] == "EVENT_KIND_SUBMITTED"
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
    assert [job["id"] for job in json.loads(limited.stdout)] == ids[:0:-1]
    assert [job["id"] for job in json.loads(cancelled.stdout)] == [ids[0]]


def test_an_empty_list_says_so_instead_of_printing_a_bare_header(worker_server: ServerProcess):
    label = f"run={uuid.uuid4().hex[:8]}"

    table = jobctl("list", "--label", label, address=worker_server.address)
    as_json = jobctl("list", "--label", label, "--json", address=worker_server.address)

    assert table.returncode == 0, table.stderr
    assert table.stdout == ""
    assert table.stderr.strip() == "no jobs match"
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == []


def test_an_empty_list_on_a_new_server_says_there_are_no_jobs_yet(tmp_path: Path):
    server = start_server(server_dir(tmp_path, "empty"))
    try:
        result = jobctl("list", address=server.address)
        workers = jobctl("workers", address=server.address)
        workers_json = jobctl("workers", "--json", address=server.address)
    finally:
        server.stop()

    assert (result.returncode, result.stdout, result.stderr.strip()) == (0, "", "no jobs yet")
    assert (workers.stdout, workers.stderr.strip()) == ("", "no live workers")
    assert json.loads(workers_json.stdout) == []


def test_every_command_takes_json(worker_server: ServerProcess):
    job_id = submitted_id(worker_server, "demo.sleep", "--delay", "1h")
    address = worker_server.address

    submitted = jobctl("submit", "demo.sleep", "--delay", "1h", "--json", address=address)
    got = jobctl("get", job_id, "--json", address=address)
    cancelled = jobctl("cancel", job_id, "--json", address=address)
    retried = jobctl("retry", job_id, "--json", address=address)
    workers = jobctl("workers", "--json", address=address)
    jobctl("cancel", job_id, address=address)
    jobctl("cancel", json.loads(submitted.stdout)["id"], address=address)

    assert json.loads(submitted.stdout)["state"] == "JOB_STATE_PENDING"
    assert len(got.stdout.splitlines()) == 1  # one line, where plain `get` indents
    assert json.loads(got.stdout)["id"] == job_id
    assert json.loads(cancelled.stdout)["state"] == "JOB_STATE_CANCELLED"
    assert json.loads(retried.stdout)["state"] == "JOB_STATE_PENDING"
    [worker] = json.loads(workers.stdout)
    assert worker["state"] == "WORKER_STATE_ACTIVE"  # proto3 JSON names and enums
    assert "demo.sleep" in worker["jobTypes"]
    assert worker["concurrency"] >= 1


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


# ---- numbers, durations, warnings -------------------------------------------------------


def test_whole_numbers_print_as_integers(numbers_server: ServerProcess):
    address = numbers_server.address
    payload = json.dumps({"steps": 4, "ratio": 0.5})

    watched = jobctl("submit", "numbers.sizes", "--payload", payload, "--watch", address=address)
    job_id = watched.stdout.splitlines()[0].removeprefix("submitted job ")
    got = jobctl("get", job_id, address=address)
    listed = jobctl("list", "--type", "numbers.sizes", "--json", address=address)

    assert watched.returncode == 0, watched
    summary = watched.stdout.splitlines()[-1]
    # Printed as an integer, wherever the key falls (a Struct's keys come in no set order).
    assert re.search(r'"bytes": 160514(?![.\d])', summary), summary
    assert "160514.0" not in summary
    assert '"steps": 4' in summary
    assert '"ratio": 0.5' in summary
    result = json.loads(got.stdout)["result"]
    assert re.search(r'"bytes": 160514(?![.\d])', got.stdout), got.stdout
    assert type(result["bytes"]) is int
    assert type(result["echo"]["steps"]) is int
    assert type(result["huge"]) is float  # past 2**53 it stays what the wire holds
    assert type(json.loads(listed.stdout)[0]["result"]["nested"]["counts"][0]) is int


def test_durations_take_units_and_bare_seconds(worker_server: ServerProcess):
    address = worker_server.address

    in_units = json.loads(
        jobctl(
            "submit",
            "demo.sleep",
            "--delay",
            "2h",
            "--job-timeout",
            "90s",
            "--json",
            "--timeout",
            "5s",
            address=address,
        ).stdout
    )
    in_seconds = json.loads(
        jobctl("submit", "demo.sleep", "--delay", "7200", "--json", address=address).stdout
    )
    refused = jobctl("submit", "demo.sleep", "--delay", "2 fortnights", address=address)

    for job in (in_units, in_seconds):
        created = datetime.fromisoformat(job["createTime"])
        assert datetime.fromisoformat(job["runAfter"]) - created == timedelta(hours=2)
        jobctl("cancel", job["id"], address=address)
    assert in_units["timeout"] == "90s"
    assert refused.returncode == EXIT_USAGE
    assert "500ms, 30s, 5m, 2h or 7d" in refused.stderr


def test_help_states_the_duration_syntax_and_every_option_says_what_it_does():
    top_level = parser()
    commands = next(
        action for action in top_level._actions if isinstance(action, argparse._SubParsersAction)
    )
    texts = [jobctl("--help", address=None).stdout]
    for name, sub in commands.choices.items():
        texts.append(jobctl(name, "--help", address=None).stdout)
        for action in sub._actions:
            assert action.help, f"jobctl {name} {action.option_strings or action.dest}"
    for action in top_level._actions:
        assert action.help, action.option_strings

    texts = [" ".join(text.split()) for text in texts]  # argparse wraps lines anywhere
    assert "500ms, 30s, 5m, 2h or 7d" in texts[0]
    for text in texts:
        assert "(default: None)" not in text
        assert "(default: )" not in text
        assert not re.search(r"\(default[^)]*\)\s*\(default", text), text  # doubled
        assert "0:00" not in text  # no timedelta reprs
    assert "[--timeout DURATION]" in texts[0]
    submit_help = texts[1 + list(commands.choices).index("submit")]
    assert "--delay DURATION" in submit_help
    assert "--job-timeout DURATION" in submit_help


def test_submit_warns_when_no_live_worker_serves_the_type(worker_server: ServerProcess):
    job_type = f"test.nobody{uuid.uuid4().hex[:8]}"

    result = jobctl("submit", job_type, address=worker_server.address)

    assert result.returncode == 0, result.stderr
    assert str(uuid.UUID(result.stdout.strip())) == result.stdout.strip()
    [warning] = result.stderr.splitlines()
    assert warning.startswith("jobctl: warning: "), warning
    assert job_type in warning
    jobctl("cancel", result.stdout.strip(), address=worker_server.address)


@pytest.mark.parametrize("command", ["watch", "submit --watch"])
def test_watch_warns_while_no_worker_serves_the_type_and_says_when_one_does(
    tmp_path: Path, start_number_worker: StartNumberWorker, command: str
):
    """Once: `submit --watch` warns when it submits, and the watch does not repeat it."""
    server = start_server(server_dir(tmp_path, "unserved"))
    try:
        if command == "watch":
            args = ["watch", submitted_id(server, "numbers.sizes")]
        else:
            args = ["submit", "numbers.sizes", "--watch"]
        with Lines([JOBCTL, *args], environment(server.address)) as watch:
            warning = watch.next_line()
            start_number_worker(server)
            served = watch.next_line()
            code = watch.process.wait(60)
    finally:
        server.stop()

    assert warning.startswith("jobctl: warning: ")
    assert "numbers.sizes" in warning
    assert served == "jobctl: a live worker serves job type 'numbers.sizes' now"
    assert code == 0


class Lines:
    """A running command whose stderr lines are read as they come, each with a deadline
    (a line that never comes fails the test instead of hanging it)."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            list(args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.put(line.rstrip("\n"))

    def next_line(self, timeout: float = 30) -> str:
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line on stderr within {timeout}s") from None

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self._reader.join(10)  # it stops at the end of the output
        assert self.process.stderr is not None
        self.process.stderr.close()


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
