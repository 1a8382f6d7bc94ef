"""Exactly-once claims across OS processes.

Workers on one machine are separate processes, each with its own connection to the
same SQLite file. Here four real processes (spawned, so nothing is shared through
fork) claim and complete jobs while the parent is still submitting them; every job
must run exactly once, and the event log must tell each job's story exactly once. The
same runs on the remote driver, each process with its own connections to one real sqld,
and on PostgreSQL, where the claims skip each other's locked rows.

Children report through a queue: "ready" once their store is open, "done" with the
jobs they claimed, or "error" with a traceback, which fails the test.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import queue
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import pytest

from jobcontrol.jobs import EventKind, Job, JobEvent, JobSpec, JobState
from jobcontrol.store import JobStore, StoreConfig, open_store
from jobcontrol.store.protocol import JobFilter
from tests.sqld import SqldProcess

pytestmark = pytest.mark.slow

JOB_TYPE = "demo.sleep"
PROCESSES = 4
BATCHES = 20
BATCH_SIZE = 100
TOTAL_JOBS = BATCHES * BATCH_SIZE
CLAIM_LIMIT = 8
LEASE_TIMEOUT = timedelta(seconds=30)
DEADLINE_SECONDS = 120.0
IDLE_POLL_SECONDS = 0.005
PARENT_POLL_SECONDS = 0.02

# (kind, worker id, body): body is None, a list of (job id, attempt), or a traceback.
Report = tuple[str, str, Any]


# ---- child process ------------------------------------------------------------------


def claim_until_stopped(
    config: StoreConfig, worker_id: str, stop: Event, reports: Queue[Report]
) -> None:
    """Process target: claim and complete jobs until `stop` is set, then report them.

    Module level so the spawn start method can import it in the child."""
    try:
        claimed = asyncio.run(_claim_loop(config, worker_id, stop, reports))
    except BaseException:
        reports.put(("error", worker_id, traceback.format_exc()))
    else:
        reports.put(("done", worker_id, claimed))


async def _claim_loop(
    config: StoreConfig, worker_id: str, stop: Event, reports: Queue[Report]
) -> list[tuple[str, int]]:
    store = await open_store(config)
    claimed: list[tuple[str, int]] = []
    try:
        reports.put(("ready", worker_id, None))
        while not stop.is_set():
            jobs = await store.claim_jobs(
                worker_id=worker_id,
                types=[JOB_TYPE],
                limit=CLAIM_LIMIT,
                lease_timeout=LEASE_TIMEOUT,
            )
            if not jobs:
                # Idle polling, as a real worker does; the parent's event ends the loop.
                await asyncio.sleep(IDLE_POLL_SECONDS)
                continue
            for job in jobs:
                claimed.append((job.id, job.attempt))
                assert job.lease_id is not None
                done = await store.complete_job(
                    job_id=job.id, lease_id=job.lease_id, result={"worker": worker_id}
                )
                assert done.state is JobState.SUCCEEDED, done
    finally:
        await store.close()
    return claimed


# ---- parent side --------------------------------------------------------------------


class Inbox:
    """What the children have reported so far; an error report fails the test at once."""

    def __init__(self, reports: Queue[Report], processes: Sequence[SpawnProcess]) -> None:
        self._reports = reports
        self._processes = processes
        self.by_kind: dict[str, dict[str, Any]] = defaultdict(dict)

    def poll(self) -> None:
        # Note who has exited before draining: a child's last report is in the pipe
        # before it exits, so an exited child without a "done" report died.
        exited = [p for p in self._processes if p.exitcode is not None]
        while True:
            try:
                kind, worker_id, body = self._reports.get_nowait()
            except queue.Empty:
                break
            if kind == "error":
                pytest.fail(f"claimer {worker_id} raised:\n{body}")
            self.by_kind[kind][worker_id] = body
        for process in exited:
            if process.name not in self.by_kind["done"]:
                pytest.fail(f"claimer {process.name} died with exit code {process.exitcode}")

    async def wait_for(self, kind: str, deadline: float) -> None:
        """Poll until every child has sent a `kind` report."""
        while len(self.by_kind[kind]) < len(self._processes):
            self.poll()
            if time.monotonic() > deadline:
                pytest.fail(
                    f"only {sorted(self.by_kind[kind])} of {PROCESSES} claimers "
                    f"reported {kind!r} before the deadline"
                )
            await asyncio.sleep(PARENT_POLL_SECONDS)


async def poll_until(
    inbox: Inbox, deadline: float, what: str, done: Callable[[], Awaitable[bool]]
) -> None:
    """Poll `done` (and the children's reports) until it holds or the deadline passes."""
    while not await done():
        inbox.poll()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(PARENT_POLL_SECONDS)


async def all_jobs(store: JobStore) -> list[Job]:
    jobs: list[Job] = []
    token = ""
    while True:
        page = await store.list_jobs(job_filter=JobFilter(), page_size=1000, page_token=token)
        jobs.extend(page.jobs)
        token = page.next_page_token
        if not token:
            return jobs


async def all_events(store: JobStore) -> list[JobEvent]:
    events: list[JobEvent] = []
    while True:
        after = events[-1].sequence if events else 0
        batch = await store.list_events(after_sequence=after, limit=5000)
        if not batch:
            return events
        events.extend(batch)


@pytest.fixture(params=["sqlite", "libsql-remote", "postgres"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> StoreConfig:
    if request.param == "sqlite":
        return StoreConfig(backend="local", path=str(tmp_path / "jobs.db"))
    if request.param == "postgres":
        return StoreConfig(backend="postgres", url=request.getfixturevalue("postgres_url"))
    sqld: SqldProcess = request.getfixturevalue("sqld")  # a real sqld, stopped at the end
    assert sqld.token is not None
    return StoreConfig(backend="turso", url=sqld.url, auth_token=sqld.token)


async def test_four_processes_claim_every_job_exactly_once(store_config: StoreConfig) -> None:
    # The parent creates the schema before any child opens the file.
    store = await open_store(store_config)
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    reports: Queue[Report] = ctx.Queue()
    processes = [
        ctx.Process(
            target=claim_until_stopped,
            args=(store_config, f"claimer-{n}", stop, reports),
            name=f"claimer-{n}",
            daemon=True,
        )
        for n in range(PROCESSES)
    ]
    inbox = Inbox(reports, processes)
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        for process in processes:
            process.start()
        await inbox.wait_for("ready", deadline)

        submitted: list[str] = []

        async def first_batch_partly_claimed() -> bool:
            page = await store.list_jobs(
                job_filter=JobFilter(states=frozenset({JobState.PENDING})), page_size=BATCH_SIZE
            )
            return len(page.jobs) < BATCH_SIZE

        async def all_finished() -> bool:
            unfinished = JobFilter(states=frozenset({JobState.PENDING, JobState.RUNNING}))
            page = await store.list_jobs(job_filter=unfinished, page_size=1)
            return not page.jobs

        for batch in range(BATCHES):
            specs = [
                JobSpec(type=JOB_TYPE, payload={"batch": batch, "index": index})
                for index in range(BATCH_SIZE)
            ]
            created = await store.create_jobs(specs)
            assert all(s.created for s in created)
            submitted.extend(s.job.id for s in created)
            inbox.poll()
            if batch == 0:
                # Hold the rest back until the claimers have demonstrably started, so
                # claiming and submitting overlap on every run.
                await poll_until(inbox, deadline, "the first claim", first_batch_partly_claimed)

        await poll_until(inbox, deadline, f"all {TOTAL_JOBS} jobs to finish", all_finished)
        stop.set()
        await inbox.wait_for("done", deadline)
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            assert process.exitcode == 0, (process.name, process.exitcode)

        # Every job was claimed exactly once, on its first attempt, by some process.
        claims: dict[str, list[tuple[str, int]]] = inbox.by_kind["done"]
        counts = Counter(job_id for pairs in claims.values() for job_id, _ in pairs)
        duplicates = {job_id: n for job_id, n in counts.items() if n > 1}
        assert not duplicates, f"claimed more than once: {duplicates}"
        assert set(counts) == set(submitted), "claimed set differs from submitted set"
        assert len(submitted) == TOTAL_JOBS == len(set(submitted))
        assert all(attempt == 1 for pairs in claims.values() for _, attempt in pairs)
        claimer_of = {job_id: w for w, pairs in claims.items() for job_id, _ in pairs}
        assert sum(1 for pairs in claims.values() if pairs) >= 2, (
            "the load never spread over processes: "
            f"{ {w: len(pairs) for w, pairs in claims.items()} }"
        )

        # The store agrees: every job SUCCEEDED on attempt 1, run by its claimer.
        jobs = await all_jobs(store)
        assert sorted(j.id for j in jobs) == sorted(submitted)
        for job in jobs:
            assert job.state is JobState.SUCCEEDED, job
            assert job.attempt == 1, job
            assert job.worker_id == claimer_of[job.id], job
            assert job.result == {"worker": claimer_of[job.id]}, job

        # The log tells each job's story once, in order, with increasing sequences.
        events = await all_events(store)
        sequences = [e.sequence for e in events]
        assert all(a < b for a, b in itertools.pairwise(sequences))
        assert len(events) == 3 * TOTAL_JOBS
        kinds_by_job: dict[str, list[EventKind]] = defaultdict(list)
        for event in events:
            kinds_by_job[event.job.id].append(event.kind)
            if event.kind is EventKind.STARTED:
                assert event.job.worker_id == claimer_of[event.job.id], event
                assert event.job.attempt == 1, event
        assert set(kinds_by_job) == set(submitted)
        expected = [EventKind.SUBMITTED, EventKind.STARTED, EventKind.SUCCEEDED]
        wrong = {j: k for j, k in kinds_by_job.items() if k != expected}
        assert not wrong, f"jobs with the wrong events: {dict(list(wrong.items())[:5])}"

        # Claiming really overlapped submission.
        first_started = min(e.sequence for e in events if e.kind is EventKind.STARTED)
        last_submitted = max(e.sequence for e in events if e.kind is EventKind.SUBMITTED)
        assert first_started < last_submitted
    finally:
        stop.set()
        for process in processes:
            if process.pid is None:
                continue  # never started
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()
        reports.close()
        reports.join_thread()
        await store.close()
