"""What only the PostgreSQL store has to prove: a gapless event feed although its
sequences are not commit-ordered, notifications pushed by LISTEN/NOTIFY (and their
recovery when the listening connection drops), and poll-only use through PgBouncer."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from jobcontrol.jobs import EventKind, JobSpec, Progress
from jobcontrol.store.core import utc_now
from jobcontrol.store.database import Tx
from jobcontrol.store.listen import APPLICATION_NAME
from jobcontrol.store.postgres import PostgresJobStore, _pyformat
from jobcontrol.store.protocol import ChangeKind
from jobcontrol.store.rows import dump_json
from jobcontrol.store.sql import postgres as postgres_sql
from tests.polling import wait_until, wait_until_async
from tests.postgres import PgBouncer, PostgresCluster

LEASE = timedelta(seconds=30)


@pytest.fixture
async def store(postgres_url: str) -> AsyncIterator[PostgresJobStore]:
    opened = await PostgresJobStore.open(postgres_url)
    try:
        yield opened
    finally:
        await opened.close()


def _bump(conn: psycopg.Connection[Any], job_id: str) -> None:
    """A change with an event, written as the store writes one (the trigger appends it)."""
    conn.execute(
        "UPDATE jobs SET version = version + 1, event_kind = 'PROGRESS' WHERE id = %s", (job_id,)
    )


async def test_events_whose_transactions_commit_out_of_order_are_read_once_in_order(
    store: PostgresJobStore, postgres_url: str, postgres_cluster: PostgresCluster
):
    """Transaction A writes first, B second; B asks to commit first. Had B drawn the
    next sequence and committed, a reader would have moved past A's sequence while A
    was still in flight, and never read A's event. B waits for A instead, and a reader
    that follows the feed sees both, in order, exactly once."""
    first = (await store.create_job(JobSpec(type="t"))).job
    second = (await store.create_job(JobSpec(type="t"))).job
    start = await store.last_sequence()
    a = psycopg.connect(postgres_url)
    b = psycopg.connect(postgres_url)
    try:
        _bump(a, first.id)  # A draws its sequence and holds the event lock
        b_pid = b.info.backend_pid

        def b_writes_and_commits() -> None:
            _bump(b, second.id)
            b.commit()

        b_thread = threading.Thread(target=b_writes_and_commits)
        b_thread.start()
        with postgres_cluster.connect() as admin:

            def b_waits_for_the_lock() -> bool:
                row = admin.execute(
                    "SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (b_pid,)
                ).fetchone()
                return row is not None and row[0] == "advisory"

            wait_until(b_waits_for_the_lock, timeout=10)
        assert await store.list_events(after_sequence=start) == []
        assert await store.last_sequence() == start
        a.commit()
        b_thread.join(timeout=10)
        assert not b_thread.is_alive()
    finally:
        a.close()
        b.close()
    events = await store.list_events(after_sequence=start)
    assert [e.job.id for e in events] == [first.id, second.id]
    assert [e.sequence for e in events] == [start + 1, start + 2]


async def test_a_process_starting_on_an_up_to_date_database_takes_no_lock(
    store: PostgresJobStore, postgres_url: str
):
    """A transaction that wrote events holds the event lock until it ends (a client
    stopped mid-way can hold it long). A process starting meanwhile on an up-to-date
    database still opens the store: it reads that no migration is missing and takes no
    lock, where waiting for the event lock would also have queued every writer of
    events behind it."""
    job = (await store.create_job(JobSpec(type="t"))).job
    writer = psycopg.connect(postgres_url)
    opening: asyncio.Task[PostgresJobStore] | None = None
    try:
        _bump(writer, job.id)
        opening = asyncio.create_task(PostgresJobStore.open(postgres_url))
        done, _ = await asyncio.wait({opening}, timeout=10)
        assert done, "opening the store waited for the event lock"
    finally:
        writer.rollback()
        writer.close()
        if opening is not None:
            await (await opening).close()


def _writer(url: str, job_ids: list[str], stop: threading.Event, seed: int) -> None:
    """Change a few random jobs per transaction, then hold it open for a random moment
    before it commits (one in ten rolls back), so commits land in every order the
    server allows. Two writers can still deadlock on each other's rows; the server then
    ends one, which rolls back, as the store's driver would see and run again."""
    rng = random.Random(seed)
    with psycopg.connect(url) as conn:
        while not stop.is_set():
            chosen = sorted(rng.sample(job_ids, rng.randint(1, 3)))
            try:
                conn.execute(
                    "UPDATE jobs SET version = version + 1, event_kind = 'PROGRESS'"
                    " WHERE id = ANY(%s)",
                    (chosen,),
                )
                conn.execute("SELECT pg_sleep(%s)", (rng.uniform(0, 0.003),))
            except psycopg.errors.DeadlockDetected:
                conn.rollback()
                continue
            if rng.random() < 0.1:
                conn.rollback()
            else:
                conn.commit()


@pytest.mark.slow
async def test_a_follower_of_the_feed_under_concurrent_writers_misses_nothing(
    store: PostgresJobStore, postgres_url: str
):
    """Eight connections write events in overlapping transactions, some rolled back,
    while a follower reads `after_sequence` its last one, as the server's tailer and a
    resuming watcher do. At the end, what it read is exactly the table: no event skipped
    by reading past a transaction still in flight, none read twice, all in order."""
    job_ids = [(await store.create_job(JobSpec(type="t"))).job.id for _ in range(20)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_writer, args=(postgres_url, job_ids, stop, seed))
        for seed in range(8)
    ]
    for thread in threads:
        thread.start()
    seen: list[int] = []
    try:
        last = 0
        while len(seen) < 3000:
            events = await store.list_events(after_sequence=last, limit=500)
            seen += [e.sequence for e in events]
            if events:
                last = events[-1].sequence
            else:
                await asyncio.sleep(0.001)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    while events := await store.list_events(after_sequence=last, limit=5000):
        seen += [e.sequence for e in events]
        last = events[-1].sequence
    with psycopg.connect(postgres_url) as conn:
        stored = [row[0] for row in conn.execute("SELECT seq FROM job_events ORDER BY seq")]
    assert seen == stored


async def test_notifications_say_what_changed(store: PostgresJobStore, postgres_url: str):
    """Another process's writes (here another store) reach this store's subscribers:
    a new job as `pending`, a cancel of a running job as `cancel`, progress as `event`."""
    heard: list[ChangeKind | None] = []
    assert store.changes is not None
    unsubscribe = store.changes.subscribe(heard.append)
    other = await PostgresJobStore.open(postgres_url)
    try:
        await wait_until_async(lambda: store.changes is not None and store.changes.live)
        await wait_until_async(lambda: None in heard)  # on connect: anything may have changed
        heard.clear()
        await other.create_job(JobSpec(type="t"))
        await wait_until_async(lambda: ChangeKind.PENDING in heard)
        (job,) = await other.claim_jobs(worker_id="w", types=["t"], limit=1, lease_timeout=LEASE)
        assert job.lease_id is not None
        await other.report_progress(job_id=job.id, lease_id=job.lease_id, progress=Progress(10))
        await wait_until_async(lambda: ChangeKind.EVENT in heard)
        await other.cancel_job(job.id)
        await wait_until_async(lambda: ChangeKind.CANCEL in heard)
    finally:
        unsubscribe()
        await other.close()


async def test_one_transaction_sends_one_notification(store: PostgresJobStore, postgres_url: str):
    """NOTIFY takes a global lock at commit: a batch of a thousand jobs is one
    notification, not a thousand."""
    heard: list[ChangeKind | None] = []
    assert store.changes is not None
    store.changes.subscribe(heard.append)
    await wait_until_async(lambda: None in heard)
    heard.clear()
    await store.create_jobs([JobSpec(type="t")] * 1000)
    await store.create_job(JobSpec(type="marker"))  # a second transaction, after the batch
    await wait_until_async(lambda: len(heard) >= 2)
    assert heard == [ChangeKind.PENDING, ChangeKind.PENDING]


async def test_listening_recovers_when_its_connection_is_dropped(
    store: PostgresJobStore, postgres_cluster: PostgresCluster, postgres_url: str
):
    heard: list[ChangeKind | None] = []
    changes = store.changes
    assert changes is not None
    changes.subscribe(heard.append)
    await wait_until_async(lambda: changes.live and None in heard)
    database = postgres_url.rsplit("/", 1)[1]
    heard.clear()
    dropped = await asyncio.to_thread(
        postgres_cluster.terminate_backends, database, application_name=APPLICATION_NAME
    )
    assert dropped == 1
    # Reconnected: subscribers hear "anything may have changed", for what was missed.
    await wait_until_async(lambda: None in heard and changes.live, timeout=30)
    heard.clear()
    await store.create_job(JobSpec(type="t"))
    await wait_until_async(lambda: ChangeKind.PENDING in heard)


async def test_poll_only_through_pgbouncer_in_transaction_mode(
    pgbouncer: PgBouncer, postgres_url: str
):
    """A transaction-mode pooler hands each transaction to any server connection: no
    LISTEN (the store offers no notifications) and no prepared statements, whose names
    would be missing on the next connection. Every kind of operation works."""
    url = pgbouncer.url(postgres_url.rsplit("/", 1)[1])
    store = await PostgresJobStore.open(url, poll_only=True)
    try:
        assert store.changes is None
        for _ in range(10):  # past psycopg's threshold for preparing a statement
            await store.create_job(JobSpec(type="t", idempotency_key=None))
        keyed = await store.create_jobs([JobSpec(type="t", idempotency_key="k")] * 2)
        assert [s.created for s in keyed] == [True, False]
        claimed = await store.claim_jobs(worker_id="w", types=["t"], limit=20, lease_timeout=LEASE)
        assert len(claimed) == 11
        for job in claimed:
            assert job.lease_id is not None
            await store.complete_job(job_id=job.id, lease_id=job.lease_id, result={})
        kinds = [e.kind for e in await store.list_events(after_sequence=0, limit=100)]
        assert kinds.count(EventKind.SUCCEEDED) == 11
    finally:
        await store.close()


async def test_the_churning_tables_carry_their_autovacuum_thresholds(
    store: PostgresJobStore, postgres_url: str
):
    with psycopg.connect(postgres_url) as conn:
        options = dict(
            conn.execute(
                "SELECT relname, reloptions FROM pg_class WHERE relname IN ('jobs', 'job_events')"
            ).fetchall()
        )
    assert "autovacuum_vacuum_scale_factor=0.01" in options["jobs"]
    assert "autovacuum_vacuum_insert_threshold=10000" in options["job_events"]


def _held_advisory_locks(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_heartbeat_appends_no_event_and_sends_no_notification(
    store: PostgresJobStore, postgres_url: str
):
    """The UPDATE trigger fires for every UPDATE of `jobs` (a trigger with transition
    tables takes no column list), so it is what must skip the rows whose version did not
    change: a lease heartbeat writes no event, notifies nothing and leaves the event lock
    to the writers of events. Progress, which changes the version, does all three."""
    await store.create_job(JobSpec(type="t"))
    (job,) = await store.claim_jobs(worker_id="w", types=["t"], limit=1, lease_timeout=LEASE)
    assert job.lease_id is not None
    with psycopg.connect(postgres_url, autocommit=True) as listener:
        listener.execute("LISTEN jobcontrol")
        start = await store.last_sequence()
        acks = await store.heartbeat_jobs({job.id: job.lease_id}, lease_timeout=LEASE * 2)
        assert set(acks) == {job.id}
        assert await store.list_events(after_sequence=start) == []
        assert await store.last_sequence() == start
        await store.report_progress(job_id=job.id, lease_id=job.lease_id, progress=Progress(10))
        # Notifications arrive in commit order: had the heartbeat sent one, it would
        # come before the progress's.
        heard = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
        assert heard == ["event"]
        assert list(listener.notifies(timeout=0.2)) == []
    (event,) = await store.list_events(after_sequence=start)
    assert (event.kind, event.job.id, event.job.progress.percent) == (
        EventKind.PROGRESS,
        job.id,
        10,
    )
    with psycopg.connect(postgres_url) as conn:
        conn.execute(
            "UPDATE jobs SET lease_expire_us = lease_expire_us + 1 WHERE id = %s", (job.id,)
        )
        conn.execute("UPDATE jobs SET version = version + 1 WHERE id = 'no such job'")
        assert _held_advisory_locks(conn) == 0
        _bump(conn, job.id)
        assert _held_advisory_locks(conn) == 1
        conn.rollback()


async def test_a_database_with_the_per_row_trigger_is_migrated_to_the_statement_triggers(
    postgres_url: str,
):
    """A database at version 7, whose events migration 6's per-row trigger wrote:
    migration 8 replaces that trigger with the statement triggers, the old events read
    as before, and new ones follow them in sequence, with their notifications."""
    old_id = "01a22f78-0000-7000-8000-000000000003"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(postgres_sql.CREATE_MIGRATIONS_TABLE)
        for migration in postgres_sql.MIGRATIONS:
            if migration.version > 7:
                break
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations VALUES (%s, %s, 0)",
                (migration.version, migration.name),
            )
        conn.execute(
            "INSERT INTO jobs (id, type, payload, state, priority, labels, attempt,"
            " max_attempts, create_us, update_us, run_after_us, progress_percent,"
            " progress_stage, progress_message, cancel_requested, cancel_reason, version,"
            " event_kind) VALUES (%s, 'old', '{}', 'PENDING', 0, '{}', 0, 1, 1, 1, 1, 0,"
            " '', '', 0, '', 1, 'SUBMITTED')",
            (old_id,),
        )
        _bump(conn, old_id)
    store = await PostgresJobStore.open(postgres_url)
    try:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            versions = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
            triggers = conn.execute(
                "SELECT tgname FROM pg_trigger"
                " WHERE tgrelid = 'jobs'::regclass AND NOT tgisinternal ORDER BY tgname"
            ).fetchall()
            functions = conn.execute(
                "SELECT proname FROM pg_proc WHERE proname LIKE 'jobcontrol%' ORDER BY 1"
            ).fetchall()
            assert versions == [(6,), (7,), (8,), (9,), (11,), (12,)]
            assert triggers == [("job_events_append_inserted",), ("job_events_append_updated",)]
            assert functions == [
                ("jobcontrol_append_inserted_job_events",),
                ("jobcontrol_append_updated_job_events",),
            ]
            conn.execute("LISTEN jobcontrol")
            new = (await store.create_job(JobSpec(type="new"))).job
            (claimed,) = await store.claim_jobs(
                worker_id="w", types=["new"], limit=1, lease_timeout=LEASE
            )
            assert claimed.lease_id is not None
            await store.complete_job(job_id=new.id, lease_id=claimed.lease_id, result={})
            heard = [n.payload for n in conn.notifies(timeout=10, stop_after=3)]
            assert heard == ["pending", "event", "event"]
        events = await store.list_events(after_sequence=0)
        assert [(e.sequence, e.job.id, e.kind) for e in events] == [
            (1, old_id, EventKind.SUBMITTED),
            (2, old_id, EventKind.PROGRESS),
            (3, new.id, EventKind.SUBMITTED),
            (4, new.id, EventKind.STARTED),
            (5, new.id, EventKind.SUCCEEDED),
        ]
        assert events[1].job.type == "old"
    finally:
        await store.close()


def _jobs_rows_read(
    conn: psycopg.Connection[Any],
    statement: str,
    params: dict[str, Any],
    *,
    filtered_too: bool = False,
) -> int:
    """The most rows any scan of `jobs` returned while running `statement` (rolled
    back); with `filtered_too`, and those its filter dropped."""
    explained = "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, FORMAT JSON) " + _pyformat(statement)
    with conn.transaction(force_rollback=True):
        ((plan,),) = conn.execute(explained, params).fetchall()

    def scans(node: dict[str, Any]) -> list[int]:
        read = node["Actual Rows"] + (node.get("Rows Removed by Filter", 0) if filtered_too else 0)
        own = [read] if node.get("Relation Name") == "jobs" else []
        return own + [n for child in node.get("Plans", []) for n in scans(child)]

    return max(scans(plan[0]["Plan"]))


async def test_a_heartbeat_or_completion_reads_its_own_jobs_not_every_running_one(
    store: PostgresJobStore, postgres_url: str
):
    """With 300 jobs running, a heartbeat of 1 and a completion batch of 2 read 1 and 2
    rows of `jobs`: their cost must not grow with the whole cluster's running jobs."""
    await store.create_jobs([JobSpec(type="t") for _ in range(300)])
    running = await store.claim_jobs(worker_id="w", types=["t"], limit=300, lease_timeout=LEASE)
    assert len(running) == 300
    one, two = running[:1], running[1:3]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("ANALYZE jobs")
        leases = dump_json([[j.id, j.lease_id] for j in one])
        heartbeat = {"leases": leases, "lease_expire_us": 1}
        assert _jobs_rows_read(conn, postgres_sql.HEARTBEAT_JOBS, heartbeat) == 1
        completions = dump_json([[j.id, j.lease_id, "{}"] for j in two])
        complete = {"completions": completions, "now_us": 1}
        assert _jobs_rows_read(conn, postgres_sql.COMPLETE_JOBS, complete) == 2


async def test_the_claim_and_the_claimable_probe_walk_only_the_wanted_types(
    store: PostgresJobStore, postgres_url: str
):
    """Behind a backlog of 1,000 pending jobs of another type, the probe of an idle
    worker reads at most one row of its own type, and none when there is none; the
    claim reads what it takes. Both walk `jobs_claimable` (migration 9 dropped
    `jobs_claim_order`, which nothing read)."""
    await store.create_jobs([JobSpec(type="other", priority=5) for _ in range(1000)])
    await store.create_jobs([JobSpec(type="t") for _ in range(10)])
    now_us = 2**53
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        indexes = {row[0] for row in conn.execute("SELECT indexname FROM pg_indexes")}
        assert "jobs_claimable" in indexes
        assert "jobs_claim_order" not in indexes
        for analyzed in (False, True):
            if analyzed:
                conn.execute("ANALYZE jobs")
            for types, most in (('["t"]', 1), ('["none"]', 0), ('["none", "t"]', 1)):
                probe = {"types": types, "now_us": now_us}
                read = _jobs_rows_read(
                    conn, postgres_sql.HAS_CLAIMABLE_JOBS, probe, filtered_too=True
                )
                assert read <= most, f"the probe for {types} read {read} rows"
            claim = {
                "worker_id": "w",
                "types": '["t"]',
                "limit": 5,
                "now_us": now_us,
                "lease_expire_us": now_us,
            }
            assert _jobs_rows_read(conn, postgres_sql.CLAIM_JOBS, claim, filtered_too=True) == 5
    assert await store.has_claimable_jobs(types=["t"])
    assert not await store.has_claimable_jobs(types=["none"])
    claimed = await store.claim_jobs(worker_id="w", types=["t"], limit=5, lease_timeout=LEASE)
    assert [job.type for job in claimed] == ["t"] * 5


async def test_the_store_sessions_run_without_jit(store: PostgresJobStore, postgres_url: str):
    """Both pools' sessions turn JIT off (a queue position behind a large backlog spent
    half a second compiling); a poll-only store, which may sit behind a pooler whose
    server sessions other clients share, leaves the server's setting alone."""

    async def jit(tx: Tx) -> str:
        (row,) = await tx.execute("SHOW jit")
        return str(row["jit"])

    assert await store._db.read(jit, small=True) == "off"  # on the event loop
    assert await store._db.read(jit) == "off"  # on a driver thread
    poll_only = await PostgresJobStore.open(postgres_url, poll_only=True)
    try:
        assert await poll_only._db.read(jit, small=True) == "on"
        assert await poll_only._db.read(jit) == "on"
    finally:
        await poll_only.close()


async def test_the_event_trigger_never_joins_a_batch_by_nested_loop(
    store: PostgresJobStore, postgres_url: str
):
    """plpgsql plans the trigger's statements when it first fires in a session, from that
    statement's row counts. A session whose first update was one row (an idle worker's
    claim) must not keep a nested loop for its later batches: that compares every old
    row with every new one, 64 x 64 for a claim of 64. The plans are read back through
    auto_explain, as notices."""
    created = await store.create_jobs([JobSpec(type="t") for _ in range(65)])
    ids = [submitted.job.id for submitted in created]
    plans: list[str] = []
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.add_notice_handler(lambda notice: plans.append(notice.message_primary or ""))
        conn.execute("LOAD 'auto_explain'")
        conn.execute("SET auto_explain.log_min_duration = 0")
        conn.execute("SET auto_explain.log_nested_statements = on")
        conn.execute("SET auto_explain.log_level = notice")
        _bump(conn, ids[0])
        plans.clear()
        conn.execute(
            "UPDATE jobs SET version = version + 1, event_kind = 'PROGRESS' WHERE id = ANY(%s)",
            (ids[1:],),
        )
    joins = [plan for plan in plans if "old_rows" in plan]
    assert len(joins) == 2  # the kinds to notify, and the events' INSERT
    for plan in joins:
        assert "Hash Join" in plan
        assert "Nested Loop" not in plan
    last = await store.last_sequence()
    assert [e.job.id for e in await store.list_events(after_sequence=last - 64)] == ids[1:]


async def test_a_claim_reads_only_the_jobs_it_takes_before_the_table_is_analyzed(
    store: PostgresJobStore, postgres_url: str
):
    """A new deployment's `jobs` has no statistics yet: the claim of 64 must still reach
    its rows by id, not read all 2,000 to hash-join them."""
    for _ in range(2):
        await store.create_jobs([JobSpec(type="t") for _ in range(1000)])
    now_us = 2**53
    claim = {
        "worker_id": "w",
        "types": '["t"]',
        "limit": 64,
        "now_us": now_us,
        "lease_expire_us": now_us,
    }
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert _jobs_rows_read(conn, postgres_sql.CLAIM_JOBS, claim, filtered_too=True) == 64


async def test_only_running_jobs_with_a_deadline_are_in_the_deadline_index(
    store: PostgresJobStore, postgres_url: str
):
    """Each claim writes an entry to every index of running jobs: the reaper's deadline
    index holds only the jobs that have a deadline, and still finds the one past it."""
    await store.create_jobs([JobSpec(type="t") for _ in range(50)])
    await store.create_job(JobSpec(type="t", timeout=timedelta(minutes=1), priority=1))
    hours = timedelta(hours=2)
    claimed = await store.claim_jobs(worker_id="w", types=["t"], limit=51, lease_timeout=hours)
    assert len(claimed) == 51
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        ((entries,),) = conn.execute(
            "SELECT count(*) FROM bt_page_items('jobs_deadline', 1)"
        ).fetchall()
        assert entries == 1
        indexes = {row[0] for row in conn.execute("SELECT indexname FROM pg_indexes")}
        assert "jobs_by_worker" not in indexes
    later = await PostgresJobStore.open(postgres_url, clock=lambda: utc_now() + hours / 2)
    try:
        reaped = await later.reap()
    finally:
        await later.close()
    assert reaped.retried + reaped.failed == [claimed[0].id]  # past its deadline
