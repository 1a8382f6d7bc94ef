"""`jobctl top` against real servers: once for scripts, live in a pseudo-terminal fed by
the WatchJobs stream, as JSON events, leaving on Ctrl-C and when the server goes away."""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import struct
import subprocess
import termios
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jobcontrol.client import JobControlClient, JobSpec, top
from jobcontrol.client.cli import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_USAGE
from jobcontrol.jobs import Job, JobState
from tests.clients.conftest import server_dir
from tests.clients.test_jobctl import JOBCTL, environment, jobctl
from tests.conftest import ServerProcess, free_port, start_server, wait_until

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LATER = "1h"  # the in-process worker leaves such jobs PENDING


class Terminal:
    """A command on a 160x50 pseudo-terminal, its output read as it comes."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        controller, terminal = os.openpty()
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        self.process = subprocess.Popen(
            list(args),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            env={**env, "TERM": "xterm-256color"},
            start_new_session=True,
        )
        os.close(terminal)
        self._controller = controller
        self._output = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._controller, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not chunk:
                return
            with self._lock:
                self._output += chunk

    @property
    def screen(self) -> str:
        """Everything written so far, without escape codes."""
        with self._lock:
            return _ANSI.sub("", self._output.decode(errors="replace"))

    def wait_until(self, pattern: str, timeout: float = 30) -> None:
        wait_until(
            lambda: re.search(pattern, self.screen), timeout=timeout, what=f"{pattern!r} on screen"
        )

    def interrupt(self) -> None:
        """Ctrl-C, as the terminal sends it: SIGINT to the foreground process."""
        self.process.send_signal(signal.SIGINT)

    def wait(self, timeout: float = 30) -> int:
        code = self.process.wait(timeout)
        self._reader.join(10)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._reader.join(10)
        os.close(self._controller)


def submit(address: str, *args: str) -> str:
    result = jobctl("submit", *args, address=address)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def sequence_now(address: str, label: str) -> int:
    """The sequence of a marker job's last event (it is submitted and cancelled): a
    stream that replays what came after it misses nothing that happens from here on."""
    marker = submit(address, "demo.sleep", "--delay", LATER, "--label", label)
    with JobControlClient(address) as client:
        client.cancel(marker)
        return list(client.watch(marker, after_sequence=0))[-1].sequence


def test_top_once_shows_the_matching_jobs_with_their_state_and_the_workers(
    worker_server: ServerProcess,
):
    address = worker_server.address
    label = f"top={uuid.uuid4().hex[:8]}"
    done = submit(address, "demo.sleep", "--payload", '{"seconds": 0}', "--label", label)
    assert jobctl("watch", done, address=address).returncode == 0
    waiting = submit(address, "demo.sleep", "--delay", LATER, "--label", label)

    everything = jobctl("top", "--once", "--label", label, address=address)
    pending = jobctl("top", "--once", "--label", label, "--state", "pending", address=address)
    jobctl("cancel", waiting, address=address)

    assert everything.returncode == 0, everything.stderr
    rows = {line.split()[0]: line.split() for line in everything.stdout.splitlines() if line}
    assert rows[done][2] == "SUCCEEDED"
    assert rows[waiting][2] == "PENDING"
    assert re.search(r"\bPENDING 1\b.*\bRUNNING 0\b.*\bSUCCEEDED 1\b", everything.stdout)
    assert re.search(r"ACTIVE\s+\d+/\d+\s+.*demo\.sleep", everything.stdout)
    assert waiting in pending.stdout
    assert done not in pending.stdout
    assert "SUCCEEDED" not in pending.stdout  # neither the row nor its count


def test_top_follows_changes_from_the_stream_and_leaves_on_ctrl_c(worker_server: ServerProcess):
    address = worker_server.address
    label = f"top={uuid.uuid4().hex[:8]}"
    since = sequence_now(address, label)
    waiting = submit(address, "demo.sleep", "--delay", LATER, "--label", label)
    terminal = Terminal(
        [JOBCTL, "top", "--label", label, "--after-sequence", str(since)], environment(address)
    )
    try:
        terminal.wait_until(rf"{waiting}\s+demo\.sleep\s+PENDING")
        jobctl("cancel", waiting, "--reason", "from the test", address=address)
        runs = submit(address, "demo.sleep", "--payload", '{"seconds": 0.2}', "--label", label)
        terminal.wait_until(rf"{waiting}\s+demo\.sleep\s+CANCELLED\s.*from the test")
        terminal.wait_until(rf"{runs}\s+demo\.sleep\s+SUCCEEDED")
        terminal.interrupt()
        code = terminal.wait()
    finally:
        terminal.close()

    assert code == EXIT_INTERRUPTED, terminal.screen
    assert "Traceback" not in terminal.screen
    assert "KeyboardInterrupt" not in terminal.screen


def test_top_says_in_one_line_when_the_server_goes_away(tmp_path: Path):
    server = start_server(server_dir(tmp_path, "going"))
    terminal = Terminal([JOBCTL, "top"], environment(server.address))
    try:
        terminal.wait_until("no jobs match yet")
        server.stop()
        code = terminal.wait(timeout=60)
    finally:
        terminal.close()
        server.stop()

    screen = terminal.screen
    assert code == EXIT_ERROR, screen
    last = screen.strip().splitlines()[-1]
    assert last.startswith("jobctl: UNAVAILABLE: "), screen
    assert "Traceback" not in screen


def test_top_json_prints_each_change_as_one_json_event(worker_server: ServerProcess):
    address = worker_server.address
    label = f"top={uuid.uuid4().hex[:8]}"
    since = sequence_now(address, label)
    job_id = submit(address, "demo.sleep", "--payload", '{"seconds": 0.1}', "--label", label)
    process = subprocess.Popen(
        [JOBCTL, "top", "--json", "--label", label, "--after-sequence", str(since)],
        env=environment(address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    events: list[dict[str, Any]] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            events.append(json.loads(line))
            if events[-1]["kind"] == "EVENT_KIND_SUCCEEDED":
                break
        process.send_signal(signal.SIGINT)
        code = process.wait(30)
        _, stderr = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)

    assert [e["kind"] for e in events][:1] == ["EVENT_KIND_SUBMITTED"]
    assert {e["job"]["id"] for e in events} == {job_id}  # the marker's events came before
    assert events[-1]["job"]["state"] == "JOB_STATE_SUCCEEDED"
    assert code == EXIT_INTERRUPTED
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    "args",
    [
        ["top"],  # stdout is a pipe here: no terminal to draw on
        ["top", "--rows", "0"],
        ["top", "--once", "--json"],
        ["top", "--after-sequence", "-1"],
    ],
)
def test_top_refuses_a_bad_command_line(args: list[str]):
    result = jobctl(*args, address=f"127.0.0.1:{free_port()}")

    assert result.returncode == EXIT_USAGE, result
    assert result.stderr.strip().splitlines()[-1].startswith("jobctl: error: ")
    assert "Traceback" not in result.stderr


def test_top_keeps_up_with_thousands_of_jobs_from_the_stream(worker_server: ServerProcess):
    address = worker_server.address
    label = f"top={uuid.uuid4().hex[:8]}"
    since = sequence_now(address, label)
    job_type = f"test.many{uuid.uuid4().hex[:8]}"  # no worker serves it: all stay PENDING
    terminal = Terminal(
        [JOBCTL, "top", "--label", label, "--state", "pending", "--after-sequence", str(since)],
        environment(address),
    )
    try:
        terminal.wait_until("no jobs match yet")
        with JobControlClient(address) as client:
            for _ in range(3):
                specs = [JobSpec(type=job_type, labels={"top": label[4:]}) for _ in range(1000)]
                client.submit_many(specs)
        terminal.wait_until(r"PENDING 3000\b", timeout=60)
        terminal.wait_until(r"… and \d+ more")
        terminal.interrupt()
        code = terminal.wait()
    finally:
        terminal.close()

    assert code == EXIT_INTERRUPTED


def _job(number: int, state: JobState, updated: datetime) -> Job:
    return Job(
        id=f"job-{number}",
        type="demo.sleep",
        payload={},
        state=state,
        priority=0,
        labels={},
        attempt=1,
        max_attempts=3,
        create_time=updated,
        update_time=updated,
        run_after=updated,
    )


def test_the_board_keeps_the_newest_state_and_forgets_old_finished_jobs_but_counts_them(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(top, "KEPT_JOBS", 10)
    board = top.Board(top.TopFilter())
    start = datetime(2026, 1, 1, tzinfo=UTC)
    running = _job(0, JobState.RUNNING, start)
    board.offer(running)
    for number in range(1, 12):
        board.offer(_job(number, JobState.SUCCEEDED, start + timedelta(seconds=number)))
    board.offer(_job(0, JobState.PENDING, start - timedelta(seconds=1)))  # older: ignored

    frame = board.frame(rows=100)

    assert frame.counts[JobState.SUCCEEDED] == 11
    assert frame.counts[JobState.RUNNING] == 1
    assert frame.counts[JobState.PENDING] == 0
    assert frame.jobs[0] == running  # running first, then the newest
    assert [job.id for job in frame.jobs[1:3]] == ["job-11", "job-10"]
    assert len(frame.jobs) == 10  # the oldest finished ones are forgotten
    assert "job-1" not in {job.id for job in frame.jobs}
