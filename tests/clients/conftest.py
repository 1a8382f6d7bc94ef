"""Fixtures for the client tests: real servers (one with an in-process worker, one that
requires a token, one whose worker also runs `tests.clients.number_handlers`), clients
of either flavour that are always closed, and a log capture for the client's retry and
reconnect messages."""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobcontrol.client import JobControlClient
from tests.clients.flavours import FLAVOURS, make_client
from tests.conftest import BIN, ROOT, ServerProcess, start_server, wait_until

MakeClient = Callable[..., Any]


@pytest.fixture(scope="module")
def worker_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`jobcontrol-server --with-worker`: jobs of the built-in types run for real."""
    server = start_server(tmp_path_factory.mktemp("worker-server"), args=["--with-worker"])
    try:
        yield server
    finally:
        server.stop()


StartNumberWorker = Callable[[ServerProcess], subprocess.Popen[bytes]]


@pytest.fixture(scope="module")
def start_number_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartNumberWorker]:
    """Starts a `jobcontrol-worker` on a server's store that also serves the types of
    `tests.clients.number_handlers`; every one is stopped when the module's tests end."""
    started: list[subprocess.Popen[bytes]] = []
    logs = tmp_path_factory.mktemp("number-workers")

    def start(server: ServerProcess) -> subprocess.Popen[bytes]:
        command = [
            str(BIN / "jobcontrol-worker"),
            "--store-path",
            str(server.store_path),
            "--handlers",
            "tests.clients.number_handlers",
        ]
        with (logs / f"worker-{time.monotonic_ns()}.log").open("wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        started.append(process)
        # Registered before the tests submit: a job must not wait on the worker's start-up.
        with JobControlClient(server.address) as client:
            wait_until(
                lambda: any("numbers.sizes" in w.job_types for w in client.workers()),
                timeout=60,
                what="the numbers worker to register",
            )
        return process

    try:
        yield start
    finally:
        for process in started:
            process.terminate()
        for process in started:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


@pytest.fixture(scope="module")
def numbers_server(
    tmp_path_factory: pytest.TempPathFactory, start_number_worker: StartNumberWorker
) -> Iterator[ServerProcess]:
    """A server whose store a worker running `tests.clients.number_handlers` serves."""
    server = start_server(tmp_path_factory.mktemp("numbers-server"))
    try:
        start_number_worker(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def auth_token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def auth_server(
    tmp_path_factory: pytest.TempPathFactory, auth_token: str
) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("auth-server"), env={"JOBCONTROL_AUTH_TOKEN": auth_token}
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clients(flavour: str) -> Iterator[MakeClient]:
    """Makes clients of the test's flavour; every one is closed when the test ends."""
    made: list[Any] = []

    def make(address: str, **options: Any) -> Any:
        client = make_client(flavour, address, **options)
        made.append(client)
        return client

    try:
        yield make
    finally:
        for client in made:
            client.close()


@pytest.fixture
def client(clients: MakeClient, worker_server: ServerProcess) -> Any:
    return clients(worker_server.address)


class Records(logging.Handler):
    """Keeps the records of the `jobcontrol.client` loggers, for waiting on them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, logger: str) -> list[str]:
        return [r.getMessage() for r in list(self.records) if r.name == logger]


@pytest.fixture
def client_log() -> Iterator[Records]:
    logger = logging.getLogger("jobcontrol.client")
    records = Records()
    previous = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(records)
        logger.setLevel(previous)


def server_dir(tmp_path: Path, name: str) -> Path:
    directory = tmp_path / name
    directory.mkdir(parents=True, exist_ok=True)
    return directory
