"""Real processes on a real PostgreSQL, for tests/e2e/test_postgres_faults.py: a blocking
view of the store to check what they did, the environment that points a server or a
worker at a database, and gRPC watchers that resume by sequence on whichever server
still answers, in threads, as a dashboard would."""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from jobcontrol.store.postgres import PostgresJobStore
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_control_pb2_grpc
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import ROOT
from tests.e2e.counting_handlers import LOG_ENV
from tests.worker.conftest import SyncStore

Stub = job_control_pb2_grpc.JobControlStub
PB_TERMINAL_KINDS = frozenset(
    {pb.EVENT_KIND_SUCCEEDED, pb.EVENT_KIND_FAILED, pb.EVENT_KIND_CANCELLED}
)
LISTENING = "listening for changes on PostgreSQL channel"


def postgres_env(url: str, finished_log: Path | None = None, **more: str) -> dict[str, str]:
    """What points `jobcontrol-server` and `jobcontrol-worker` at `url` (their
    --store-path is then unused); with `finished_log`, what the counting handlers need."""
    env = {"JOB_STORE_BACKEND": "postgres", "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    if finished_log is not None:
        env[LOG_ENV] = str(finished_log)
    return {**env, **more}


def times_in(log: str, text: str) -> int:
    return len(re.findall(re.escape(text), log))


def postgres_sync_store(url: str) -> SyncStore:
    """The PostgreSQL store with blocking calls. Poll-only: a checker needs no LISTEN
    connection of its own (and has none to lose)."""
    return SyncStore(opener=lambda: PostgresJobStore.open(url, poll_only=True))


# ---- watchers that resume -------------------------------------------------------------


@dataclass
class Watcher:
    """One stream (WatchJobs for a filter, or WatchJob for a job) read in a thread. When
    the stream breaks it is opened again, on the next address in `addresses` (the same
    one if it is the only one), with after_sequence = the last sequence received: what
    a client that resumes does. `events` is everything received, in order of arrival;
    `resumes` the after_sequence of each reconnect."""

    addresses: Sequence[str]
    job_id: str | None = None
    types: Sequence[str] = ()
    events: list[pb.JobEvent] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ended: bool = False  # a WatchJob stream that ended with OK after the terminal event
    _stopping: threading.Event = field(default_factory=threading.Event)
    _call: Any = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None

    def start(self) -> Watcher:
        self._thread = threading.Thread(target=self._run, name="watcher", daemon=True)
        self._thread.start()
        return self

    @property
    def last_sequence(self) -> int:
        return self.events[-1].sequence if self.events else 0

    def _open(self, stub: Stub, after: int | None) -> Any:
        if self.job_id is not None:
            request = api.WatchJobRequest(job_id=self.job_id, after_sequence=after)
            return stub.WatchJob(request, timeout=300)
        jobs = api.JobFilter(types=list(self.types))
        return stub.WatchJobs(api.WatchJobsRequest(filter=jobs, after_sequence=after), timeout=300)

    def _run(self) -> None:
        # WatchJobs starts from the beginning of the feed; WatchJob from a snapshot.
        after: int | None = 0 if self.job_id is None else None
        for address in itertools.cycle(self.addresses):
            if self._stopping.is_set():
                return
            with grpc.insecure_channel(address) as channel:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self._call = self._open(Stub(channel), after)
                try:
                    for message in self._call:
                        self.events.append(message.event)
                    self.ended = True
                    return
                except grpc.RpcError as error:
                    if self._stopping.is_set():
                        return
                    self.errors.append(f"{address}: {error.code().name} {error.details()}")
            after = self.last_sequence if self.events else after
            self.resumes.append(after or 0)
            # A pause between attempts when no server answers (both down, or starting).
            self._stopping.wait(0.05)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            if self._call is not None:
                self._call.cancel()
        if self._thread is not None:
            self._thread.join(30)
            assert not self._thread.is_alive(), "a watcher did not stop"
