"""Faults on a real PostgreSQL 15 (issue #17 item 7): real `jobcontrol-server` and
`jobcontrol-worker` processes on loopback sharing one fresh database per test, with a
server and a worker killed -9 mid-run, PostgreSQL itself restarted mid-run, the LISTEN
connections ended by an administrator, and PgBouncer in transaction mode in front, with
`JOB_STORE_POLL_ONLY=1` and, to show why it exists, without. Each test counts that every
job ran once (the counting handlers' log and the event log agree), that watchers resuming
by sequence saw what WatchJob and WatchJobs promise, and that the store holds no
half-written transition. The last test holds the server's event tail to outliving a store
error no driver maps to "unavailable" (it once ended the tail silently).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from jobcontrol.jobs import ErrorCode, EventKind, Job, JobEvent, JobState
from jobcontrol.store.listen import APPLICATION_NAME as LISTEN_APPLICATION
from jobcontrol.v1 import job_control_pb2 as api
from jobcontrol.v1 import job_pb2 as pb
from tests.conftest import ServerProcess, start_server, wait_until
from tests.e2e.postgres_system import (
    LISTENING,
    PB_TERMINAL_KINDS,
    Stub,
    Watcher,
    postgres_env,
    postgres_sync_store,
    times_in,
)
from tests.postgres import PgBouncer, PostgresCluster
from tests.store_checks import (
    TERMINAL,
    TERMINAL_KINDS,
    Histories,
    assert_no_partial_transitions,
    started_attempts,
)
from tests.worker.conftest import StartWorker, SyncStore, WorkerProcess

pytestmark = pytest.mark.slow

COUNTED = "test.count_sleep"  # tests/e2e/counting_handlers.py
LEASE = ("--lease-timeout", "2", "--heartbeat-interval", "0.5")
REAPER = ("--reap-interval", "0.2s")
COUNTING = ("--handlers", "tests.e2e.counting_handlers")
# What WatchJob never coalesces.
TRANSITIONS = frozenset(
    {
        EventKind.STARTED,
        EventKind.RETRY_SCHEDULED,
        EventKind.RELEASED,
        EventKind.SUCCEEDED,
        EventKind.FAILED,
        EventKind.CANCELLED,
    }
)


def struct(**values: Any) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def counted(seconds: float, steps: int = 1, **fields: Any) -> api.SubmitJobRequest:
    return api.SubmitJobRequest(
        type=COUNTED, payload=struct(seconds=seconds, steps=steps), **fields
    )


def database_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.fixture
def start_worker(postgres_url: str, start_worker: StartWorker) -> StartWorker:
    """The e2e `start_worker`, set up after this test's database so that its workers stop
    before the database is dropped (dropping it ends their sessions mid-shutdown)."""
    return start_worker


@pytest.fixture
def store(postgres_url: str) -> Iterator[SyncStore]:
    """The test's database, read directly to check what the processes did."""
    opened = postgres_sync_store(postgres_url)
    try:
        yield opened
    finally:
        opened.close()


def wait_finished(store: SyncStore, job_ids: Sequence[str], timeout: float) -> list[Job]:
    def finished() -> list[Job] | None:
        jobs = [store.get_job(job_id) for job_id in job_ids]
        return jobs if all(job.state in TERMINAL for job in jobs) else None

    return wait_until(finished, timeout=timeout, interval=0.1, what="every job to finish")


def finished_handlers(log: Path) -> Counter[tuple[str, int]]:
    """How many times each (job, attempt) ran its handler to the end."""
    if not log.exists():
        return Counter()
    lines = (line.split() for line in log.read_text().splitlines())
    return Counter((job, int(attempt)) for job, attempt in lines)


def kind_of(event: pb.JobEvent) -> EventKind:
    return EventKind(pb.EventKind.Name(event.kind).removeprefix("EVENT_KIND_"))


def assert_feed_kept_its_promise(
    watcher: Watcher, stories: Histories, job_ids: Sequence[str]
) -> None:
    """A WatchJobs stream, resumed by sequence across reconnects: every message is a stored
    event, in strictly increasing sequence (so nothing twice at a seam), and each job's
    terminal event and newest state were delivered, exactly once."""
    stored = {e.sequence: e for story in stories.values() for e in story}
    sequences = [e.sequence for e in watcher.events]
    assert sequences == sorted(set(sequences)), "out of order or a duplicate at a resume"
    for event in watcher.events:
        original = stored[event.sequence]
        assert (event.job.id, kind_of(event)) == (original.job.id, original.kind), event
    for job_id in job_ids:
        seen = [e for e in watcher.events if e.job.id == job_id]
        terminals = [e.sequence for e in seen if e.kind in PB_TERMINAL_KINDS]
        expected = [e.sequence for e in stories[job_id] if e.kind in TERMINAL_KINDS]
        assert terminals == expected, (job_id, terminals, expected)
        assert seen[-1].sequence == stories[job_id][-1].sequence, job_id


def assert_job_watch_kept_its_promise(watcher: Watcher, story: Sequence[JobEvent]) -> None:
    """A WatchJob stream, resumed by sequence: it ended after the terminal event and
    carried every state transition after its snapshot, once each, in order."""
    assert watcher.ended, (watcher.job_id, watcher.errors)
    sequences = [e.sequence for e in watcher.events if e.kind != pb.EVENT_KIND_QUEUE_POSITION]
    assert sequences == sorted(sequences), watcher.job_id
    assert len(set(sequences[1:])) == len(sequences[1:]), f"{watcher.job_id}: a duplicate"
    since = watcher.events[0].sequence
    observed = [(e.sequence, kind_of(e)) for e in watcher.events[1:] if kind_of(e) in TRANSITIONS]
    expected = [(e.sequence, e.kind) for e in story if e.sequence > since and e.kind in TRANSITIONS]
    assert observed == expected, watcher.job_id
    assert watcher.events[-1].job.state == pb.JOB_STATE_SUCCEEDED, watcher.job_id


def assert_each_attempt_ran_once(
    jobs: Sequence[Job], stories: Histories, ran: Counter[tuple[str, int]], lost_by: set[str]
) -> int:
    """Every job SUCCEEDED once, on its final attempt, whose handler finished once; an
    earlier attempt exists only where it was reaped as `worker_lost` from a worker in
    `lost_by` (killed mid-run). How many attempts were lost that way."""
    assert {job.state for job in jobs} == {JobState.SUCCEEDED}, Counter(j.state for j in jobs)
    twice = [key for key, n in ran.items() if n > 1]
    assert not twice, f"a handler finished one attempt more than once: {twice[:5]}"
    lost = 0
    for job in jobs:
        story = stories[job.id]
        attempts = started_attempts(story)
        assert attempts == list(range(1, job.attempt + 1)), (job.id, attempts)
        succeeded = [e for e in story if e.kind is EventKind.SUCCEEDED]
        assert len(succeeded) == 1, f"{job.id} succeeded {len(succeeded)} times"
        assert succeeded[0].job.attempt == job.attempt
        assert job.result is not None
        assert job.result["attempt"] == job.attempt
        assert ran[(job.id, job.attempt)] == 1, f"{job.id}: final attempt not run once"
        retries = [e for e in story if e.kind is EventKind.RETRY_SCHEDULED]
        assert len(retries) == job.attempt - 1, (job.id, [e.kind for e in story])
        for retry in retries:
            assert retry.job.error is not None
            assert retry.job.error.code == ErrorCode.WORKER_LOST, (job.id, retry.job.error)
            start = next(
                e
                for e in story
                if e.kind is EventKind.STARTED and e.job.attempt == retry.job.attempt
            )
            assert start.job.worker_id in lost_by, (job.id, start.job.worker_id)
        lost += len(retries)
    return lost


# ---- 1. a server and a worker killed -9 mid-run -------------------------------------

CHURN_JOBS = 200
KILL_AFTER = 40  # jobs SUCCEEDED: both workers are busy then, 160 jobs still to go
WATCHED_JOBS = 20


def submit_counted(stub: Stub, count: int, rng: random.Random) -> list[str]:
    requests = [
        counted(round(rng.uniform(0.1, 0.4), 3), rng.randint(1, 3), max_attempts=10)
        for _ in range(count)
    ]
    reply = stub.SubmitJobs(api.SubmitJobsRequest(requests=requests), timeout=30)
    return [job.id for job in reply.jobs]


def succeeded_at_least(store: SyncStore, count: int) -> bool:
    return bool(store.count_jobs_by_state()[JobState.SUCCEEDED] >= count)


def stop_all(watchers: Sequence[Watcher]) -> None:
    for watcher in watchers:
        watcher.stop()


def test_a_server_and_a_worker_killed_9_mid_run_lose_nothing_and_watchers_resume(
    tmp_path: Path,
    start_worker: StartWorker,
    postgres_url: str,
    store: SyncStore,
) -> None:
    seed = random.randrange(2**32)
    print(f"\nseed {seed}")
    rng = random.Random(seed)
    finished_log = tmp_path / "finished.log"
    env = postgres_env(postgres_url, finished_log)
    servers = [start_server(tmp_path, env=env, args=REAPER, name=n) for n in ("a", "b")]
    doomed, survivor = servers
    watchers: list[Watcher] = []
    try:
        workers = [
            start_worker(tmp_path / "unused.db", *LEASE, *COUNTING, "--concurrency", "8", env=env)
            for _ in range(2)
        ]
        killed_worker = store.worker_of(workers[0]).id
        store.worker_of(workers[1])
        addresses = [s.address for s in servers]
        feeds = [
            Watcher(addresses, types=[COUNTED]).start(),
            Watcher(addresses[::-1], types=[COUNTED]).start(),
        ]
        watchers += feeds
        with survivor.channel() as channel:
            job_ids = submit_counted(Stub(channel), CHURN_JOBS, rng)
        job_watchers = [
            Watcher(addresses if i % 2 else addresses[::-1], job_id=job_id).start()
            for i, job_id in enumerate(job_ids[:: CHURN_JOBS // WATCHED_JOBS])
        ]
        watchers += job_watchers
        wait_until(
            lambda: succeeded_at_least(store, KILL_AFTER),
            timeout=60,
            interval=0.02,
            what=f"{KILL_AFTER} jobs to succeed",
        )
        doomed.kill()
        workers[0].kill()
        jobs = wait_finished(store, job_ids, timeout=90)
        wait_watchers_done(feeds, job_watchers, job_ids)
        stop_all(watchers)
        stories = assert_no_partial_transitions(store)
    finally:
        stop_all(watchers)
        for server in servers:
            server.stop()

    lost = assert_each_attempt_ran_once(
        jobs, stories, finished_handlers(finished_log), lost_by={killed_worker}
    )
    assert lost > 0, "the kill -9 caught no running job: the test exercised nothing"
    for watcher in feeds:
        assert_feed_kept_its_promise(watcher, stories, job_ids)
    assert feeds[0].resumes, "the feed on the killed server never had to resume"
    for watcher in job_watchers:
        assert_job_watch_kept_its_promise(watcher, stories[watcher.job_id or ""])
    resumed = [w for w in job_watchers if w.resumes]
    assert resumed, "no WatchJob stream was cut by the kill: the test exercised nothing"
    wasted = sum(finished_handlers(finished_log).values()) - len(jobs)
    print(
        f"{CHURN_JOBS} jobs: {lost} attempts reaped as worker_lost and run again, "
        f"{wasted} handler runs beyond one per job; feed resumes {feeds[0].resumes}; "
        f"{len(resumed)} of {len(job_watchers)} WatchJob streams resumed"
    )


def job_ids_ended(watcher: Watcher) -> set[str]:
    return {e.job.id for e in list(watcher.events) if e.kind in PB_TERMINAL_KINDS}


def wait_watchers_done(
    feeds: Sequence[Watcher], job_watchers: Sequence[Watcher], job_ids: Sequence[str]
) -> None:
    """Until every feed has carried every job's terminal event and every WatchJob ended."""

    def done() -> bool:
        carried = all(job_ids_ended(feed) >= set(job_ids) for feed in feeds)
        return carried and all(watcher.ended for watcher in job_watchers)

    wait_until(done, timeout=30, interval=0.05, what="every watcher to see every job end")


def listening(times: int, *processes: ServerProcess | WorkerProcess) -> bool:
    """Whether each process has said `times` times that it listens for changes."""
    return all(times_in(process.log, LISTENING) == times for process in processes)


# ---- 2. PostgreSQL restarted mid-run -------------------------------------------------

RESTART_JOBS = 120
LONG_LEASE = ("--lease-timeout", "20", "--heartbeat-interval", "1")


def test_a_postgres_restart_mid_run_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path,
    start_worker: StartWorker,
    postgres_cluster: PostgresCluster,
    postgres_url: str,
    store: SyncStore,
) -> None:
    """The lease (20 s) outlasts the restart, so no job may run twice: a completion the
    worker could not record is held and retried, and one that was recorded but whose
    answer was lost is refused by its lease when retried (LeaseLost), changing nothing."""
    rng = random.Random(1)
    finished_log = tmp_path / "finished.log"
    env = postgres_env(postgres_url, finished_log)
    server = start_server(tmp_path, env=env, args=REAPER)
    watchers: list[Watcher] = []
    try:
        workers = [
            start_worker(
                tmp_path / "unused.db", *LONG_LEASE, *COUNTING, "--concurrency", "8", env=env
            )
            for _ in range(2)
        ]
        for worker in workers:
            store.worker_of(worker)
        wait_until(
            lambda: listening(1, server, *workers),
            timeout=30,
            interval=0.05,
            what="every process to listen",
        )
        feed = Watcher([server.address], types=[COUNTED]).start()
        watchers.append(feed)
        with server.channel() as channel:
            stub = Stub(channel)
            job_ids = submit_counted(stub, RESTART_JOBS, rng)
            job_watchers = [
                Watcher([server.address], job_id=job_id).start() for job_id in job_ids[::12]
            ]
            watchers += job_watchers
            wait_until(
                lambda: succeeded_at_least(store, RESTART_JOBS // 4),
                timeout=60,
                interval=0.02,
                what="a quarter of the jobs to succeed",
            )
            postgres_cluster.restart()
            # Recovery without a restart of our own: a new job is accepted and run.
            later = wait_until(
                lambda: accepted(stub, counted(0.05)),
                timeout=30,
                interval=0.1,
                what="SubmitJob to work again",
            )
            job_ids.append(later)
            jobs = wait_finished(store, job_ids, timeout=90)
        wait_watchers_done([feed], job_watchers, job_ids)
        stop_all(watchers)
        stories = assert_no_partial_transitions(store)
        processes = [server.process, *(w.process for w in workers)]
        assert [p.poll() for p in processes] == [None] * 3, "a process exited"
        # Each process's LISTEN connection came back on its own.
        wait_until(
            lambda: listening(2, server, *workers),
            timeout=30,
            interval=0.05,
            what="every process to listen again",
        )
    finally:
        stop_all(watchers)
        server.stop()

    lost = assert_each_attempt_ran_once(
        jobs, stories, finished_handlers(finished_log), lost_by=set()
    )
    assert lost == 0
    assert all(job.attempt == 1 for job in jobs)
    assert_feed_kept_its_promise(feed, stories, job_ids)
    for watcher in job_watchers:
        assert_job_watch_kept_its_promise(watcher, stories[watcher.job_id or ""])
    print(
        f"\nrestart: feed resumes {feed.resumes} ({feed.errors[:1]}); "
        f"{sum(1 for w in job_watchers if w.resumes)} of {len(job_watchers)} WatchJob resumed; "
        f"worker log lines on the outage: "
        f"{[times_in(w.log, 'unavailable') for w in workers]}"
    )


def accepted(stub: Stub, request: api.SubmitJobRequest) -> str | None:
    """The new job's id, or None if SubmitJob said the store is unavailable."""
    try:
        return str(stub.SubmitJob(request, timeout=10).job.id)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return None


# ---- 3. the LISTEN connections ended by an administrator ----------------------------


def test_ended_listen_connections_come_back_and_idle_workers_still_get_their_jobs(
    tmp_path: Path,
    start_worker: StartWorker,
    postgres_cluster: PostgresCluster,
    postgres_url: str,
    store: SyncStore,
) -> None:
    """The worker polls once an hour, so a job it claims within the test came by a
    notification, or by the "anything may have changed" every reconnect hands its
    subscribers: no timing is measured, yet a lost wake-up cannot go unnoticed."""
    finished_log = tmp_path / "finished.log"
    env = postgres_env(postgres_url, finished_log)
    server = start_server(tmp_path, env=env, args=REAPER)
    try:
        worker = start_worker(
            tmp_path / "unused.db", *LEASE, *COUNTING, "--poll-interval", "1h", env=env
        )
        store.worker_of(worker)
        wait_until(
            lambda: listening(1, server, worker),
            timeout=30,
            interval=0.05,
            what="the server and the worker to listen",
        )
        with server.channel() as channel:
            stub = Stub(channel)

            def run_one() -> pb.JobEvent:
                job_id = stub.SubmitJob(counted(0.05), timeout=10).job.id
                stream = stub.WatchJob(api.WatchJobRequest(job_id=job_id), timeout=30)
                last: pb.JobEvent = [m.event for m in stream][-1]
                return last

            before = run_one()
            ended = postgres_cluster.terminate_backends(
                database_name(postgres_url), application_name=LISTEN_APPLICATION
            )
            during = run_one()  # submitted while the connections are down or just back
            wait_until(
                lambda: listening(2, server, worker),
                timeout=30,
                interval=0.05,
                what="the server and the worker to listen again",
            )
            after = run_one()
        sessions = listen_sessions(postgres_cluster, database_name(postgres_url))
        stories = assert_no_partial_transitions(store)
    finally:
        server.stop()

    assert ended == 2, "one LISTEN connection each for the server and the worker"
    for event in (before, during, after):
        assert event.job.state == pb.JOB_STATE_SUCCEEDED, event
        assert started_attempts(stories[event.job.id]) == [1]
    for process in (server, worker):
        assert times_in(process.log, "lost the PostgreSQL LISTEN connection") == 1
    assert sessions == 2
    assert finished_handlers(finished_log) == Counter(
        {(e.job.id, 1): 1 for e in (before, during, after)}
    )


def listen_sessions(cluster: PostgresCluster, dbname: str) -> int:
    with cluster.connect() as connection:
        row = connection.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (dbname, LISTEN_APPLICATION),
        ).fetchone()
    assert row is not None
    return int(row[0])


# ---- 4. PgBouncer in transaction mode, poll-only ------------------------------------
# These tests ask for `pgbouncer` before `start_worker`: fixtures are torn down in the
# reverse order, so the worker stops while PgBouncer still answers. The other way round,
# a stopping worker spent its 10 s connect timeout trying to record that it stopped.


def test_behind_pgbouncer_poll_only_jobs_run_watchers_see_progress_and_cancel_works(
    tmp_path: Path,
    postgres_url: str,
    pgbouncer: PgBouncer,
    start_worker: StartWorker,
    store: SyncStore,
) -> None:
    dbname = database_name(postgres_url)
    finished_log = tmp_path / "finished.log"
    env = postgres_env(pgbouncer.url(dbname), finished_log, JOB_STORE_POLL_ONLY="1")
    server = start_server(tmp_path, env=env, args=REAPER)
    try:
        worker = start_worker(
            tmp_path / "unused.db",
            *LEASE,
            "--poll-interval",
            "0.1",
            "--concurrency",
            "4",
            "--handlers",
            "tests.e2e.counting_handlers",
            env=env,
        )
        store.worker_of(worker)
        with server.channel() as channel:
            stub = Stub(channel)
            batch = [counted(0.1, 2) for _ in range(20)]
            ids = [j.id for j in stub.SubmitJobs(api.SubmitJobsRequest(requests=batch)).jobs]
            watched = stub.SubmitJob(counted(1.0, 5), timeout=10).job
            events = [
                m.event for m in stub.WatchJob(api.WatchJobRequest(job_id=watched.id), timeout=60)
            ]

            long = stub.SubmitJob(
                api.SubmitJobRequest(type="demo.sleep", payload=struct(seconds=60, steps=60)),
                timeout=10,
            ).job
            stream = stub.WatchJob(api.WatchJobRequest(job_id=long.id), timeout=60)
            for message in stream:
                if message.event.job.state == pb.JOB_STATE_RUNNING:
                    break
            stub.CancelJob(api.CancelJobRequest(job_id=long.id, reason="e2e"), timeout=10)
            rest = [m.event for m in stream]
        jobs = wait_finished(store, [*ids, watched.id], timeout=60)
        stories = assert_no_partial_transitions(store)
    finally:
        server.stop()

    kinds = [e.kind for e in events if e.kind != pb.EVENT_KIND_QUEUE_POSITION]
    assert kinds[-1] == pb.EVENT_KIND_SUCCEEDED, kinds
    percents = [e.job.progress.percent for e in events if e.kind == pb.EVENT_KIND_PROGRESS]
    assert len(percents) >= 2, percents
    assert percents == sorted(percents), percents
    assert events[-1].job.progress.percent == 100
    assert rest[-1].kind == pb.EVENT_KIND_CANCELLED, [e.kind for e in rest]
    assert {job.state for job in jobs} == {JobState.SUCCEEDED}
    ran = finished_handlers(finished_log)
    assert ran == Counter({(job_id, 1): 1 for job_id in [*ids, watched.id]})
    assert all(started_attempts(stories[job_id]) == [1] for job_id in [*ids, watched.id])
    # Through PgBouncer, and never a LISTEN: nothing said it listened.
    assert f"db={dbname}" in pgbouncer.log, pgbouncer.log[-2000:]
    assert LISTENING not in server.log
    assert LISTENING not in worker.log


def test_behind_pgbouncer_without_poll_only_prepared_statements_break(
    tmp_path: Path,
    postgres_url: str,
    pgbouncer: PgBouncer,
    start_worker: StartWorker,
) -> None:
    """The misconfiguration the flag exists for: psycopg prepares a statement on the
    server after its fifth run on a connection, and in transaction mode the next
    transaction may run on another server connection, which lacks it or has another
    client's statement of the same name. The logs say so; what clients see varies."""
    env = postgres_env(pgbouncer.url(database_name(postgres_url)))
    server = start_server(tmp_path, env=env)
    outcomes: Counter[str] = Counter()
    try:
        worker = start_worker(tmp_path / "unused.db", "--poll-interval", "0.05", env=env)
        with server.channel() as channel:
            stub = Stub(channel)

            def broken() -> bool:
                try:
                    job = stub.SubmitJob(api.SubmitJobRequest(type="demo.sleep"), timeout=10).job
                    stub.GetJob(api.GetJobRequest(job_id=job.id), timeout=10)
                    outcomes["OK"] += 1
                except grpc.RpcError as error:
                    outcomes[error.code().name] += 1
                return PREPARED_ERROR.search(server.log + worker.log) is not None

            wait_until(broken, timeout=60, interval=0.05, what="a prepared statement to fail")
    finally:
        server.stop()
    found = sorted(set(PREPARED_ERROR.findall(server.log + worker.log)))
    print(f"\nwithout poll-only behind PgBouncer: calls {dict(outcomes)}; logs: {found}")
    assert found


PREPARED_ERROR = re.compile(r'prepared statement "_pg3_\d+" (?:does not exist|already exists)')


# ---- 5. an error the store does not map, under the server's event tail ---------------


def test_the_event_tail_outlives_a_store_error_nobody_mapped(
    tmp_path: Path,
    postgres_cluster: PostgresCluster,
    postgres_url: str,
) -> None:
    """The events table is renamed away and back under a running server, as an operator's
    mistake or a migration gone wrong would (tests/e2e/test_faults.py does this to a
    worker on SQLite): the server's reads of it raise psycopg's UndefinedTable, which no
    driver maps to StoreUnavailable. Afterwards a watcher must see new jobs again."""
    env = postgres_env(postgres_url)
    server = start_server(tmp_path, env=env)
    dbname = database_name(postgres_url)
    feed = Watcher([server.address], types=["e2e.nobody"]).start()
    try:
        with server.channel() as channel:
            stub = Stub(channel)
            first = stub.SubmitJob(api.SubmitJobRequest(type="e2e.nobody"), timeout=10).job.id
            wait_until(lambda: seen_job(feed, first), timeout=15, what="the first job in the feed")
            log_start = len(postgres_cluster.log)
            with postgres_cluster.connect(dbname) as admin:
                admin.execute("ALTER TABLE job_events RENAME TO job_events_away")
                try:
                    wait_until(
                        lambda: TAIL_READ_FAILED.search(postgres_cluster.log[log_start:]),
                        timeout=15,
                        interval=0.05,
                        what="the server's tail to fail on the missing table",
                    )
                finally:
                    admin.execute("ALTER TABLE job_events_away RENAME TO job_events")
            second = stub.SubmitJob(api.SubmitJobRequest(type="e2e.nobody"), timeout=10).job.id
            wait_until(
                lambda: seen_job(feed, second),
                timeout=15,
                interval=0.05,
                what="a job submitted after the fault to reach the feed",
            )
    finally:
        feed.stop()
        server.stop()


# PostgreSQL's log of the tail's read failing (the statement follows its error).
TAIL_READ_FAILED = re.compile(
    r'relation "job_events" does not exist[^\n]*\n[^\n]*STATEMENT:\s+'
    r"SELECT seq, job_id, kind, time_us, job FROM job_events\s+WHERE seq >"
)


def seen_job(watcher: Watcher, job_id: str) -> bool:
    return any(event.job.id == job_id for event in list(watcher.events))
