"""`watch()` across kill -9 and restart of the server, both flavours.

The test plays the worker itself, writing to the store directly, so it decides exactly
which changes happen while the watch is connected, while no server runs, and after the
new server (same port, same store) is up. The caller must see every transition exactly
once and in order, and the watch must end after the terminal event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobcontrol.client import Backoff, EventKind, JobEvent, JobSpec, Unavailable, status_name
from jobcontrol.jobs import Progress
from jobcontrol.store.sqlite import SqliteJobStore
from tests.clients.conftest import MakeClient, Records, server_dir
from tests.conftest import ServerProcess, free_port, start_server, wait_until

LEASE = timedelta(seconds=30)
QUICK = Backoff(initial=0.05, maximum=0.5)


class Store:
    """A blocking view of the SQLite store the servers use, on its own event loop."""

    def __init__(self, path: Path) -> None:
        self._runner = asyncio.Runner()
        self.store = self._runner.run(SqliteJobStore.open(path))

    def run(self, coroutine: Any) -> Any:
        return self._runner.run(coroutine)

    def close(self) -> None:
        self.run(self.store.close())
        self._runner.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "jobs.db")
    try:
        yield opened
    finally:
        opened.close()


class Watcher:
    """Consumes a watch in a thread, keeping what it yields, as an application would."""

    def __init__(self, client: Any, job_id: str, pool: ThreadPoolExecutor) -> None:
        self.events: list[JobEvent] = []
        self.done: Future[None] = pool.submit(self._follow, client, job_id)

    def _follow(self, client: Any, job_id: str) -> None:
        for event in client.watch(job_id):
            self.events.append(event)

    def kinds(self) -> list[EventKind]:
        return [e.kind for e in list(self.events)]

    def wait_for_kinds(self, *expected: EventKind) -> None:
        def arrived() -> bool:
            if self.done.done():
                self.done.result()  # raises what ended the watch
            return self.kinds() == list(expected)

        wait_until(arrived, timeout=30, what=f"events {expected}, have {self.kinds()}")


def on_port(tmp_path: Path, name: str, port: int, store: Path) -> ServerProcess:
    return start_server(
        server_dir(tmp_path, name), store_path=store, args=["--listen", f"127.0.0.1:{port}"]
    )


def test_watch_resumes_after_kill_9_and_yields_each_transition_exactly_once(
    tmp_path: Path, store: Store, clients: MakeClient, client_log: Records
):
    K = EventKind
    store_path = tmp_path / "jobs.db"
    port = free_port()
    first = on_port(tmp_path, "first", port, store_path)
    second: ServerProcess | None = None
    try:
        job = store.run(store.store.create_job(JobSpec(type="demo.sleep"))).job
        client = clients(f"127.0.0.1:{port}", retry=QUICK, watch_reconnect_timeout=60)
        with ThreadPoolExecutor(1) as pool:
            watcher = Watcher(client, job.id, pool)
            watcher.wait_for_kinds(K.SNAPSHOT)
            (claimed,) = store.run(
                store.store.claim_jobs(
                    worker_id="test", types=["demo.sleep"], limit=1, lease_timeout=LEASE
                )
            )
            lease = claimed.lease_id
            watcher.wait_for_kinds(K.SNAPSHOT, K.STARTED)

            first.kill()
            # Missed while no server runs; the client keeps trying meanwhile.
            for percent in (30, 60):
                store.run(
                    store.store.report_progress(
                        job_id=job.id, lease_id=lease, progress=Progress(percent, "work")
                    )
                )
            wait_until(
                lambda: len(client_log.messages("jobcontrol.client.watching")) >= 2,
                what="the watch to try reconnecting to the dead server",
            )
            assert not watcher.done.done()

            second = on_port(tmp_path, "second", port, store_path)
            watcher.wait_for_kinds(K.SNAPSHOT, K.STARTED, K.PROGRESS, K.PROGRESS)
            # Live again: changes after the resume arrive as they happen.
            store.run(
                store.store.report_progress(
                    job_id=job.id, lease_id=lease, progress=Progress(90, "finishing")
                )
            )
            store.run(store.store.complete_job(job_id=job.id, lease_id=lease, result={"ok": 1}))
            watcher.done.result(timeout=60)
    finally:
        first.kill()
        if second is not None:
            second.stop()

    events = watcher.events
    assert [e.kind for e in events] == [
        K.SNAPSHOT,
        K.STARTED,
        K.PROGRESS,
        K.PROGRESS,
        K.PROGRESS,
        K.SUCCEEDED,
    ]
    assert [e.job.progress.percent for e in events[2:5]] == [30, 60, 90]
    sequences = [e.sequence for e in events]
    assert sequences == sorted(set(sequences)), "duplicates or out of order"
    stored = store.run(store.store.list_events(after_sequence=events[0].sequence, job_id=job.id))
    assert [(e.sequence, e.kind) for e in stored] == [(e.sequence, e.kind) for e in events[1:]]
    assert events[-1].job.result == {"ok": 1}
    resumed = [m for m in client_log.messages("jobcontrol.client.watching") if "resuming" in m]
    assert all(f"after sequence {events[1].sequence}" in m for m in resumed), resumed


def test_watch_gives_up_with_unavailable_when_the_server_stays_away(
    tmp_path: Path, store: Store, clients: MakeClient
):
    port = free_port()
    server = on_port(tmp_path, "only", port, tmp_path / "jobs.db")
    try:
        job = store.run(store.store.create_job(JobSpec(type="demo.sleep"))).job
        client = clients(f"127.0.0.1:{port}", retry=QUICK, watch_reconnect_timeout=1.0)
        watch = client.watch(job.id)
        assert next(watch).kind is EventKind.SNAPSHOT
        server.kill()
        started = time.monotonic()

        with pytest.raises(Unavailable) as raised:
            next(watch)
    finally:
        server.kill()

    waited = time.monotonic() - started
    assert 0.9 < waited < 10, waited
    assert status_name(raised.value) == "UNAVAILABLE"
    assert "gave up resuming the watch" in raised.value.message
