"""The real processes a benchmark runs: `jobcontrol-server` and `jobcontrol-worker`,
started as users start them (the store through the environment, see `backends.py`),
plus what /proc says about a process (RSS, CPU time) and the server's /metrics.

Every process logs to a file; `start` returns once the log shows the process is ready
(the server's "listening on" line, the worker's "running ... with N slots" line).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench import backends
from jobcontrol.store import StoreConfig

BIN = Path(sys.executable).parent
SERVER = BIN / "jobcontrol-server"
WORKER = BIN / "jobcontrol-worker"
ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0  # seconds a process may take to become ready
POLL = 0.01
LISTENING = re.compile(r"listening on (\S+):(\d+)")
_WORKER_READY = re.compile(r"worker .* running .* with \d+ slots")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """A port nothing listens on right now (for servers that cannot report port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """Resident set size now (VmRSS of /proc/PID/status)."""
    return _status_bytes(pid, "VmRSS")


def peak_rss_bytes(pid: int) -> int:
    """The highest resident set size so far (VmHWM of /proc/PID/status)."""
    return _status_bytes(pid, "VmHWM")


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time so far (utime + stime of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone before or while reading
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def children(pid: int) -> list[int]:
    """The direct children of a process."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def metrics_text(metrics_address: str) -> str:
    """What a /metrics endpoint serves now."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def store_calls_in(text: str) -> dict[str, float]:
    """`jobcontrol_store_calls_total` by operation, from a /metrics text."""
    return {
        sample.labels["operation"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "jobcontrol_store_calls"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def store_calls(metrics_address: str) -> dict[str, float]:
    """`jobcontrol_store_calls_total` by operation, from a /metrics endpoint."""
    return store_calls_in(metrics_text(metrics_address))


def histogram_buckets(
    text: str, name: str, label: str | None = None
) -> dict[str, dict[float, float]]:
    """Histogram `name`'s buckets from a /metrics text, by the value of `label` ("" for
    a histogram without one): cumulative count by upper bound (inf last)."""
    found: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets = found.setdefault(sample.labels[label] if label else "", {})
                buckets[float(sample.labels["le"])] = sample.value
    return {key: dict(sorted(buckets.items())) for key, buckets in found.items()}


@dataclass
class Process:
    """A child process writing to `log_path` (and serving /metrics, if it does)."""

    process: subprocess.Popen[bytes]
    log_path: Path
    metrics_address: str | None = None

    def store_calls(self) -> dict[str, float]:
        if self.metrics_address is None:
            raise RuntimeError("the process was started without metrics")
        return store_calls(self.metrics_address)

    def metrics_text(self) -> str:
        if self.metrics_address is None:
            raise RuntimeError("the process was started without metrics")
        return metrics_text(self.metrics_address)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()


def spawn(command: Sequence[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            # The root on the path: handler modules under bench/ import from there.
            env={**os.environ, "PYTHONPATH": _python_path(), **env},
            cwd=ROOT,
        )


def _python_path() -> str:
    """The root first, then whatever PYTHONPATH this process was given."""
    return os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


def wait_for_log(process: Process, pattern: re.Pattern[str], what: str) -> re.Match[str]:
    deadline = time.monotonic() + WAIT
    while True:
        text = process.log()
        found = pattern.search(text)
        if found:
            return found
        if process.process.poll() is not None or time.monotonic() > deadline:
            process.process.kill()
            process.process.wait()
            raise RuntimeError(f"{what} did not start:\n{text}")
        time.sleep(POLL)


@dataclass
class Server(Process):
    address: str = ""

    @classmethod
    def start(
        cls,
        log_path: Path,
        config: StoreConfig,
        *,
        metrics: bool = False,
        args: Sequence[str] = (),
    ) -> Server:
        """The server on `config`'s store, which it reads from the environment as a
        deployment passes it (and so picks its default tail interval for it)."""
        metrics_address = f"127.0.0.1:{free_port()}" if metrics else None
        command = [str(SERVER), "--listen", "127.0.0.1:0", *args]
        if metrics_address:
            command += ["--metrics-listen", metrics_address]
        server = cls(spawn(command, log_path, backends.store_env(config)), log_path)
        found = wait_for_log(server, LISTENING, "the server")
        server.address = f"{found.group(1)}:{found.group(2)}"
        server.metrics_address = metrics_address
        if metrics_address:
            ready = re.compile(re.escape(f"metrics on http://{metrics_address}"))
            wait_for_log(server, ready, "the metrics endpoint")
        return server


@dataclass
class Worker(Process):
    @classmethod
    def start(
        cls,
        log_path: Path,
        config: StoreConfig,
        *,
        concurrency: int,
        poll_interval: float | None = None,
        handlers: Sequence[str] = (),
        metrics: bool = False,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> Worker:
        """`jobcontrol-worker`, or with `metrics` the same worker with its store calls
        counted and served on /metrics (`bench.counted_worker`), with `args` added (a
        lease timeout, say); call `wait_ready`."""
        command = [sys.executable, "-m", "bench.counted_worker"] if metrics else [str(WORKER)]
        command += ["--concurrency", str(concurrency), *args]
        if poll_interval is not None:
            command += ["--poll-interval", str(poll_interval)]
        if handlers:
            command += ["--handlers", ",".join(handlers)]
        env = {**backends.store_env(config), **(env or {})}
        metrics_address = f"127.0.0.1:{free_port()}" if metrics else None
        if metrics_address:
            env["BENCH_METRICS_LISTEN"] = metrics_address
        return cls(spawn(command, log_path, env), log_path, metrics_address)

    def wait_ready(self) -> Worker:
        wait_for_log(self, _WORKER_READY, "the worker")
        return self


@dataclass
class Fleet:
    """Processes started together and stopped together (in reverse order)."""

    processes: list[Process] = field(default_factory=list)

    def add(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.process.poll() is None:
                process.process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            process.stop()


@contextlib.contextmanager
def fleet() -> Iterator[Fleet]:
    started = Fleet()
    try:
        yield started
    finally:
        started.stop()


def workers(
    directory: Path,
    config: StoreConfig,
    count: int,
    *,
    concurrency: int,
    poll_interval: float | None = None,
    handlers: Sequence[str] = (),
    metrics: bool = False,
    env: Mapping[str, str] | None = None,
    into: Fleet,
    name: str = "worker",
) -> list[Worker]:
    """`count` workers started at once (they start up in parallel), each ready; logs
    are `directory/{name}-{n}.log`."""
    started = [
        Worker.start(
            directory / f"{name}-{n}.log",
            config,
            concurrency=concurrency,
            poll_interval=poll_interval,
            handlers=handlers,
            metrics=metrics,
            env=env,
        )
        for n in range(count)
    ]
    for worker in started:
        into.add(worker)
    return [worker.wait_ready() for worker in started]


@contextlib.contextmanager
def deployment(
    backend: str,
    directory: Path,
    *,
    metrics: bool = False,
) -> Iterator[tuple[backends.Database, Server, Fleet]]:
    """A fresh database served as `backend` (file `directory/<backend>.db`), a server on
    it (which creates the schema), and a fleet for the workers to add; all stopped at
    the end of the block."""
    with backends.serve(backend, directory / f"{backend}.db") as db, fleet() as started:
        server = Server.start(directory / "server.log", db.config, metrics=metrics)
        started.add(server)
        yield db, server, started
