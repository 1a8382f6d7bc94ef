"""Start-up that tells the truth: `jobcontrol-server` and `jobcontrol-worker`, run as a
user runs them, stop at once with one clear line on stderr and a non-zero exit when
they cannot do their job, instead of saying "listening" and failing every call.

A read-only file means nothing to root, so as root the process runs as `nobody`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jobcontrol.store.sqlite import SqliteJobStore
from tests.conftest import BIN, free_port

NOBODY = 65534
TIMEOUT = 60


@dataclass
class Outcome:
    code: int
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


def run(program: str, *args: str, as_nobody: bool = False) -> Outcome:
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    done = subprocess.run(
        [*(drop if as_nobody and os.geteuid() == 0 else []), str(BIN / program), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return Outcome(done.returncode, done.stderr)


def assert_one_clear_line(outcome: Outcome, program: str, *expected: str) -> None:
    assert outcome.code != 0, outcome
    assert "Traceback" not in outcome.stderr, outcome.stderr
    for noise in ("E1130", "add_port", ".cc:"):  # gRPC C-core log lines
        assert noise not in outcome.stderr, outcome.stderr
    assert len(outcome.lines) == 1, outcome.stderr
    line = outcome.lines[0]
    assert line.startswith(f"{program}: "), line
    for text in expected:
        assert text in line, line


def server(*args: str, store: Path, as_nobody: bool = False) -> Outcome:
    return run("jobcontrol-server", "--store-path", str(store), *args, as_nobody=as_nobody)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_taken_port_stops_the_server_before_it_touches_the_database(
    tmp_path: Path, taken_port: int
):
    store = tmp_path / "jobs.db"
    outcome = server("--listen", f"127.0.0.1:{taken_port}", store=store)
    assert_one_clear_line(outcome, "jobcontrol-server", f"127.0.0.1:{taken_port}", "in use")
    assert not list(tmp_path.iterdir()), "the database was created although the port was taken"


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:99999", "port 99999 is out of range (0 to 65535"),
        ("127.0.0.1:65536", "port 65536 is out of range"),
        ("127.0.0.1", "is not HOST:PORT"),
        ("127.0.0.1:http", "is not HOST:PORT"),
        ("nonsense", "is not HOST:PORT"),
    ],
)
def test_a_listen_address_that_is_not_host_and_port_in_range_is_refused(
    tmp_path: Path, listen: str, expected: str
):
    outcome = server("--listen", listen, store=tmp_path / "jobs.db")
    assert_one_clear_line(outcome, "jobcontrol-server", "--listen", expected)
    assert not list(tmp_path.iterdir())


def test_an_environment_listen_address_out_of_range_is_refused_too(tmp_path: Path):
    done = subprocess.run(
        [str(BIN / "jobcontrol-server"), "--store-path", str(tmp_path / "jobs.db")],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
        env={**os.environ, "JOBCONTROL_LISTEN": "0.0.0.0:70000"},
    )
    assert_one_clear_line(Outcome(done.returncode, done.stderr), "jobcontrol-server", "70000")


def test_a_metrics_port_that_is_taken_stops_the_server_at_start(tmp_path: Path, taken_port: int):
    outcome = server(
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        f"127.0.0.1:{taken_port}",
        store=tmp_path / "j.db",
    )
    assert_one_clear_line(outcome, "jobcontrol-server", f"127.0.0.1:{taken_port}", "in use")
    assert not list(tmp_path.iterdir())


@pytest.fixture
def read_only_database() -> Iterator[Path]:
    """An up-to-date database file nobody may write, in a directory anyone may write
    (so SQLite's -wal and -shm files are not what fails)."""
    with tempfile.TemporaryDirectory(prefix="jobcontrol-ro-") as name:
        directory = Path(name)
        directory.chmod(0o777)
        path = directory / "jobs.db"

        async def create() -> None:
            store = await SqliteJobStore.open(path)
            await store.close()

        asyncio.run(create())
        for leftover in directory.glob("jobs.db-*"):
            leftover.unlink()
        path.chmod(0o444)
        yield path


def test_a_read_only_database_stops_the_server_at_start(read_only_database: Path):
    outcome = server("--listen", "127.0.0.1:0", store=read_only_database, as_nobody=True)
    assert_one_clear_line(
        outcome,
        "jobcontrol-server",
        f"the database {read_only_database} cannot be written",
        "readonly database",
    )


def test_a_read_only_database_stops_the_worker_at_start(read_only_database: Path):
    outcome = run("jobcontrol-worker", "--store-path", str(read_only_database), as_nobody=True)
    assert_one_clear_line(
        outcome,
        "jobcontrol-worker",
        f"the database {read_only_database} cannot be written",
        "readonly database",
    )


@pytest.mark.parametrize("program", ["jobcontrol-server", "jobcontrol-worker"])
def test_a_database_in_a_directory_that_does_not_exist_is_named(tmp_path: Path, program: str):
    store = tmp_path / "missing" / "jobs.db"
    args = ["--listen", "127.0.0.1:0"] if program == "jobcontrol-server" else []
    outcome = run(program, *args, "--store-path", str(store))
    assert_one_clear_line(outcome, program, f"create {tmp_path / 'missing'} first")


@pytest.mark.parametrize("program", ["jobcontrol-server", "jobcontrol-worker"])
def test_a_directory_given_as_the_database_is_named(tmp_path: Path, program: str):
    args = ["--listen", "127.0.0.1:0"] if program == "jobcontrol-server" else []
    outcome = run(program, *args, "--store-path", str(tmp_path))
    assert_one_clear_line(outcome, program, f"{tmp_path} is a directory")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("program", ["jobcontrol-server", "jobcontrol-worker"])
def test_an_unreachable_remote_store_stops_the_process_after_its_retries(program: str):
    """The remote driver retries an unreachable sqld for 5 s (a restart in progress),
    then gives up with the store's address and the cause."""
    url = f"http://127.0.0.1:{free_port()}"
    args = ["--listen", "127.0.0.1:0"] if program == "jobcontrol-server" else []
    outcome = run(program, *args, "--store-backend", "turso", "--store-url", url)
    assert_one_clear_line(outcome, program, f"cannot open the store: libSQL store {url}", "refused")


@pytest.mark.parametrize("program", ["jobcontrol-server", "jobcontrol-worker"])
def test_a_bad_store_backend_is_named(tmp_path: Path, program: str):
    args = ["--listen", "127.0.0.1:0"] if program == "jobcontrol-server" else []
    outcome = run(program, *args, "--store-backend", "mongodb")
    assert_one_clear_line(outcome, program, "JOB_STORE_BACKEND", "'mongodb'", "postgres")


@pytest.mark.parametrize("program", ["jobcontrol-server", "jobcontrol-worker"])
def test_postgres_without_a_url_asks_for_database_url(tmp_path: Path, program: str):
    args = ["--listen", "127.0.0.1:0"] if program == "jobcontrol-server" else []
    outcome = run(program, *args, "--store-backend", "postgres")
    assert_one_clear_line(outcome, program, "DATABASE_URL", "--store-url")


@pytest.mark.parametrize("program", ["jobcontrol-server", "jobcontrol-worker"])
def test_an_unreachable_postgres_is_one_line_with_the_cause(tmp_path: Path, program: str):
    args = ["--listen", "127.0.0.1:0"] if program == "jobcontrol-server" else []
    url = f"postgresql://postgres:hunter2@127.0.0.1:{free_port()}/jobs"
    outcome = run(program, *args, "--store-backend", "postgres", "--store-url", url)
    assert_one_clear_line(outcome, program, "Connection refused")
    assert "hunter2" not in outcome.stderr
