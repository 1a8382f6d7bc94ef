"""The schema as numbered migrations, applied on start and recorded in the database.

Migrations only ever get appended. Times are integer microseconds since the Unix epoch
(`*_us`), exact for Python datetimes and cheap to compare in SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobcontrol.store.database import Tx


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


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
)

_CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_us INTEGER NOT NULL
)
"""


def apply_migrations(tx: Tx, *, now_us: int) -> list[int]:
    """Apply the migrations this database lacks; returns their versions. Runs inside one
    write transaction, so concurrent starters apply each migration once."""
    tx.execute(_CREATE_MIGRATIONS_TABLE)
    done = {row["version"] for row in tx.execute("SELECT version FROM schema_migrations")}
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            tx.execute(statement)
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_us) VALUES (?, ?, ?)",
            (migration.version, migration.name, now_us),
        )
        applied.append(migration.version)
    return applied
