"""Every SQL statement the store runs on SQLite and libSQL, by name. The SQLite and
both libSQL drivers run these unchanged; `postgres.py` has the same names.

Lists of values travel as one JSON array parameter (`json_each`), so each statement's
text is fixed whatever the number of ids or types.
"""

from __future__ import annotations

from jobcontrol.store.rows import JOB_COLUMNS
from jobcontrol.store.schema import MIGRATIONS as MIGRATIONS

# BEGIN IMMEDIATE already serializes starters applying migrations.
BEFORE_MIGRATIONS: tuple[str, ...] = ()

MIGRATIONS_TABLE_PRESENT = (
    "SELECT count(*) AS present FROM sqlite_master"
    " WHERE type = 'table' AND name = 'schema_migrations'"
)

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_us INTEGER NOT NULL
)
"""

_TERMINAL = "('SUCCEEDED', 'FAILED', 'CANCELLED')"

SELECT_JOB = "SELECT * FROM jobs WHERE id = :id"

SELECT_JOBS_BY_IDEMPOTENCY_KEYS = (
    "SELECT * FROM jobs WHERE idempotency_key IN (SELECT value FROM json_each(:keys))"
)

# New jobs, in order: `:jobs` is a JSON array of rows, each an array of these columns'
# values. The triggers of migration 3 append each job's event (see schema.py).
INSERT_JOBS_COLUMNS = (*JOB_COLUMNS, "request_hash", "event_kind")
INSERT_JOBS = (
    f"INSERT INTO jobs ({', '.join(INSERT_JOBS_COLUMNS)}, version) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(INSERT_JOBS_COLUMNS)))
    + ", 1 FROM json_each(:jobs) ORDER BY key"
)

# Optimistic: applies only if the row is still the version the change was computed
# from; no row back means someone else changed it first.
UPDATE_JOB = (
    "UPDATE jobs SET "
    + ", ".join(f"{c} = :{c}" for c in JOB_COLUMNS if c != "id")
    + ", version = version + 1, event_kind = :event_kind"
    + " WHERE id = :id AND version = :expected_version RETURNING version"
)

# The claim: one statement picks the best claimable jobs and starts an attempt on each
# with a fresh lease id. Mirrors `jobcontrol.jobs.start`.
CLAIM_JOBS = """
UPDATE jobs SET
    state = 'RUNNING',
    attempt = attempt + 1,
    worker_id = :worker_id,
    lease_id = lower(hex(randomblob(16))),
    lease_expire_us = :lease_expire_us,
    start_us = :now_us,
    update_us = :now_us,
    deadline_us = CASE WHEN timeout_us IS NULL THEN NULL ELSE :now_us + timeout_us END,
    progress_percent = 0,
    progress_stage = '',
    progress_message = '',
    version = version + 1,
    event_kind = 'STARTED'
WHERE id IN (
    -- The best `limit` of each wanted type, each read in claim order from that type's
    -- range of jobs_claimable, then the best `limit` of those: a backlog of a type not
    -- asked for is never walked, and a large one of a wanted type is not sorted.
    SELECT j.id FROM json_each(:types) AS wanted
    JOIN jobs AS j ON j.id IN (
        SELECT id FROM jobs INDEXED BY jobs_claimable
        WHERE state = 'PENDING' AND type = wanted.value AND run_after_us <= :now_us
        ORDER BY priority DESC, run_after_us, create_us, id
        LIMIT :limit
    )
    ORDER BY j.priority DESC, j.run_after_us, j.create_us, j.id
    LIMIT :limit
)
RETURNING *
"""

# Is there anything to claim? A read, so idle workers polling often never take the write
# lock; it looks into each wanted type's range of jobs_claimable, as the claim does.
HAS_CLAIMABLE_JOBS = """
SELECT EXISTS (
    SELECT 1 FROM json_each(:types) AS wanted
    WHERE EXISTS (
        SELECT 1 FROM jobs INDEXED BY jobs_claimable
        WHERE state = 'PENDING' AND type = wanted.value AND run_after_us <= :now_us
    )
) AS claimable
"""

# Successes in one statement, each fenced by its own lease: no read, no decode, no
# full-row write. Mirrors `jobcontrol.jobs.succeed`, progress included (a stage and
# message reported short of 100% are cleared). The unary + keeps the planner from
# walking every RUNNING job by state and scanning the batch for each: it looks each
# completion up by primary key instead (100x faster with thousands running).
_COMPLETE = """
UPDATE jobs SET
    state = 'SUCCEEDED',
    result = done.result,
    progress_percent = 100,
    progress_stage = CASE WHEN progress_percent >= 100 THEN progress_stage ELSE '' END,
    progress_message = CASE WHEN progress_percent >= 100 THEN progress_message ELSE '' END,
    update_us = :now_us,
    end_us = :now_us,
    lease_expire_us = NULL,
    deadline_us = NULL,
    cancel_requested = 0,
    version = version + 1,
    event_kind = 'SUCCEEDED'
FROM ({completions}) AS done
WHERE jobs.id = done.id AND jobs.lease_id = done.lease_id AND +jobs.state = 'RUNNING'
RETURNING {returning}
"""

# `:completions` is a JSON array of [id, lease_id, result as JSON text]. Returns which
# completions were recorded, not the jobs: a batch's caller needs no more.
COMPLETE_JOBS = _COMPLETE.format(
    returning="id, lease_id",
    completions="""
    SELECT json_extract(value, '$[0]') AS id,
           json_extract(value, '$[1]') AS lease_id,
           json_extract(value, '$[2]') AS result
    FROM json_each(:completions)
""",
)

# One completion, by parameters: the batch's JSON costs more than the rest of the
# statement when the batch is one job (a worker keeping up completes one at a time).
COMPLETE_JOB = _COMPLETE.format(
    returning="*", completions="SELECT :job_id AS id, :lease_id AS lease_id, :result AS result"
)


# Progress of the attempt the lease names, in one fenced statement. Mirrors
# `jobcontrol.jobs.report_progress`.
REPORT_PROGRESS = """
UPDATE jobs SET
    progress_percent = :percent,
    progress_stage = :stage,
    progress_message = :message,
    update_us = :now_us,
    version = version + 1,
    event_kind = 'PROGRESS'
WHERE id = :id AND lease_id = :lease_id AND state = 'RUNNING'
RETURNING *
"""

# Heartbeats change no visible state, so they write no event. Each lease in the batch
# is fenced on its own, as completions are.
HEARTBEAT_JOBS = """
UPDATE jobs SET lease_expire_us = :lease_expire_us
FROM (
    SELECT json_extract(value, '$[0]') AS id,
           json_extract(value, '$[1]') AS lease_id
    FROM json_each(:leases)
) AS held
WHERE jobs.id = held.id AND jobs.lease_id = held.lease_id AND +jobs.state = 'RUNNING'
RETURNING id, cancel_requested, lease_expire_us
"""

LIST_JOBS = """
SELECT * FROM jobs
WHERE (:states IS NULL OR state IN (SELECT value FROM json_each(:states)))
  AND (:types IS NULL OR type IN (SELECT value FROM json_each(:types)))
  AND (:labels IS NULL OR NOT EXISTS (
        SELECT 1 FROM json_each(:labels) AS wanted
        WHERE NOT EXISTS (
            SELECT 1 FROM json_each(jobs.labels) AS have
            WHERE have.key = wanted.key AND have.value = wanted.value)))
  AND (:before_id IS NULL OR id < :before_id)
ORDER BY id DESC
LIMIT :limit
"""

# For each given PENDING job: how many claimable jobs of its type a claim would take
# first (the claim's order: priority DESC, run_after, create, id).
QUEUE_POSITIONS = """
SELECT t.id AS id, (
    SELECT count(*) FROM jobs AS o
    WHERE o.state = 'PENDING' AND o.type = t.type AND o.run_after_us <= :now_us
      AND (o.priority > t.priority
           OR (o.priority = t.priority
               AND (o.run_after_us, o.create_us, o.id) < (t.run_after_us, t.create_us, t.id)))
) AS position
FROM jobs AS t
WHERE t.id IN (SELECT value FROM json_each(:ids)) AND t.state = 'PENDING'
"""

# Running jobs the reaper must move: lease expired, attempt past its deadline, or a
# cancellation whose worker has stopped or been lost.
REAPABLE_JOBS = """
SELECT *, worker_id IN (SELECT id FROM workers WHERE state IN ('STOPPED', 'LOST'))
    AS worker_gone
FROM jobs WHERE id IN (
    SELECT id FROM jobs WHERE state = 'RUNNING' AND lease_expire_us < :now_us
    UNION
    SELECT id FROM jobs WHERE state = 'RUNNING' AND deadline_us < :now_us
    UNION
    SELECT id FROM jobs WHERE state = 'RUNNING' AND cancel_requested = 1
        AND worker_id IN (SELECT id FROM workers WHERE state IN ('STOPPED', 'LOST'))
)
LIMIT :limit
"""

SELECT_EVENTS = """
SELECT seq, job_id, kind, time_us, job FROM job_events
WHERE seq > :after_seq ORDER BY seq LIMIT :limit
"""

SELECT_JOB_EVENTS = """
SELECT seq, job_id, kind, time_us, job FROM job_events
WHERE job_id = :job_id AND seq > :after_seq ORDER BY seq LIMIT :limit
"""

# The events of some jobs in a range of sequences, through the (job_id, seq) index.
SELECT_EVENTS_OF_JOBS = """
SELECT seq, job_id, kind, time_us, job FROM job_events
WHERE job_id IN (SELECT value FROM json_each(:ids))
    AND seq > :after_seq AND seq <= :through_seq
ORDER BY seq LIMIT :limit
"""

# The highest sequence ever issued, even if retention pruned that event since.
# The newest event of each given job: a job's snapshot together with its sequence.
LATEST_JOB_EVENTS = """
SELECT e.seq, e.job_id, e.kind, e.time_us, e.job FROM job_events AS e
JOIN (
    SELECT job_id, max(seq) AS seq FROM job_events
    WHERE job_id IN (SELECT value FROM json_each(:ids))
    GROUP BY job_id
) AS latest ON e.seq = latest.seq
"""

COUNT_JOBS_BY_STATE = "SELECT state, count(*) AS jobs FROM jobs GROUP BY state"

LAST_SEQUENCE = (
    "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'job_events'), 0) AS seq"
)

LAST_JOB_SEQUENCE = "SELECT coalesce(max(seq), 0) AS seq FROM job_events WHERE job_id = :job_id"

PRUNABLE_JOB_IDS = f"""
SELECT id FROM jobs WHERE end_us < :cutoff_us AND state IN {_TERMINAL}
ORDER BY end_us LIMIT :limit
"""

DELETE_EVENTS_OF_JOBS = (
    "DELETE FROM job_events WHERE job_id IN (SELECT value FROM json_each(:ids)) RETURNING seq"
)

DELETE_JOBS = "DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(:ids)) RETURNING id"

DELETE_OLD_WORKERS = (
    "DELETE FROM workers WHERE state IN ('STOPPED', 'LOST') AND heartbeat_us < :cutoff_us"
    " RETURNING id"
)

INSERT_WORKER = """
INSERT INTO workers (id, name, host, pid, job_types, concurrency, state, start_us, heartbeat_us)
VALUES (:id, :name, :host, :pid, :job_types, :concurrency, 'ACTIVE', :now_us, :now_us)
RETURNING *
"""

HEARTBEAT_WORKER = """
UPDATE workers SET heartbeat_us = :now_us,
    state = CASE WHEN state = 'LOST' THEN 'ACTIVE' ELSE state END
WHERE id = :id AND state != 'STOPPED'
RETURNING *
"""

SET_WORKER_STATE = """
UPDATE workers SET state = :state, heartbeat_us = :now_us,
    stop_us = CASE WHEN :state = 'STOPPED' THEN :now_us ELSE stop_us END
WHERE id = :id
RETURNING *
"""

SELECT_WORKERS = """
SELECT * FROM workers
WHERE :include_stopped OR state IN ('ACTIVE', 'DRAINING')
ORDER BY start_us DESC, id DESC
"""

# The job types ACTIVE workers claim (a DRAINING worker claims nothing new).
SERVED_JOB_TYPES = """
SELECT DISTINCT types.value AS job_type FROM workers, json_each(workers.job_types) AS types
WHERE workers.state = 'ACTIVE'
"""

RUNNING_JOBS_BY_WORKER = """
SELECT worker_id, id FROM jobs
WHERE state = 'RUNNING' AND worker_id IN (SELECT value FROM json_each(:ids))
ORDER BY start_us, id
"""

MARK_LOST_WORKERS = """
UPDATE workers SET state = 'LOST'
WHERE state IN ('ACTIVE', 'DRAINING') AND heartbeat_us < :cutoff_us
RETURNING id
"""

# A worker's running jobs whose cancellation was requested: the partial index makes this
# cheap enough to ask several times a second.
CANCEL_REQUESTS = """
SELECT id FROM jobs
WHERE state = 'RUNNING' AND cancel_requested = 1 AND worker_id = :worker_id
"""

PING = "SELECT 1 AS ok"
