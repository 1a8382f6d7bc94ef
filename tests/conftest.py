"""Shared fixtures: a controllable clock, and real server processes on loopback (ours,
and sqld for the remote store) that are always stopped (SIGTERM, then kill) when the
test ends."""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from jobcontrol.v1 import job_control_pb2_grpc
from tests.polling import wait_until as wait_until
from tests.polling import wait_until_async as wait_until_async
from tests.postgres import (
    PgBouncer,
    PostgresCluster,
    PostgresMissing,
    stop_all_clusters,
)
from tests.sqld import DelayProxy, JwtKey, SqldMissing, SqldProcess, sqld_binary, stop_all

# A shell without job control starts background commands (`make test &` in a script) with
# SIGINT ignored, and every process started from there inherits that: the tests that
# press Ctrl-C in `jobctl top` or a server would then wait for nothing. Python's own
# handler here means the processes the tests start get the default disposition again.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


class ManualClock:
    """A clock tests move by hand, so leases, backoff and reaping need no sleeping."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, delta: timedelta | float) -> datetime:
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        with self._lock:
            self._now += delta
            return self._now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


# ---- real server processes ---------------------------------------------------------

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


def rss_bytes(pid: int) -> int:
    """Resident set size now (VmRSS)."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The highest resident set size so far (VmHWM)."""
    return _status_kib(pid, "VmHWM") * 1024


def _status_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    assert found, status
    return int(found.group(1))


def free_port() -> int:
    """A port that was free a moment ago (for endpoints that cannot report their own)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A `jobcontrol-server` started as a user starts it, on an ephemeral port."""

    process: subprocess.Popen[bytes]
    address: str
    store_path: Path
    log_path: Path
    metrics_address: str | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.address)

    def stop(self, timeout: float = 15.0, drain: float = 5.0) -> int:
        """SIGTERM; if a `--with-worker` server is still draining its jobs after `drain`
        seconds, a second SIGTERM hands them back at once, as Ctrl-C twice does."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(min(drain, timeout))
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout)

    def kill(self) -> None:
        """kill -9: no shutdown path runs."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def start_server(
    directory: Path,
    *,
    store_path: Path | None = None,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    metrics: bool = False,
    name: str = "server",
) -> ServerProcess:
    store_path = store_path or directory / "jobs.db"
    log_path = directory / f"{name}-{time.monotonic_ns()}.log"
    metrics_address = f"127.0.0.1:{free_port()}" if metrics else None
    command = [
        str(BIN / "jobcontrol-server"),
        "--listen",
        "127.0.0.1:0",
        "--store-path",
        str(store_path),
        *(["--metrics-listen", metrics_address] if metrics_address else []),
        *args,
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    _started.append(process)

    def listening() -> str | None:
        text = log_path.read_text(errors="replace")
        found = _LISTENING.search(text)
        if found:
            return f"{found.group(1)}:{found.group(2)}"
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{text}")
        return None

    address = wait_until(listening, timeout=30, what="the server to listen")
    return ServerProcess(process, address, store_path, log_path, metrics_address)


_started: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True, scope="session")
def _no_process_left_behind() -> Iterator[None]:
    yield
    for process in _started:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    stop_all()  # any sqld or delay proxy a test left running


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    started = start_server(tmp_path)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[job_control_pb2_grpc.JobControlStub]:
    with server.channel() as channel:
        yield job_control_pb2_grpc.JobControlStub(channel)


def read_metrics(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a server's /metrics, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def health_status(channel: grpc.Channel) -> int | None:
    """The JobControl service's health status, or None while the server does not answer."""
    try:
        response = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[no-untyped-call]
            health_pb2.HealthCheckRequest(service="jobcontrol.v1.JobControl"), timeout=2
        )
    except grpc.RpcError:
        return None
    return int(response.status)


# ---- sqld, the libSQL server, for the remote store ---------------------------------


@pytest.fixture(scope="session")
def sqld_jwt_key(tmp_path_factory: pytest.TempPathFactory) -> JwtKey:
    """One key pair for the session: minting one takes three openssl runs."""
    return JwtKey.create(tmp_path_factory.mktemp("sqld-jwt"))


StartSqld = Callable[..., SqldProcess]


@pytest.fixture
def start_sqld(tmp_path: Path, sqld_jwt_key: JwtKey) -> Iterator[StartSqld]:
    """`start_sqld(auth=True)` starts another sqld under tmp_path, with JWT auth (its
    `token` is valid) unless auth=False; every one is stopped when the test ends.

    A missing sqld fails the test rather than skipping it: CI must run these."""
    missing = ""
    try:
        sqld_binary()
    except SqldMissing as error:
        missing = str(error)
    if missing:
        pytest.fail(missing, pytrace=False)
    started: list[SqldProcess] = []

    def start(*, auth: bool = True) -> SqldProcess:
        process = SqldProcess(tmp_path, auth=sqld_jwt_key if auth else False)
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def sqld(start_sqld: StartSqld) -> SqldProcess:
    """A sqld of its own for this test, with JWT auth: `sqld.url`, `sqld.token`."""
    return start_sqld()


StartDelayProxy = Callable[..., DelayProxy]


@pytest.fixture
def delay_proxy() -> Iterator[StartDelayProxy]:
    """`delay_proxy(sqld.url, rtt=0.020)`: a DelayProxy in front of it, stopped when the
    test ends."""
    started: list[DelayProxy] = []

    def start(target: str, rtt: float = 0.020, *, handshake: bool = True) -> DelayProxy:
        proxy = DelayProxy(target, rtt, handshake=handshake)
        started.append(proxy)
        return proxy.start()

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()


def run_cli(
    program: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One of the package's commands, as a user runs it, with what it printed."""
    return subprocess.run(
        [str(BIN / program), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


# ---- PostgreSQL ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One real PostgreSQL 15 for the session (starting one costs a second or two); tests
    get a database of their own from `postgres_url`. A test may stop or kill it: the next
    `postgres_url` starts it again.

    A missing PostgreSQL fails the test rather than skipping it: CI must run these."""
    missing = ""
    try:
        cluster = PostgresCluster()
    except PostgresMissing as error:
        missing = str(error)
    if missing:
        pytest.fail(missing, pytrace=False)
    try:
        yield cluster.start()
    finally:
        cluster.remove()


_postgres_databases = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """A fresh empty database for this test (`t_<n>`), its URL; dropped afterwards, its
    sessions ended first."""
    if not postgres_cluster.running:
        postgres_cluster.start()
    name = f"t_{next(_postgres_databases)}"
    url = postgres_cluster.create_database(name)
    try:
        yield url
    finally:
        if not postgres_cluster.running:
            postgres_cluster.start()
        postgres_cluster.drop_database(name)


@pytest.fixture
def pgbouncer(postgres_cluster: PostgresCluster) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the session's cluster: `pgbouncer.url(db)`
    reaches any of its databases. A missing pgbouncer fails the test."""
    if not postgres_cluster.running:
        postgres_cluster.start()
    missing = ""
    try:
        bouncer = PgBouncer(postgres_cluster)
    except PostgresMissing as error:
        missing = str(error)
    if missing:
        pytest.fail(missing, pytrace=False)
    try:
        yield bouncer.start()
    finally:
        bouncer.remove()


@pytest.fixture(autouse=True, scope="session")
def _no_postgres_left_behind() -> Iterator[None]:
    yield
    stop_all_clusters()  # any cluster or PgBouncer a test left running
