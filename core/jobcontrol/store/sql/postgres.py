"""Every SQL statement the store runs on PostgreSQL, under the names `sqlite.py` uses.

Parameters are written `:name` as in the SQLite dialect (the driver binds them by
name). Lists of values travel as one JSON array parameter (`json_array_elements_text`),
so each statement's text is fixed whatever the number of ids or types, and the server
prepares it once per connection. Parameters in a context that gives them no type (`IS
NULL`, a CASE) carry a cast.

The event feed is gapless because events commit in sequence order: the triggers that
append events first take one transaction-level advisory lock, so a sequence number
is drawn only after every earlier event's transaction has committed (or rolled back),
and a reader that has seen sequence N has seen everything below it. PostgreSQL's own
sequences are not commit-ordered: without the lock, a transaction could draw N, commit
after N+1's did, and a tailer already past N+1 would never read it. The lock is held
from the statement that writes the events to its commit; the store's writes are one
statement each, so that is one commit at a time (fsync included), the same order the
SQLite store's single writer imposes.

The same triggers notify channel `jobcontrol` with what changed: `pending` (a job is
claimable), `cancel` (a running job's cancellation was requested) or `event`. PostgreSQL
sends one notification per channel and payload per transaction, however many rows.

Since migration 8 the triggers run once per statement, not once per row (migration 6),
reading the statement's rows from its transition tables: one lock call, one INSERT of
all its events and at most three notifications per statement, where each row took a
lock call, an INSERT and a notification. An UPDATE whose rows keep their `version` (a
lease heartbeat) appends nothing, notifies nothing and takes no lock.
"""

from __future__ import annotations

from jobcontrol.store import schema
from jobcontrol.store.schema import Migration
from jobcontrol.store.sql import sqlite

# The channel the event trigger notifies.
CHANNEL = "jobcontrol"
# Held by whoever appends events, until commit (see the module docstring); also taken by
# starters applying migrations. Any constant no other application uses.
EVENT_LOCK = 0x6A6F62_636F6E74  # "jobcont"

BEFORE_MIGRATIONS: tuple[str, ...] = (f"SELECT pg_advisory_xact_lock({EVENT_LOCK})",)

MIGRATIONS_TABLE_PRESENT = "SELECT to_regclass('schema_migrations') IS NOT NULL AS present"

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_us bigint NOT NULL
)
"""

# The type of every column a new job's JSON row carries (INSERT_JOBS casts each value).
_COLUMN_TYPES = {
    "priority": "integer",
    "attempt": "integer",
    "max_attempts": "integer",
    "create_us": "bigint",
    "update_us": "bigint",
    "run_after_us": "bigint",
    "progress_percent": "double precision",
    "error_retryable": "integer",
    "cancel_requested": "integer",
    "lease_expire_us": "bigint",
    "timeout_us": "bigint",
    "deadline_us": "bigint",
    "start_us": "bigint",
    "end_us": "bigint",
}


def _event_values(row: str) -> str:
    """The event's JSON array (layout 1) of the job in ROW (a record or a table alias)."""
    return "json_build_array(1, " + ", ".join(f"{row}.{c}" for c in schema.EVENT_LAYOUTS[1]) + ")"


# What a changed row notifies (see the module docstring); `n` is the row after the
# change, `o` the row before it (an UPDATE) or absent (an INSERT).
_NOTIFY_KIND = """CASE
    WHEN n.state = 'PENDING' THEN 'pending'
    WHEN n.state = 'RUNNING' AND n.cancel_requested = 1 AND o.cancel_requested = 0 THEN 'cancel'
    ELSE 'event'
END"""
_INSERTED_KIND = "CASE WHEN n.state = 'PENDING' THEN 'pending' ELSE 'event' END"


def _append_events_function(name: str, kind: str, rows: str) -> str:
    """A statement trigger's function (migration 8): the events of the changed `rows`
    (`n` the row after the change), under the event lock, and one notification per
    distinct `kind`; nothing, not even the lock, when no row changed."""
    return f"""
            CREATE FUNCTION {name}() RETURNS trigger
            LANGUAGE plpgsql AS $$
            DECLARE
                kinds text[];
            BEGIN
                SELECT array_agg(DISTINCT {kind}) INTO kinds FROM {rows};
                IF kinds IS NULL THEN
                    RETURN NULL;
                END IF;
                PERFORM pg_advisory_xact_lock({EVENT_LOCK});
                INSERT INTO job_events (job_id, kind, time_us, job)
                SELECT n.id, n.event_kind, n.update_us, {_event_values("n")}::text
                FROM {rows};
                PERFORM pg_notify('{CHANNEL}', kind) FROM unnest(kinds) AS kind;
                RETURN NULL;
            END
            $$
            """


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        6,
        "jobs, job_events, workers: the schema of SQLite migrations 1 to 6",
        (
            # Ids and keys compare byte by byte, as on SQLite: paging walks ids in order.
            # fillfactor leaves room in each page for an updated row, so progress reports
            # (which touch no indexed column) are HOT updates that write no index.
            """
            CREATE TABLE jobs (
                id text COLLATE "C" PRIMARY KEY,
                type text COLLATE "C" NOT NULL,
                payload text NOT NULL,
                state text COLLATE "C" NOT NULL,
                priority integer NOT NULL,
                labels text NOT NULL,
                attempt integer NOT NULL,
                max_attempts integer NOT NULL,
                create_us bigint NOT NULL,
                update_us bigint NOT NULL,
                run_after_us bigint NOT NULL,
                progress_percent double precision NOT NULL,
                progress_stage text NOT NULL,
                progress_message text NOT NULL,
                result text,
                error_code text,
                error_message text,
                error_retryable integer,
                error_details text,
                cancel_requested integer NOT NULL,
                cancel_reason text NOT NULL,
                worker_id text COLLATE "C",
                lease_id text COLLATE "C",
                lease_expire_us bigint,
                timeout_us bigint,
                deadline_us bigint,
                idempotency_key text COLLATE "C",
                request_hash text,
                start_us bigint,
                end_us bigint,
                version bigint NOT NULL DEFAULT 0,
                event_kind text NOT NULL DEFAULT ''
            ) WITH (fillfactor = 70)
            """,
            "CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key)"
            " WHERE idempotency_key IS NOT NULL",
            "CREATE INDEX jobs_claimable ON jobs (type, priority DESC, run_after_us, create_us, id)"
            " WHERE state = 'PENDING'",
            "CREATE INDEX jobs_claim_order ON jobs (priority DESC, run_after_us, create_us, id)"
            " WHERE state = 'PENDING'",
            "CREATE INDEX jobs_lease_expiry ON jobs (lease_expire_us) WHERE state = 'RUNNING'",
            "CREATE INDEX jobs_deadline ON jobs (deadline_us) WHERE state = 'RUNNING'",
            "CREATE INDEX jobs_cancel_requested ON jobs (worker_id)"
            " WHERE state = 'RUNNING' AND cancel_requested = 1",
            "CREATE INDEX jobs_by_worker ON jobs (worker_id) WHERE state = 'RUNNING'",
            "CREATE INDEX jobs_finished ON jobs (end_us) WHERE end_us IS NOT NULL",
            "CREATE INDEX jobs_by_state ON jobs (state, id)",
            """
            CREATE TABLE job_events (
                seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                job_id text COLLATE "C" NOT NULL,
                kind text NOT NULL,
                time_us bigint NOT NULL,
                job text NOT NULL
            )
            """,
            "CREATE INDEX job_events_by_job ON job_events (job_id, seq)",
            """
            CREATE TABLE workers (
                id text COLLATE "C" PRIMARY KEY,
                name text NOT NULL,
                host text NOT NULL,
                pid integer NOT NULL,
                job_types text NOT NULL,
                concurrency integer NOT NULL,
                state text COLLATE "C" NOT NULL,
                start_us bigint NOT NULL,
                heartbeat_us bigint NOT NULL,
                stop_us bigint
            )
            """,
            "CREATE INDEX workers_by_state ON workers (state, heartbeat_us)",
            # The highest sequence retention has deleted (see LAST_SEQUENCE).
            "CREATE TABLE job_events_pruned (through_seq bigint NOT NULL)",
            "INSERT INTO job_events_pruned VALUES (0)",
            f"""
            CREATE FUNCTION jobcontrol_append_job_event() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'UPDATE' AND NEW.version = OLD.version THEN
                    RETURN NULL;
                END IF;
                PERFORM pg_advisory_xact_lock({EVENT_LOCK});
                INSERT INTO job_events (job_id, kind, time_us, job)
                VALUES (NEW.id, NEW.event_kind, NEW.update_us, {_event_values("NEW")}::text);
                PERFORM pg_notify('{CHANNEL}', CASE
                    WHEN NEW.state = 'PENDING' THEN 'pending'
                    WHEN NEW.state = 'RUNNING' AND NEW.cancel_requested = 1
                        AND TG_OP = 'UPDATE' AND OLD.cancel_requested = 0 THEN 'cancel'
                    ELSE 'event'
                END);
                RETURN NULL;
            END
            $$
            """,
            """
            CREATE TRIGGER job_events_append AFTER INSERT OR UPDATE OF version ON jobs
            FOR EACH ROW EXECUTE FUNCTION jobcontrol_append_job_event()
            """,
        ),
    ),
    # Both tables churn: at PostgreSQL's defaults autovacuum comes after 20% of a
    # table has changed, which with a week's retention is hours of jobs for `jobs` and
    # some 34 hourly prunes for `job_events` (BENCHMARKS.md, "PostgreSQL churn").
    # These only change when autovacuum runs; how fast it runs is left to operators.
    Migration(
        7,
        "autovacuum thresholds for the churning jobs and job_events",
        (
            """
            ALTER TABLE jobs SET (
                autovacuum_vacuum_scale_factor = 0.01,
                autovacuum_vacuum_threshold = 1000,
                autovacuum_vacuum_insert_scale_factor = 0.05
            )
            """,
            """
            ALTER TABLE job_events SET (
                autovacuum_vacuum_scale_factor = 0.02,
                autovacuum_vacuum_threshold = 10000,
                autovacuum_vacuum_insert_scale_factor = 0.05,
                autovacuum_vacuum_insert_threshold = 10000
            )
            """,
        ),
    ),
    # Migration 6's trigger, once per statement instead of once per row (see the module
    # docstring). Two triggers: PostgreSQL takes transition tables only on a trigger of
    # one event and no column list, so the UPDATE one fires for every UPDATE of `jobs`
    # and looks for the rows whose `version` changed itself. A statement's events are
    # numbered in the order it wrote its rows, as before: both transition tables hold
    # them in that order, the INSERT's is read as it is, and the UPDATE's join (a hash
    # join in the plans PostgreSQL 15 makes here) reads one of them in order. Nothing
    # relies on the order within a statement (a job changes at most once in one).
    Migration(
        8,
        "job events appended once per statement, not per row",
        (
            "DROP TRIGGER job_events_append ON jobs",
            "DROP FUNCTION jobcontrol_append_job_event()",
            _append_events_function(
                "jobcontrol_append_inserted_job_events", _INSERTED_KIND, "new_rows AS n"
            ),
            """
            CREATE TRIGGER job_events_append_inserted AFTER INSERT ON jobs
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION jobcontrol_append_inserted_job_events()
            """,
            _append_events_function(
                "jobcontrol_append_updated_job_events",
                _NOTIFY_KIND,
                "new_rows AS n JOIN old_rows AS o ON o.id = n.id WHERE n.version <> o.version",
            ),
            """
            CREATE TRIGGER job_events_append_updated AFTER UPDATE ON jobs
            REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION jobcontrol_append_updated_job_events()
            """,
        ),
    ),
    # No statement here reads `jobs_claim_order`: the claim and the claimable probe
    # walk one type's range of `jobs_claimable`. Yet every submit wrote an entry to it
    # (131 of a job's 4,421 bytes of WAL) and every claim left a dead one for vacuum.
    # SQLite's claim later moved to `jobs_claimable` too, and its migration 10 drops it.
    Migration(
        9,
        "drop jobs_claim_order, which no PostgreSQL statement reads",
        ("DROP INDEX IF EXISTS jobs_claim_order",),
    ),
    # The UPDATE trigger's two statements join the old and new rows. plpgsql plans each
    # once per session, when the trigger first fires, from that statement's row counts:
    # a session whose first update was one row (an idle worker's claim, a heartbeat)
    # kept a nested loop, so every later batch of 64 compared 64 x 64 pairs, unpacking
    # 31 columns of the old row for each: the largest share of the database's CPU in a
    # busy cluster (BENCHMARKS.md). Without nested loops it is a hash join, whatever
    # the counts.
    Migration(
        11,
        "the event trigger joins old and new rows by hash, never by nested loop",
        ("ALTER FUNCTION jobcontrol_append_updated_job_events() SET enable_nestloop = off",),
    ),
    # Every claim wrote an entry to each index of running jobs. Two of them bought
    # nothing: `jobs_deadline` held the jobs without a deadline too, which the reaper's
    # `deadline_us < :now_us` never finds; `jobs_by_worker` served only the list of
    # workers, which asks for every worker's running jobs at once and reads all running
    # jobs either way.
    Migration(
        12,
        "index only jobs with a deadline; drop the per-worker index of running jobs",
        (
            "DROP INDEX IF EXISTS jobs_by_worker",
            "DROP INDEX IF EXISTS jobs_deadline",
            "CREATE INDEX jobs_deadline ON jobs (deadline_us)"
            " WHERE state = 'RUNNING' AND deadline_us IS NOT NULL",
        ),
    ),
)

_TERMINAL = "('SUCCEEDED', 'FAILED', 'CANCELLED')"


def _elements(param: str) -> str:
    """The text elements of a JSON array parameter, as a subquery."""
    return f"(SELECT json_array_elements_text(:{param}::json))"


def _ids_of(param: str) -> str:
    """`ANY` of the ids (element 0) of a JSON array parameter of arrays. A batch update
    names its rows this way besides joining its list: joined only, the planner cannot
    tell how long the list is and reads every RUNNING job to hash-join them, so a
    heartbeat of one job cost as much as one of every job running in the cluster."""
    return f"ANY (ARRAY(SELECT e->>0 FROM json_array_elements(:{param}::json) AS e))"


# The same text on both engines.
SELECT_JOB = sqlite.SELECT_JOB
INSERT_JOBS_COLUMNS = sqlite.INSERT_JOBS_COLUMNS
UPDATE_JOB = sqlite.UPDATE_JOB
REPORT_PROGRESS = sqlite.REPORT_PROGRESS
REAPABLE_JOBS = sqlite.REAPABLE_JOBS
SELECT_EVENTS = sqlite.SELECT_EVENTS
SELECT_JOB_EVENTS = sqlite.SELECT_JOB_EVENTS
COUNT_JOBS_BY_STATE = sqlite.COUNT_JOBS_BY_STATE
LAST_JOB_SEQUENCE = sqlite.LAST_JOB_SEQUENCE
PRUNABLE_JOB_IDS = sqlite.PRUNABLE_JOB_IDS
DELETE_OLD_WORKERS = sqlite.DELETE_OLD_WORKERS
INSERT_WORKER = sqlite.INSERT_WORKER
HEARTBEAT_WORKER = sqlite.HEARTBEAT_WORKER
MARK_LOST_WORKERS = sqlite.MARK_LOST_WORKERS
CANCEL_REQUESTS = sqlite.CANCEL_REQUESTS
PING = sqlite.PING

SELECT_JOBS_BY_IDEMPOTENCY_KEYS = f"SELECT * FROM jobs WHERE idempotency_key IN {_elements('keys')}"

# New jobs, in order. jsonb, not json: each row is parsed once, where `json` would parse
# its text again for each of the 31 fields read out of it (52 -> 22 ms for 1,000 jobs).
INSERT_JOBS = (
    f"INSERT INTO jobs ({', '.join(INSERT_JOBS_COLUMNS)}, version) SELECT "
    + ", ".join(
        f"(r.value->>{i})::{_COLUMN_TYPES.get(column, 'text')}"
        for i, column in enumerate(INSERT_JOBS_COLUMNS)
    )
    + ", 1 FROM jsonb_array_elements(:jobs::jsonb) WITH ORDINALITY AS r(value, n) ORDER BY r.n"
)

# The claim: the best claimable jobs, skipping rows another claim has locked (so claims
# by many workers at once never wait on each other), each started with a fresh lease.
# Each of the worker's types is walked in its own range of `jobs_claimable`, which
# stops at the limit, and the best of those are taken: one walk in claim order over
# every pending job would step over the jobs of types this worker does not run, and
# a table not yet analyzed got a plan that sorted every pending row. The picked ids are
# named as an array too, as the completions name theirs (`_ids_of`): joined only, a
# table not yet analyzed was read whole to hash-join 64 rows.
# Mirrors `jobcontrol.jobs.start`.
CLAIM_JOBS = f"""
WITH picked AS (
    SELECT best.id FROM {_elements("types")} AS wanted (type)
    CROSS JOIN LATERAL (
        SELECT id, priority, run_after_us, create_us FROM jobs
        WHERE state = 'PENDING' AND type = wanted.type AND run_after_us <= :now_us
        ORDER BY priority DESC, run_after_us, create_us, id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    ) AS best
    ORDER BY best.priority DESC, best.run_after_us, best.create_us, best.id
    LIMIT :limit
)
UPDATE jobs SET
    state = 'RUNNING',
    attempt = attempt + 1,
    worker_id = :worker_id,
    lease_id = replace(gen_random_uuid()::text, '-', ''),
    lease_expire_us = :lease_expire_us,
    start_us = :now_us,
    update_us = :now_us,
    deadline_us = CASE WHEN timeout_us IS NULL THEN NULL ELSE :now_us::bigint + timeout_us END,
    progress_percent = 0,
    progress_stage = '',
    progress_message = '',
    version = version + 1,
    event_kind = 'STARTED'
FROM picked
WHERE jobs.id = ANY (ARRAY(SELECT id FROM picked)) AND jobs.id = picked.id
RETURNING jobs.*
"""

# An idle worker's probe: one look into each wanted type's range of `jobs_claimable`,
# as the claim walks it. Asked as one `type IN (...)` over pending jobs, the planner
# walked every pending job (or the whole table), so a backlog of another type made
# every idle poll of this one as slow as a scan of it. The ORDER BY is the index's
# own: without it, a planner that expects most rows to match takes a table scan, which
# for a type with nothing pending reads every row.
HAS_CLAIMABLE_JOBS = f"""
SELECT EXISTS (
    SELECT 1 FROM {_elements("types")} AS wanted (type)
    CROSS JOIN LATERAL (
        SELECT 1 FROM jobs
        WHERE state = 'PENDING' AND type = wanted.type AND run_after_us <= :now_us
        ORDER BY priority DESC, run_after_us, create_us, id
        LIMIT 1
    ) AS found
) AS claimable
"""

# Mirrors `jobcontrol.jobs.succeed`, as the SQLite statement does.
_COMPLETE = """
UPDATE jobs SET
    state = 'SUCCEEDED',
    result = done.result,
    progress_percent = 100,
    progress_stage = CASE WHEN jobs.progress_percent >= 100 THEN jobs.progress_stage ELSE '' END,
    progress_message = CASE WHEN jobs.progress_percent >= 100
        THEN jobs.progress_message ELSE '' END,
    update_us = :now_us,
    end_us = :now_us,
    lease_expire_us = NULL,
    deadline_us = NULL,
    cancel_requested = 0,
    version = jobs.version + 1,
    event_kind = 'SUCCEEDED'
FROM ({completions}) AS done
WHERE jobs.id = {ids} AND jobs.id = done.id AND jobs.lease_id = done.lease_id
    AND jobs.state = 'RUNNING'
RETURNING {returning}
"""


COMPLETE_JOBS = _COMPLETE.format(
    returning="jobs.id, jobs.lease_id",
    ids=_ids_of("completions"),
    completions="""
    SELECT c->>0 AS id, c->>1 AS lease_id, c->>2 AS result
    FROM json_array_elements(:completions::json) AS c
""",
)

COMPLETE_JOB = _COMPLETE.format(
    returning="jobs.*",
    ids=":job_id::text",
    completions="SELECT :job_id::text AS id, :lease_id::text AS lease_id, :result::text AS result",
)

HEARTBEAT_JOBS = f"""
UPDATE jobs SET lease_expire_us = :lease_expire_us
FROM (
    SELECT l->>0 AS id, l->>1 AS lease_id FROM json_array_elements(:leases::json) AS l
) AS held
WHERE jobs.id = {_ids_of("leases")} AND jobs.id = held.id AND jobs.lease_id = held.lease_id
    AND jobs.state = 'RUNNING'
RETURNING jobs.id, jobs.cancel_requested, jobs.lease_expire_us
"""

# Labels match when the job's labels contain every wanted pair.
LIST_JOBS = f"""
SELECT * FROM jobs
WHERE (:states::text IS NULL OR state IN {_elements("states")})
  AND (:types::text IS NULL OR type IN {_elements("types")})
  AND (:labels::text IS NULL OR labels::jsonb @> :labels::jsonb)
  AND (:before_id::text IS NULL OR id < :before_id::text)
ORDER BY id DESC
LIMIT :limit
"""

# The jobs asked for are named as an array, not joined as a set: PostgreSQL guesses 100
# rows for a set-returning function and 10 for an array, and the guess multiplies the
# count's cost (at 100 a 100,000-job table crossed `jit_above_cost`).
QUEUE_POSITIONS = f"""
SELECT t.id AS id, (
    SELECT count(*) FROM jobs AS o
    WHERE o.state = 'PENDING' AND o.type = t.type AND o.run_after_us <= :now_us
      AND (o.priority > t.priority
           OR (o.priority = t.priority
               AND (o.run_after_us, o.create_us, o.id) < (t.run_after_us, t.create_us, t.id)))
) AS position
FROM jobs AS t
WHERE t.id = ANY (ARRAY{_elements("ids")}) AND t.state = 'PENDING'
"""

SELECT_EVENTS_OF_JOBS = f"""
SELECT seq, job_id, kind, time_us, job FROM job_events
WHERE job_id IN {_elements("ids")}
    AND seq > :after_seq AND seq <= :through_seq
ORDER BY seq LIMIT :limit
"""

LATEST_JOB_EVENTS = f"""
SELECT e.seq, e.job_id, e.kind, e.time_us, e.job FROM job_events AS e
JOIN (
    SELECT job_id, max(seq) AS seq FROM job_events
    WHERE job_id IN {_elements("ids")}
    GROUP BY job_id
) AS latest ON e.seq = latest.seq
"""

# The highest sequence committed, even if retention deleted that event since. Not the
# identity's last value: that may be a number drawn by a transaction still in flight,
# and a reader that went up to it would skip that event. Events commit in order, so
# everything up to the highest committed is there to read.
LAST_SEQUENCE = """
SELECT greatest(
    (SELECT coalesce(max(seq), 0) FROM job_events),
    (SELECT through_seq FROM job_events_pruned)
) AS seq
"""

DELETE_EVENTS_OF_JOBS = f"""
WITH deleted AS (
    DELETE FROM job_events WHERE job_id IN {_elements("ids")} RETURNING seq
), marked AS (
    UPDATE job_events_pruned SET through_seq = greatest(through_seq, (SELECT max(seq) FROM deleted))
    WHERE EXISTS (SELECT 1 FROM deleted)
)
SELECT seq FROM deleted
"""

DELETE_JOBS = f"DELETE FROM jobs WHERE id IN {_elements('ids')} RETURNING id"

SET_WORKER_STATE = """
UPDATE workers SET state = :state::text, heartbeat_us = :now_us,
    stop_us = CASE WHEN :state::text = 'STOPPED' THEN :now_us::bigint ELSE stop_us END
WHERE id = :id
RETURNING *
"""

SELECT_WORKERS = """
SELECT * FROM workers
WHERE :include_stopped::integer = 1 OR state IN ('ACTIVE', 'DRAINING')
ORDER BY start_us DESC, id DESC
"""

SERVED_JOB_TYPES = """
SELECT DISTINCT json_array_elements_text(job_types::json) AS job_type FROM workers
WHERE state = 'ACTIVE'
"""

RUNNING_JOBS_BY_WORKER = f"""
SELECT worker_id, id FROM jobs
WHERE state = 'RUNNING' AND worker_id IN {_elements("ids")}
ORDER BY start_us, id
"""
