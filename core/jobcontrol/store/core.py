"""The SQL core: the JobStore operations, written once for every driver.

Each operation is a coroutine function of one transaction (`Tx`). Changes to jobs go through the
pure state machine in `jobcontrol.jobs` and are saved together with their event; only
the claim is a single SQL statement, because it must be atomic without a lock held
across round trips.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Self, TypeVar

from jobcontrol import jobs
from jobcontrol.errors import (
    AlreadyExists,
    InvalidArgument,
    JobNotFound,
    LeaseLost,
    WorkerNotFound,
)
from jobcontrol.ids import new_id, parse_id
from jobcontrol.jobs import Job, JobError, JobEvent, JobSpec, JobState, Progress
from jobcontrol.retry import DEFAULT_RETRY_POLICY, RetryPolicy
from jobcontrol.store.database import Conflict, Database, Row, Tx
from jobcontrol.store.paging import (
    PageCursor,
    decode_token,
    effective_page_size,
    encode_token,
    rows_on_page,
)
from jobcontrol.store.protocol import (
    MAX_BATCH_SIZE,
    Completion,
    HeartbeatAck,
    JobFilter,
    JobPage,
    PruneResult,
    ReapResult,
    StoreChanges,
    Submitted,
)
from jobcontrol.store.rows import (
    dump_json,
    event_from_row,
    from_us,
    job_from_row,
    job_to_row,
    json_arrays,
    to_us,
    worker_from_row,
)
from jobcontrol.store.schema import apply_migrations, lacks_migrations
from jobcontrol.validation import (
    DEFAULT_LIMITS,
    Limits,
    encode_json,
    validate_labels,
    validate_progress,
    validate_reason,
    validate_spec,
    validate_type,
)
from jobcontrol.workers import Worker, WorkerInfo, WorkerState

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], datetime]

MAX_ERROR_CODE_LENGTH = 64
MAX_ERROR_MESSAGE_LENGTH = 4096
# A traceback's last lines say most (the raising line and the exception): a longer text
# keeps its end.
MAX_ERROR_DETAILS_BYTES = 16 * 1024
MAX_EVENTS_PER_READ = 10_000
MAX_WORKER_TEXT_LENGTH = 256
# Claims and completions of up to this many jobs count as small (see database.py).
SMALL_BATCH = 64
# Batches travel as one JSON text argument per statement; sqld refuses an argument of a
# few MiB, so bigger batches are split into statements of at most this size.
MAX_ARGUMENT_BYTES = 2 * 1024 * 1024
# Progress percent is stored to this many decimal places.
PROGRESS_DECIMALS = 4
# A job row's JSON besides its payload, labels and idempotency key, at most.
ROW_BYTES = 1024


def utc_now() -> datetime:
    return datetime.now(UTC)


def request_hash(spec: JobSpec) -> str:
    """Fingerprint of a submission, to tell a repeated request from a different one
    under the same idempotency key."""
    canonical = json.dumps(
        {
            "type": spec.type,
            "payload": spec.payload,
            "priority": spec.priority,
            "run_after": None if spec.run_after is None else to_us(spec.run_after),
            "delay_us": None if spec.delay is None else spec.delay // timedelta(microseconds=1),
            "max_attempts": spec.max_attempts or jobs.DEFAULT_MAX_ATTEMPTS,
            "timeout_us": None
            if spec.timeout is None
            else spec.timeout // timedelta(microseconds=1),
            "labels": dict(spec.labels),
        },
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def keep_end(text: str, max_bytes: int) -> str:
    """`text` if it fits in `max_bytes` of UTF-8, else its end behind a line saying how
    many bytes were cut."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    # The marker states the count cut, so reserve room for the longest it can be.
    room = max_bytes - len(_cut_marker(len(data)).encode())
    end = data[len(data) - room :].decode(errors="ignore")  # drops a split character
    return _cut_marker(len(data) - len(end.encode())) + end


def _cut_marker(cut_bytes: int) -> str:
    return f"[first {cut_bytes} bytes cut]\n"


class SqlJobStore:
    """A `JobStore` over any `Database` driver."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Clock = utc_now,
        retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._db = db
        self._clock = clock
        self._retry_policy = retry_policy
        self._limits = limits

    @property
    def changes(self) -> StoreChanges | None:
        return None

    @classmethod
    async def _migrated(cls, db: Database, where: str, *, clock: Clock, **options: Any) -> Self:
        """The store over `db` with its schema brought up to date in one write
        transaction, if it lacks a migration; the driver is closed if that fails, so a
        failed open leaks nothing."""
        try:
            applied: list[int] = []
            if await db.read(lacks_migrations):
                applied = await db.transaction(
                    functools.partial(apply_migrations, now_us=to_us(clock()))
                )
        except BaseException:
            await db.close()
            raise
        if applied:
            log.info("applied schema migrations %s to %s", applied, where)
        return cls(db, clock=clock, **options)

    # ---- clients -------------------------------------------------------------------

    async def create_job(self, spec: JobSpec) -> Submitted:
        payload = validate_spec(spec, self._limits)
        (submitted,) = await self._create([(spec, request_hash(spec), _text_bytes(spec, payload))])
        return submitted

    async def create_jobs(self, specs: Sequence[JobSpec]) -> list[Submitted]:
        if not 1 <= len(specs) <= MAX_BATCH_SIZE:
            raise InvalidArgument(
                "requests", f"must hold between 1 and {MAX_BATCH_SIZE} jobs, got {len(specs)}"
            )
        prepared = []
        for index, spec in enumerate(specs):
            try:
                payload = validate_spec(spec, self._limits)
            except InvalidArgument as error:
                raise InvalidArgument(
                    f"requests[{index}].{error.field}", error.description
                ) from None
            prepared.append((spec, request_hash(spec), _text_bytes(spec, payload)))
        return await self._create(prepared)

    async def _create(self, prepared: list[tuple[JobSpec, str, int]]) -> list[Submitted]:
        """New jobs go in as few INSERT statements as their size allows (one, nearly
        always). Idempotency keys, or more than one statement, need a transaction: the
        keys' read and the insert must see the same database."""
        keys = [spec.idempotency_key for spec, _, _ in prepared if spec.idempotency_key is not None]
        # Escaping at most doubles a text inside the row's JSON.
        size = sum(2 * text_bytes + ROW_BYTES for _, _, text_bytes in prepared)

        async def create(tx: Tx) -> list[Submitted]:
            now = self._clock()
            known: dict[str, Row] = {}
            if keys:
                rows = await tx.execute(
                    tx.sql.SELECT_JOBS_BY_IDEMPOTENCY_KEYS, {"keys": dump_json(keys)}
                )
                known = {row["idempotency_key"]: row for row in rows}
            out: list[Submitted] = []

            def new_rows() -> Iterator[str]:
                for spec, digest, _ in prepared:
                    key = spec.idempotency_key
                    if key is not None and key in known:
                        row = known[key]
                        if row["request_hash"] != digest:
                            raise AlreadyExists(
                                f"idempotency_key {key!r} was already used for "
                                f"a different request (job {row['id']}); use a new key"
                            )
                        out.append(Submitted(job_from_row(row), created=False))
                        continue
                    job, kind = jobs.submit(spec, job_id=new_id(), now=now)
                    row = {**job_to_row(job), "request_hash": digest, "event_kind": kind.value}
                    if key is not None:
                        known[key] = row  # a repeat of the key later in this batch finds it
                    out.append(Submitted(job, created=True))
                    yield dump_json([row[column] for column in tx.sql.INSERT_JOBS_COLUMNS])

            for chunk in json_arrays(new_rows(), max_bytes=MAX_ARGUMENT_BYTES):
                await tx.execute(tx.sql.INSERT_JOBS, {"jobs": chunk})
            return out

        if keys or (len(prepared) > 1 and size > MAX_ARGUMENT_BYTES):
            return await self._db.transaction(create)
        return await self._db.write(create, small=len(prepared) == 1)

    async def get_job(self, job_id: str) -> Job:
        job_id = parse_id(job_id)

        async def get(tx: Tx) -> Job:
            job, _ = await _load(tx, job_id)
            if job.state is JobState.PENDING:
                positions = await _queue_positions(tx, [job_id], to_us(self._clock()))
                return _with_position(job, positions)
            return job

        return await self._db.read(get, small=True)

    async def list_jobs(
        self, *, job_filter: JobFilter, page_size: int = 0, page_token: str = ""
    ) -> JobPage:
        limit = effective_page_size(page_size)
        cursor = decode_token(page_token, job_filter)
        for job_type in job_filter.types:
            validate_type(job_type, field="filter.types")
        validate_labels(job_filter.labels, field="filter.labels")
        params = {
            "states": dump_json(sorted(job_filter.states)) if job_filter.states else None,
            "types": dump_json(sorted(job_filter.types)) if job_filter.types else None,
            "labels": dump_json(job_filter.labels) if job_filter.labels else None,
            "before_id": cursor.before_id if cursor else None,
            "limit": limit + 1,
        }

        async def list_page(tx: Tx) -> JobPage:
            rows = await tx.execute(tx.sql.LIST_JOBS, params)
            # Capped by count and by bytes; the token continues after the last job sent.
            taken = rows_on_page(rows, limit)
            page = [job_from_row(row) for row in rows[:taken]]
            positions = await _queue_positions(
                tx, [j.id for j in page if j.state is JobState.PENDING], to_us(self._clock())
            )
            page = [_with_position(j, positions) for j in page]
            token = ""
            if len(rows) > taken:
                token = encode_token(PageCursor(page[-1].id, job_filter.fingerprint()))
            return JobPage(jobs=page, next_page_token=token)

        return await self._db.read(list_page)

    async def cancel_job(self, job_id: str, *, reason: str = "") -> Job:
        job_id = parse_id(job_id)
        validate_reason(reason)

        async def cancel(tx: Tx) -> Job:
            job, version = await _load(tx, job_id)
            change = jobs.request_cancel(job, reason=reason, now=self._clock())
            return job if change is None else await _save(tx, change, version)

        return await self._db.change(cancel, small=True)

    async def retry_job(self, job_id: str) -> Job:
        job_id = parse_id(job_id)

        async def retry(tx: Tx) -> Job:
            job, version = await _load(tx, job_id)
            return await _save(tx, jobs.retry(job, now=self._clock()), version)

        return await self._db.change(retry, small=True)

    async def queue_positions(self, job_ids: Sequence[str]) -> dict[str, int]:
        ids = [parse_id(job_id) for job_id in job_ids]
        if not ids:
            return {}

        async def positions(tx: Tx) -> dict[str, int]:
            return await _queue_positions(tx, ids, to_us(self._clock()))

        return await self._db.read(positions)

    # ---- workers -------------------------------------------------------------------

    async def claim_jobs(
        self, *, worker_id: str, types: Sequence[str], limit: int, lease_timeout: timedelta
    ) -> list[Job]:
        if limit < 0:
            raise InvalidArgument("limit", f"must not be negative, got {limit}")
        if lease_timeout <= timedelta(0):
            raise InvalidArgument("lease_timeout", f"must be positive, got {lease_timeout}")
        for job_type in types:
            validate_type(job_type, field="types")
        if limit == 0 or not types:
            return []
        types_json = dump_json(sorted(set(types)))

        async def claim(tx: Tx) -> list[Job]:
            now_us = to_us(self._clock())
            rows = await tx.execute(
                tx.sql.CLAIM_JOBS,
                {
                    "worker_id": worker_id,
                    "types": types_json,
                    "limit": limit,
                    "now_us": now_us,
                    "lease_expire_us": now_us + lease_timeout // timedelta(microseconds=1),
                },
            )
            return sorted(
                (job_from_row(row) for row in rows),
                key=lambda j: (-j.priority, j.run_after, j.create_time, j.id),
            )

        return await self._db.write(claim, small=limit <= SMALL_BATCH)

    async def has_claimable_jobs(self, *, types: Sequence[str]) -> bool:
        for job_type in types:
            validate_type(job_type, field="types")
        if not types:
            return False
        params = {"types": dump_json(sorted(set(types)))}

        async def probe(tx: Tx) -> bool:
            rows = await tx.execute(
                tx.sql.HAS_CLAIMABLE_JOBS, {**params, "now_us": to_us(self._clock())}
            )
            return bool(rows[0]["claimable"])

        return await self._db.read(probe, small=True)

    async def heartbeat_job(
        self, *, job_id: str, lease_id: str, lease_timeout: timedelta
    ) -> HeartbeatAck:
        acks = await self.heartbeat_jobs({job_id: lease_id}, lease_timeout=lease_timeout)
        if job_id not in acks:
            raise LeaseLost(job_id, lease_id)
        return acks[job_id]

    async def heartbeat_jobs(
        self, leases: Mapping[str, str], *, lease_timeout: timedelta
    ) -> dict[str, HeartbeatAck]:
        if lease_timeout <= timedelta(0):
            raise InvalidArgument("lease_timeout", f"must be positive, got {lease_timeout}")
        if len(leases) > MAX_BATCH_SIZE:
            raise InvalidArgument("leases", f"at most {MAX_BATCH_SIZE} per call, got {len(leases)}")
        if not leases:
            return {}
        held = dump_json([[job_id, lease_id] for job_id, lease_id in leases.items()])

        async def heartbeat(tx: Tx) -> dict[str, HeartbeatAck]:
            expire_us = to_us(self._clock()) + lease_timeout // timedelta(microseconds=1)
            rows = await tx.execute(
                tx.sql.HEARTBEAT_JOBS, {"leases": held, "lease_expire_us": expire_us}
            )
            return {
                row["id"]: HeartbeatAck(
                    cancel_requested=bool(row["cancel_requested"]),
                    lease_expire_time=from_us(row["lease_expire_us"]),
                )
                for row in rows
            }

        return await self._db.write(heartbeat, small=len(leases) <= SMALL_BATCH)

    async def report_progress(self, *, job_id: str, lease_id: str, progress: Progress) -> Job:
        validate_progress(progress)
        params = {
            "id": job_id,
            "lease_id": lease_id,
            # Events keep 15 significant digits of a REAL (SQLite's JSON): rounded here,
            # the row and its event hold the same number.
            "percent": round(progress.percent, PROGRESS_DECIMALS),
            "stage": progress.stage,
            "message": progress.message,
        }

        async def report(tx: Tx) -> Job:
            rows = await tx.execute(
                tx.sql.REPORT_PROGRESS, {**params, "now_us": to_us(self._clock())}
            )
            if not rows:
                raise LeaseLost(job_id, lease_id)
            return job_from_row(rows[0])

        return await self._db.write(report, small=True)

    async def complete_job(self, *, job_id: str, lease_id: str, result: Mapping[str, Any]) -> Job:
        rows = await self._complete([Completion(job_id, lease_id, result)])
        if not rows:
            raise LeaseLost(job_id, lease_id)
        return job_from_row(rows[0])

    async def complete_jobs(self, completions: Sequence[Completion]) -> list[bool]:
        rows = await self._complete(completions)
        recorded = {(row["id"], row["lease_id"]) for row in rows}
        return [(c.job_id, c.lease_id) in recorded for c in completions]

    async def _complete(self, completions: Sequence[Completion]) -> list[Row]:
        if len(completions) > MAX_BATCH_SIZE:
            raise InvalidArgument(
                "completions", f"at most {MAX_BATCH_SIZE} per call, got {len(completions)}"
            )
        if len(completions) == 1:
            (completion,) = completions
            params = {
                "job_id": completion.job_id,
                "lease_id": completion.lease_id,
                "result": encode_json(
                    completion.result, field="result", max_bytes=self._limits.max_payload_bytes
                ),
            }

            async def complete_one(tx: Tx) -> list[Row]:
                return await tx.execute(
                    tx.sql.COMPLETE_JOB, {**params, "now_us": to_us(self._clock())}
                )

            return await self._db.write(complete_one, small=True)
        batch = []
        for index, completion in enumerate(completions):
            encoded = encode_json(
                completion.result,
                field=f"completions[{index}].result",
                max_bytes=self._limits.max_payload_bytes,
            )
            batch.append(dump_json([completion.job_id, completion.lease_id, encoded]))
        rows: list[Row] = []
        # Each completion stands alone, so a batch too big for one statement is several.
        for chunk in json_arrays(batch, max_bytes=MAX_ARGUMENT_BYTES):

            async def complete(tx: Tx, chunk: str = chunk) -> list[Row]:
                return await tx.execute(
                    tx.sql.COMPLETE_JOBS, {"completions": chunk, "now_us": to_us(self._clock())}
                )

            rows += await self._db.write(complete, small=len(batch) <= SMALL_BATCH)
        return rows

    async def fail_job(
        self,
        *,
        job_id: str,
        lease_id: str,
        error: JobError,
        retry_policy: RetryPolicy | None = None,
        max_attempts: int | None = None,
    ) -> Job:
        error = JobError(
            code=error.code[:MAX_ERROR_CODE_LENGTH] or jobs.ErrorCode.HANDLER_ERROR,
            message=error.message[:MAX_ERROR_MESSAGE_LENGTH],
            retryable=error.retryable,
            details=keep_end(error.details, MAX_ERROR_DETAILS_BYTES),
        )
        return await self._fenced(
            job_id,
            lease_id,
            lambda job, now: jobs.fail(
                job,
                error,
                now=now,
                policy=retry_policy or self._retry_policy,
                max_attempts=max_attempts,
            ),
        )

    async def record_cancelled(self, *, job_id: str, lease_id: str) -> Job:
        return await self._fenced(
            job_id, lease_id, lambda job, now: jobs.confirm_cancelled(job, now=now)
        )

    async def time_out_job(
        self,
        *,
        job_id: str,
        lease_id: str,
        retry_policy: RetryPolicy | None = None,
        max_attempts: int | None = None,
        attempt_timeout: timedelta | None = None,
    ) -> Job:
        return await self._fenced(
            job_id,
            lease_id,
            lambda job, now: jobs.time_out(
                job,
                now=now,
                policy=retry_policy or self._retry_policy,
                max_attempts=max_attempts,
                attempt_timeout=attempt_timeout,
            ),
        )

    async def release_job(self, *, job_id: str, lease_id: str) -> Job:
        return await self._fenced(job_id, lease_id, lambda job, now: jobs.release(job, now=now))

    async def list_cancel_requests(self, *, worker_id: str) -> list[str]:

        async def requests(tx: Tx) -> list[str]:
            rows = await tx.execute(tx.sql.CANCEL_REQUESTS, {"worker_id": worker_id})
            return [row["id"] for row in rows]

        return await self._db.read(requests, small=True)

    async def _fenced(
        self, job_id: str, lease_id: str, change: Callable[[Job, datetime], jobs.Change]
    ) -> Job:
        """Apply a worker's change only if it still holds the job's lease."""

        async def write(tx: Tx) -> Job:
            rows = await tx.execute(tx.sql.SELECT_JOB, {"id": job_id})
            job = job_from_row(rows[0]) if rows else None
            if job is None or job.state is not JobState.RUNNING or job.lease_id != lease_id:
                raise LeaseLost(job_id, lease_id)
            return await _save(tx, change(job, self._clock()), rows[0]["version"])

        return await self._db.change(write, small=True)

    async def register_worker(self, info: WorkerInfo) -> Worker:
        for name, value in (("name", info.name), ("host", info.host)):
            if not value or len(value) > MAX_WORKER_TEXT_LENGTH:
                raise InvalidArgument(
                    name, f"must be 1 to {MAX_WORKER_TEXT_LENGTH} characters, got {len(value)}"
                )
        if info.concurrency < 1:
            raise InvalidArgument("concurrency", f"must be at least 1, got {info.concurrency}")
        for job_type in info.job_types:
            validate_type(job_type, field="job_types")
        params = {
            "id": new_id(),
            "name": info.name,
            "host": info.host,
            "pid": info.pid,
            "job_types": dump_json(sorted(set(info.job_types))),
            "concurrency": info.concurrency,
        }

        async def register(tx: Tx) -> Worker:
            rows = await tx.execute(
                tx.sql.INSERT_WORKER, {**params, "now_us": to_us(self._clock())}
            )
            return worker_from_row(rows[0])

        return await self._db.write(register)

    async def heartbeat_worker(self, worker_id: str) -> Worker:
        return await self._update_worker("HEARTBEAT_WORKER", worker_id, {})

    async def drain_worker(self, worker_id: str) -> Worker:
        return await self._update_worker(
            "SET_WORKER_STATE", worker_id, {"state": WorkerState.DRAINING.value}
        )

    async def deregister_worker(self, worker_id: str) -> Worker:
        return await self._update_worker(
            "SET_WORKER_STATE", worker_id, {"state": WorkerState.STOPPED.value}
        )

    async def _update_worker(
        self, statement: str, worker_id: str, params: dict[str, Any]
    ) -> Worker:
        """`statement` names the dialect's statement to run."""

        async def update(tx: Tx) -> Worker:
            rows = await tx.execute(
                getattr(tx.sql, statement),
                {**params, "id": worker_id, "now_us": to_us(self._clock())},
            )
            if not rows:
                raise WorkerNotFound(worker_id)
            return worker_from_row(rows[0])

        return await self._db.write(update, small=True)

    async def list_workers(self, *, include_stopped: bool = False) -> list[Worker]:
        async def list_all(tx: Tx) -> list[Worker]:
            rows = await tx.execute(
                tx.sql.SELECT_WORKERS, {"include_stopped": int(include_stopped)}
            )
            ids = [row["id"] for row in rows]
            running: dict[str, list[str]] = {}
            if ids:
                for job_row in await tx.execute(
                    tx.sql.RUNNING_JOBS_BY_WORKER, {"ids": dump_json(ids)}
                ):
                    running.setdefault(job_row["worker_id"], []).append(job_row["id"])
            return [worker_from_row(row, tuple(running.get(row["id"], ()))) for row in rows]

        return await self._db.read(list_all)

    async def served_job_types(self) -> frozenset[str]:
        async def served(tx: Tx) -> frozenset[str]:
            return frozenset(row["job_type"] for row in await tx.execute(tx.sql.SERVED_JOB_TYPES))

        return await self._db.read(served)

    # ---- events --------------------------------------------------------------------

    async def list_events(
        self, *, after_sequence: int, limit: int = 1000, job_id: str | None = None
    ) -> list[JobEvent]:
        if after_sequence < 0:
            raise InvalidArgument("after_sequence", f"must not be negative, got {after_sequence}")
        params: dict[str, Any] = {
            "after_seq": after_sequence,
            "limit": max(1, min(limit, MAX_EVENTS_PER_READ)),
        }
        if job_id is not None:
            params["job_id"] = parse_id(job_id)

        async def read(tx: Tx) -> list[JobEvent]:
            statement = tx.sql.SELECT_EVENTS if job_id is None else tx.sql.SELECT_JOB_EVENTS
            return [event_from_row(row) for row in await tx.execute(statement, params)]

        return await self._db.read(read)

    async def list_events_of_jobs(
        self,
        job_ids: Sequence[str],
        *,
        after_sequence: int,
        through_sequence: int,
        limit: int = 1000,
    ) -> list[JobEvent]:
        if after_sequence < 0:
            raise InvalidArgument("after_sequence", f"must not be negative, got {after_sequence}")
        ids = sorted({parse_id(job_id) for job_id in job_ids})
        if not ids or through_sequence <= after_sequence:
            return []
        params: dict[str, Any] = {
            "ids": dump_json(ids),
            "after_seq": after_sequence,
            "through_seq": through_sequence,
            "limit": max(1, min(limit, MAX_EVENTS_PER_READ)),
        }

        async def read(tx: Tx) -> list[JobEvent]:
            rows = await tx.execute(tx.sql.SELECT_EVENTS_OF_JOBS, params)
            return [event_from_row(row) for row in rows]

        return await self._db.read(read)

    async def last_sequence(self, *, job_id: str | None = None) -> int:
        params = {} if job_id is None else {"job_id": parse_id(job_id)}

        async def last(tx: Tx) -> int:
            statement = tx.sql.LAST_SEQUENCE if job_id is None else tx.sql.LAST_JOB_SEQUENCE
            return int((await tx.execute(statement, params))[0]["seq"])

        return await self._db.read(last, small=job_id is None)

    async def latest_events(self, job_ids: Sequence[str]) -> dict[str, JobEvent]:
        ids = sorted({parse_id(job_id) for job_id in job_ids})
        if not ids:
            return {}

        async def latest(tx: Tx) -> dict[str, JobEvent]:
            rows = await tx.execute(tx.sql.LATEST_JOB_EVENTS, {"ids": dump_json(ids)})
            events = {row["job_id"]: event_from_row(row) for row in rows}
            pending = [i for i, e in events.items() if e.job.state is JobState.PENDING]
            positions = await _queue_positions(tx, pending, to_us(self._clock()))
            return {
                job_id: dataclasses.replace(event, job=_with_position(event.job, positions))
                for job_id, event in events.items()
            }

        return await self._db.read(latest)

    async def count_jobs_by_state(self) -> dict[JobState, int]:
        async def count(tx: Tx) -> dict[JobState, int]:
            counts = dict.fromkeys(JobState, 0)
            for row in await tx.execute(tx.sql.COUNT_JOBS_BY_STATE):
                counts[JobState(row["state"])] = int(row["jobs"])
            return counts

        return await self._db.read(count)

    # ---- housekeeping --------------------------------------------------------------

    async def reap(self, *, limit: int = 500) -> ReapResult:
        async def reap(tx: Tx) -> ReapResult:
            now = self._clock()
            result = ReapResult()
            rows = await tx.execute(tx.sql.REAPABLE_JOBS, {"now_us": to_us(now), "limit": limit})
            for row in rows:
                change = jobs.reap(
                    job_from_row(row),
                    worker_gone=bool(row["worker_gone"]),
                    now=now,
                    policy=self._retry_policy,
                )
                if change is None:
                    continue
                try:
                    saved = await _save(tx, change, row["version"])
                except Conflict:
                    # Another reaper, or the worker, moved it first: each row stands
                    # alone, and the next pass looks at it again.
                    continue
                bucket = {
                    JobState.PENDING: result.retried,
                    JobState.FAILED: result.failed,
                    JobState.CANCELLED: result.cancelled,
                }[saved.state]
                bucket.append(saved.id)
            return result

        return await self._db.change(reap)

    async def mark_lost_workers(self, *, silent_for: timedelta) -> list[str]:
        async def mark(tx: Tx) -> list[str]:
            cutoff = to_us(self._clock() - silent_for)
            return [
                row["id"]
                for row in await tx.execute(tx.sql.MARK_LOST_WORKERS, {"cutoff_us": cutoff})
            ]

        return await self._db.write(mark)

    async def prune(self, *, older_than: timedelta, limit: int = 1000) -> PruneResult:
        async def prune(tx: Tx) -> PruneResult:
            cutoff = to_us(self._clock() - older_than)
            ids = [
                row["id"]
                for row in await tx.execute(
                    tx.sql.PRUNABLE_JOB_IDS, {"cutoff_us": cutoff, "limit": limit}
                )
            ]
            events = jobs_deleted = 0
            if ids:
                ids_json = dump_json(ids)
                events = len(await tx.execute(tx.sql.DELETE_EVENTS_OF_JOBS, {"ids": ids_json}))
                jobs_deleted = len(await tx.execute(tx.sql.DELETE_JOBS, {"ids": ids_json}))
            workers = len(await tx.execute(tx.sql.DELETE_OLD_WORKERS, {"cutoff_us": cutoff}))
            return PruneResult(jobs=jobs_deleted, events=events, workers=workers)

        return await self._db.transaction(prune)

    async def ping(self) -> None:

        async def ping(tx: Tx) -> None:
            await tx.execute(tx.sql.PING)

        await self._db.read(ping, small=True)

    async def close(self) -> None:
        await self._db.close()


def _text_bytes(spec: JobSpec, payload: str) -> int:
    """The free text a submission puts in its row, in UTF-8 bytes at most."""
    return 4 * (len(payload) + len(dump_json(spec.labels)) + len(spec.idempotency_key or ""))


async def _load(tx: Tx, job_id: str) -> tuple[Job, int]:
    """The job and its row version, for an optimistic `_save`."""
    rows = await tx.execute(tx.sql.SELECT_JOB, {"id": job_id})
    if not rows:
        raise JobNotFound(job_id)
    return job_from_row(rows[0]), int(rows[0]["version"])


async def _save(tx: Tx, change: jobs.Change, version: int) -> Job:
    """Write a change (its event is appended by the trigger) if the row is unchanged."""
    job, kind = change
    saved = await tx.execute(
        tx.sql.UPDATE_JOB,
        {**job_to_row(job), "event_kind": kind.value, "expected_version": version},
    )
    if not saved:
        raise Conflict(job.id)
    return job


async def _queue_positions(tx: Tx, ids: list[str], now_us: int) -> dict[str, int]:
    if not ids:
        return {}
    rows = await tx.execute(tx.sql.QUEUE_POSITIONS, {"ids": dump_json(ids), "now_us": now_us})
    return {row["id"]: int(row["position"]) for row in rows}


def _with_position(job: Job, positions: Mapping[str, int]) -> Job:
    position = positions.get(job.id)
    if position is None:
        return job
    return dataclasses.replace(job, queue_position=position)
