"""The schema as numbered migrations, applied on start and recorded in the database.

Migrations only ever get appended. Times are integer microseconds since the Unix epoch
(`*_us`), exact for Python datetimes and cheap to compare in SQL.

Since migration 3 the event log is written by triggers: every INSERT of a job and every
UPDATE that bumps its `version` appends one `job_events` row in the same statement, so
a change and its event cannot be separated, and a change costs one statement (which
matters over the network). `event_kind` carries the kind of the change to the trigger.
A migration adding a column the events must carry replaces both triggers (migration 5).

Since migration 6 an event stores the job as a JSON array, not an object: the values in
the order of a column layout named by the array's first element (`EVENT_LAYOUTS`), so
the trigger writes and the tailer parses no column names. Events written before keep
their objects and still decode.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobcontrol.store.database import Tx


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


# The job as an event stores it: the row's columns as a JSON object (decoded by
# `rows.job_from_row`). Spelled out, not generated, so migration 3 never changes.
_JOB_JSON = """json_object(
        'id', NEW.id,
        'type', NEW.type,
        'payload', NEW.payload,
        'state', NEW.state,
        'priority', NEW.priority,
        'labels', NEW.labels,
        'attempt', NEW.attempt,
        'max_attempts', NEW.max_attempts,
        'create_us', NEW.create_us,
        'update_us', NEW.update_us,
        'run_after_us', NEW.run_after_us,
        'progress_percent', NEW.progress_percent,
        'progress_stage', NEW.progress_stage,
        'progress_message', NEW.progress_message,
        'result', NEW.result,
        'error_code', NEW.error_code,
        'error_message', NEW.error_message,
        'error_retryable', NEW.error_retryable,
        'cancel_requested', NEW.cancel_requested,
        'cancel_reason', NEW.cancel_reason,
        'worker_id', NEW.worker_id,
        'lease_id', NEW.lease_id,
        'lease_expire_us', NEW.lease_expire_us,
        'timeout_us', NEW.timeout_us,
        'deadline_us', NEW.deadline_us,
        'idempotency_key', NEW.idempotency_key,
        'start_us', NEW.start_us,
        'end_us', NEW.end_us
    )"""

# Since migration 5: the same, with the error's details.
_JOB_JSON_WITH_ERROR_DETAILS = """json_object(
        'id', NEW.id,
        'type', NEW.type,
        'payload', NEW.payload,
        'state', NEW.state,
        'priority', NEW.priority,
        'labels', NEW.labels,
        'attempt', NEW.attempt,
        'max_attempts', NEW.max_attempts,
        'create_us', NEW.create_us,
        'update_us', NEW.update_us,
        'run_after_us', NEW.run_after_us,
        'progress_percent', NEW.progress_percent,
        'progress_stage', NEW.progress_stage,
        'progress_message', NEW.progress_message,
        'result', NEW.result,
        'error_code', NEW.error_code,
        'error_message', NEW.error_message,
        'error_retryable', NEW.error_retryable,
        'error_details', NEW.error_details,
        'cancel_requested', NEW.cancel_requested,
        'cancel_reason', NEW.cancel_reason,
        'worker_id', NEW.worker_id,
        'lease_id', NEW.lease_id,
        'lease_expire_us', NEW.lease_expire_us,
        'timeout_us', NEW.timeout_us,
        'deadline_us', NEW.deadline_us,
        'idempotency_key', NEW.idempotency_key,
        'start_us', NEW.start_us,
        'end_us', NEW.end_us
    )"""

# The columns of each event layout, in the order the trigger writes them after the
# layout's number. A migration adding a column the events carry adds a layout; the old
# ones stay, for the events already written.
EVENT_LAYOUTS: dict[int, tuple[str, ...]] = {
    1: (
        "id",
        "type",
        "payload",
        "state",
        "priority",
        "labels",
        "attempt",
        "max_attempts",
        "create_us",
        "update_us",
        "run_after_us",
        "progress_percent",
        "progress_stage",
        "progress_message",
        "result",
        "error_code",
        "error_message",
        "error_retryable",
        "error_details",
        "cancel_requested",
        "cancel_reason",
        "worker_id",
        "lease_id",
        "lease_expire_us",
        "timeout_us",
        "deadline_us",
        "idempotency_key",
        "start_us",
        "end_us",
    ),
}


def _job_json_array(layout: int) -> str:
    return f"json_array({layout}, " + ", ".join(f"NEW.{c}" for c in EVENT_LAYOUTS[layout]) + ")"


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "jobs, job_events, workers",
        (
            """
            CREATE TABLE jobs (
                id TEXT PRIMARY KEY,
                type TEXT NOT NULL,
                payload TEXT NOT NULL,
                state TEXT NOT NULL,
                priority INTEGER NOT NULL,
                labels TEXT NOT NULL,
                attempt INTEGER NOT NULL,
                max_attempts INTEGER NOT NULL,
                create_us INTEGER NOT NULL,
                update_us INTEGER NOT NULL,
                run_after_us INTEGER NOT NULL,
                progress_percent REAL NOT NULL,
                progress_stage TEXT NOT NULL,
                progress_message TEXT NOT NULL,
                result TEXT,
                error_code TEXT,
                error_message TEXT,
                error_retryable INTEGER,
                cancel_requested INTEGER NOT NULL,
                cancel_reason TEXT NOT NULL,
                worker_id TEXT,
                lease_id TEXT,
                lease_expire_us INTEGER,
                timeout_us INTEGER,
                deadline_us INTEGER,
                idempotency_key TEXT,
                request_hash TEXT,
                start_us INTEGER,
                end_us INTEGER
            )
            """,
            "CREATE UNIQUE INDEX jobs_idempotency_key ON jobs (idempotency_key)"
            " WHERE idempotency_key IS NOT NULL",
            "CREATE INDEX jobs_claimable ON jobs (type, priority DESC, run_after_us, create_us, id)"
            " WHERE state = 'PENDING'",
            "CREATE INDEX jobs_lease_expiry ON jobs (lease_expire_us) WHERE state = 'RUNNING'",
            "CREATE INDEX jobs_deadline ON jobs (deadline_us) WHERE state = 'RUNNING'",
            "CREATE INDEX jobs_cancel_requested ON jobs (worker_id)"
            " WHERE state = 'RUNNING' AND cancel_requested = 1",
            "CREATE INDEX jobs_by_worker ON jobs (worker_id) WHERE state = 'RUNNING'",
            "CREATE INDEX jobs_finished ON jobs (end_us) WHERE end_us IS NOT NULL",
            """
            CREATE TABLE job_events (
                seq INTEGER PRIMARY KEY AUTOINCREMENT,
                job_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                time_us INTEGER NOT NULL,
                job TEXT NOT NULL
            )
            """,
            "CREATE INDEX job_events_by_job ON job_events (job_id, seq)",
            """
            CREATE TABLE workers (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                host TEXT NOT NULL,
                pid INTEGER NOT NULL,
                job_types TEXT NOT NULL,
                concurrency INTEGER NOT NULL,
                state TEXT NOT NULL,
                start_us INTEGER NOT NULL,
                heartbeat_us INTEGER NOT NULL,
                stop_us INTEGER
            )
            """,
            "CREATE INDEX workers_by_state ON workers (state, heartbeat_us)",
        ),
    ),
    Migration(
        2,
        "jobs by state, for counting and listing by state",
        ("CREATE INDEX jobs_by_state ON jobs (state, id)",),
    ),
    Migration(
        3,
        "events written by triggers, versioned job rows",
        (
            "ALTER TABLE jobs ADD COLUMN version INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE jobs ADD COLUMN event_kind TEXT NOT NULL DEFAULT ''",
            f"""
            CREATE TRIGGER job_events_on_insert AFTER INSERT ON jobs
            BEGIN
                INSERT INTO job_events (job_id, kind, time_us, job)
                VALUES (NEW.id, NEW.event_kind, NEW.update_us, {_JOB_JSON});
            END
            """,
            f"""
            CREATE TRIGGER job_events_on_update AFTER UPDATE OF version ON jobs
            WHEN NEW.version != OLD.version
            BEGIN
                INSERT INTO job_events (job_id, kind, time_us, job)
                VALUES (NEW.id, NEW.event_kind, NEW.update_us, {_JOB_JSON});
            END
            """,
        ),
    ),
    Migration(
        4,
        "pending jobs in claim order",
        (
            "CREATE INDEX jobs_claim_order ON jobs (priority DESC, run_after_us, create_us, id)"
            " WHERE state = 'PENDING'",
        ),
    ),
    Migration(
        5,
        "error details (the handler's traceback), carried by events too",
        (
            "ALTER TABLE jobs ADD COLUMN error_details TEXT",
            "DROP TRIGGER job_events_on_insert",
            "DROP TRIGGER job_events_on_update",
            f"""
            CREATE TRIGGER job_events_on_insert AFTER INSERT ON jobs
            BEGIN
                INSERT INTO job_events (job_id, kind, time_us, job)
                VALUES (NEW.id, NEW.event_kind, NEW.update_us, {_JOB_JSON_WITH_ERROR_DETAILS});
            END
            """,
            f"""
            CREATE TRIGGER job_events_on_update AFTER UPDATE OF version ON jobs
            WHEN NEW.version != OLD.version
            BEGIN
                INSERT INTO job_events (job_id, kind, time_us, job)
                VALUES (NEW.id, NEW.event_kind, NEW.update_us, {_JOB_JSON_WITH_ERROR_DETAILS});
            END
            """,
        ),
    ),
    Migration(
        6,
        "events carry the job as a JSON array of its values",
        (
            "DROP TRIGGER job_events_on_insert",
            "DROP TRIGGER job_events_on_update",
            f"""
            CREATE TRIGGER job_events_on_insert AFTER INSERT ON jobs
            BEGIN
                INSERT INTO job_events (job_id, kind, time_us, job)
                VALUES (NEW.id, NEW.event_kind, NEW.update_us, {_job_json_array(1)});
            END
            """,
            f"""
            CREATE TRIGGER job_events_on_update AFTER UPDATE OF version ON jobs
            WHEN NEW.version != OLD.version
            BEGIN
                INSERT INTO job_events (job_id, kind, time_us, job)
                VALUES (NEW.id, NEW.event_kind, NEW.update_us, {_job_json_array(1)});
            END
            """,
        ),
    ),
    # Versions are shared with PostgreSQL's list (sql/postgres.py), which took 7 to 9, 11
    # and 12: the next on either is 13.
    Migration(
        10,
        "drop jobs_claim_order: claims read each type's range of jobs_claimable",
        ("DROP INDEX IF EXISTS jobs_claim_order",),
    ),
)


async def lacks_migrations(tx: Tx) -> bool:
    """Whether the database lacks a migration of its dialect. Read first, outside the
    migrations' transaction, so that a process starting on an up-to-date database takes
    no lock: on PostgreSQL that is the event lock, and every writer of events queues
    behind a starter waiting for it."""
    (row,) = await tx.execute(tx.sql.MIGRATIONS_TABLE_PRESENT)
    return not row["present"] or bool(await _missing_migrations(tx))


async def _missing_migrations(tx: Tx) -> list[Migration]:
    """The dialect's migrations `schema_migrations` does not list, in order."""
    done = {row["version"] for row in await tx.execute("SELECT version FROM schema_migrations")}
    return [migration for migration in tx.sql.MIGRATIONS if migration.version not in done]


async def apply_migrations(tx: Tx, *, now_us: int) -> list[int]:
    """Apply the migrations of the database's dialect it lacks; returns their versions.
    Runs inside one write transaction, so concurrent starters apply each migration once."""
    for statement in tx.sql.BEFORE_MIGRATIONS:
        await tx.execute(statement)
    await tx.execute(tx.sql.CREATE_MIGRATIONS_TABLE)
    applied = []
    for migration in await _missing_migrations(tx):
        for statement in migration.statements:
            await tx.execute(statement)
        await tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_us)"
            " VALUES (:version, :name, :now_us)",
            {"version": migration.version, "name": migration.name, "now_us": now_us},
        )
        applied.append(migration.version)
    return applied
