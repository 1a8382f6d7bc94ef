"""Real `jobcontrol-worker` processes, started as users start them and always stopped
when the test ends; and a blocking view of the store for checking what they did."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jobcontrol.store import JobStore
from jobcontrol.store.sqlite import SqliteJobStore
from jobcontrol.workers import Worker
from tests.conftest import BIN, wait_until


@dataclass
class WorkerProcess:
    """A `jobcontrol-worker` process; its output goes to a log file, never a pipe."""

    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, signum: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        """The exit code; fails the test (with the log) if it does not exit in time."""
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.pid} still running after {timeout}s:\n{self.log}"
            ) from None

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal it and wait; kill -9 if it will not stop."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(10)

    def shut_down(self) -> None:
        """Teardown: SIGTERM, a second one (stop at once) if it lingers, then kill -9."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(1)
            except subprocess.TimeoutExpired:
                self.stop(signal.SIGTERM, timeout=10)
        self.kill()

    def kill(self) -> None:
        """kill -9: no shutdown path runs."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """`start_worker(store_path, *args)` starts `jobcontrol-worker --store-path X *args`."""
    started: list[WorkerProcess] = []

    def start(
        store_path: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}-{time.monotonic_ns()}.log"
        command = [str(BIN / "jobcontrol-worker"), "--store-path", str(store_path), *args]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
            )
        worker = WorkerProcess(process, log_path)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.shut_down()
        # Children of a worker that had to be killed (ffmpeg runs in its own session).
        for pid, _ in processes_mentioning(str(tmp_path)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains `text` (zombies have none)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # it ended meanwhile
            continue
        if text in line and int(cmdline.parent.name) != os.getpid():
            found.append((int(cmdline.parent.name), line))
    return found


class SyncStore:
    """A store with blocking calls (tests here are plain functions that poll): the
    SQLite store at `path`, or the store `opener` opens."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        opener: Callable[[], Coroutine[Any, Any, JobStore]] | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        if opener is None:
            assert path is not None
            opener = functools.partial(SqliteJobStore.open, path)
        self._store = self._loop.run_until_complete(opener())

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run_until_complete(method(*args, **kwargs))

        return call

    def worker_of(self, process: WorkerProcess, timeout: float = 30.0) -> Worker:
        """The store's record of a worker process, once it has registered."""

        def registered() -> Worker | None:
            if process.process.poll() is not None:
                raise AssertionError(f"worker exited with {process.process.returncode}")
            workers = self.list_workers(include_stopped=True)
            return next((w for w in workers if w.pid == process.pid), None)

        return wait_until(registered, timeout=timeout, interval=0.05, what="the worker to register")

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._store.close())
        finally:
            self._loop.close()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """The file the `server` fixture of tests/conftest.py serves."""
    return tmp_path / "jobs.db"


@pytest.fixture
def store(store_path: Path) -> Iterator[SyncStore]:
    opened = SyncStore(store_path)
    try:
        yield opened
    finally:
        opened.close()
