"""The PostgreSQL store (`JOB_STORE_BACKEND=postgres`), on psycopg 3 and its pools.

A small operation (a few rows by index: a claim, a completion batch, progress, a
heartbeat, a cancel) awaits its statements on the event loop, through psycopg's asyncio
pool: a hand-off to a thread and back cost more than such a statement. A larger one (a
submitted batch, the event tail, a listing, housekeeping) runs on a driver thread
through the synchronous pool, as the SQLite store runs it: building or decoding
thousands of rows on the loop held up every stream of the process for as long
(BENCHMARKS.md, "PostgreSQL on the event loop"). The one LISTEN connection per store is
asynchronous (`listen.py`).
Reads, single-statement writes and changes run statement by statement in autocommit,
one round trip each, as on a remote libSQL server; a change's fenced write raises
`Conflict` when its row moved, and the change runs again. Only `transaction` pays for
BEGIN and COMMIT.

`poll_only` is for a transaction-mode pooler such as PgBouncer: no LISTEN (it needs a
session) and no server-side prepared statements (they live in one server session).

Each session turns JIT compilation off. The store's statements are short, but one whose
estimated cost passes `jit_above_cost` (a queue position behind a large backlog, once
the table is analyzed) spent most of half a second compiling a plan that then ran in
under 50 ms. Behind a pooler a session setting would reach other clients' sessions, so
there it is left to the role (`ALTER ROLE ... SET jit = off`, docs/ops.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from jobcontrol.errors import StoreUnavailable
from jobcontrol.store.core import Clock, SqlJobStore, utc_now
from jobcontrol.store.database import Conflict, Operation, Params, Row, run_blocking
from jobcontrol.store.listen import PostgresListener
from jobcontrol.store.sql import postgres as postgres_sql

log = logging.getLogger(__name__)

T = TypeVar("T")

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")
# A transaction that lost to a concurrent one and is safe to run again: serialization
# failure, deadlock, and a unique key taken meanwhile (two submits of one idempotency
# key: the second, run again, finds the first's job).
_RETRY_TRANSACTION = (
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.UniqueViolation,
)
_TRANSACTION_ATTEMPTS = 5
_CONFLICT_ATTEMPTS = 20


@functools.lru_cache(maxsize=512)
def _pyformat(sql: str) -> str:
    """`:name` parameters as psycopg's `%(name)s` (and a literal % escaped)."""
    return _NAMED.sub(r"%(\1)s", sql.replace("%", "%%"))


class _PostgresTx:
    sql = postgres_sql

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._conn.cursor(row_factory=dict_row) as cursor:
            if params:
                await cursor.execute(_pyformat(sql), params)
            else:
                await cursor.execute(sql)
            if cursor.description is None:
                return []
            return list(await cursor.fetchall())


class _BlockingPostgresTx:
    """Statements on a driver thread: `execute` blocks there and never suspends, so the
    operation runs to its end with `run_blocking`."""

    sql = postgres_sql

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> list[Row]:
        with self._conn.cursor(row_factory=dict_row) as cursor:
            if params:
                cursor.execute(_pyformat(sql), params)
            else:
                cursor.execute(sql)
            if cursor.description is None:
                return []
            return list(cursor.fetchall())


class PostgresDatabase:
    """Connection and transaction plumbing for one PostgreSQL database."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        threads: int = 4,
        connect_timeout: float = 10.0,
        poll_only: bool = False,
    ) -> None:
        self.url = url
        self.poll_only = poll_only
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": "jobcontrol"}
        if poll_only:
            kwargs["prepare_threshold"] = None
        both: dict[str, Any] = {
            "min_size": 1,
            "kwargs": kwargs,
            "timeout": connect_timeout,
            "open": False,
        }
        self._pool = psycopg_pool.AsyncConnectionPool(
            url,
            max_size=pool_size,
            name="jobcontrol",
            configure=None if poll_only else _configure,
            **both,
        )
        self._blocking_pool = psycopg_pool.ConnectionPool(
            url,
            max_size=threads,
            name="jobcontrol-threads",
            configure=None if poll_only else _configure_blocking,
            **both,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="jobcontrol-postgres"
        )
        self._checking = False

    async def open(self) -> None:
        """Connect once directly first: the pool, failing, says only that it timed out,
        where the server's own answer names the cause (refused, no such database)."""
        try:
            first = await psycopg.AsyncConnection.connect(
                self.url, connect_timeout=round(self._pool.timeout)
            )
            await first.close()
            await self._pool.open(wait=True, timeout=self._pool.timeout)
            await self._in_thread(
                lambda: self._blocking_pool.open(wait=True, timeout=self._pool.timeout)
            )
        except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
            await self.close()
            cause = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise StoreUnavailable(
                f"PostgreSQL at {_redacted(self.url)} is unavailable: {cause}"
            ) from error

    async def _in_thread(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _on_loop(self, fn: Operation[T]) -> T:
        async with self._pool.connection() as conn:
            return await fn(_PostgresTx(conn))

    def _on_thread(self, fn: Operation[T], transaction: bool) -> T:
        with self._blocking_pool.connection() as conn:
            if transaction:
                with conn.transaction():
                    return run_blocking(fn(_BlockingPostgresTx(conn)))
            return run_blocking(fn(_BlockingPostgresTx(conn)))

    async def _run(self, fn: Operation[T], kind: str, *, small: bool = False) -> T:
        conflicts = 0
        attempts = 0
        while True:
            try:
                if small and kind != "transaction":
                    return await self._on_loop(fn)
                transaction = kind == "transaction"
                return await self._in_thread(functools.partial(self._on_thread, fn, transaction))
            except Conflict:
                conflicts += 1
                if conflicts >= _CONFLICT_ATTEMPTS:
                    raise
            except _RETRY_TRANSACTION:
                attempts += 1
                if kind != "transaction" or attempts >= _TRANSACTION_ATTEMPTS:
                    raise
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as error:
                # A restarted server leaves every pooled connection dead: have the pool
                # check its idle ones now rather than fail once per connection. A read
                # is safe to run again at once; a write may have been applied, so its
                # caller decides.
                await self._check_pool()
                attempts += 1
                if kind == "read" and attempts < 2 and isinstance(error, psycopg.OperationalError):
                    continue
                raise StoreUnavailable(
                    f"PostgreSQL at {_redacted(self.url)} is unavailable: {error}"
                ) from error

    async def _check_pool(self) -> None:
        if self._checking:
            return
        self._checking = True
        try:
            await self._pool.check()
            await self._in_thread(self._blocking_pool.check)
        except Exception:  # the server is down: the next call will say so
            log.debug("checking pooled PostgreSQL connections", exc_info=True)
        finally:
            self._checking = False

    async def read(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, "read", small=small)

    async def write(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, "write", small=small)

    async def change(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, "change", small=small)

    async def transaction(self, fn: Operation[T]) -> T:
        return await self._run(fn, "transaction")

    async def close(self) -> None:
        await self._pool.close()
        await self._in_thread(self._blocking_pool.close)
        self._executor.shutdown(wait=True)


# Run on each new pooled session (see the module docstring).
_SESSION_SETTINGS = "SET jit = off"


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute(_SESSION_SETTINGS)


def _configure_blocking(conn: psycopg.Connection[Any]) -> None:
    conn.execute(_SESSION_SETTINGS)


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1@", url)


class PostgresJobStore(SqlJobStore):
    """The JobStore on PostgreSQL (`JOB_STORE_BACKEND=postgres`)."""

    def __init__(self, db: PostgresDatabase, **options: Any) -> None:
        super().__init__(db, **options)
        self._listener = None if db.poll_only else PostgresListener(db.url, postgres_sql.CHANNEL)

    @property
    def changes(self) -> PostgresListener | None:
        return self._listener

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        clock: Clock = utc_now,
        pool_size: int = 8,
        poll_only: bool = False,
        **options: Any,
    ) -> PostgresJobStore:
        """Connect and migrate. `poll_only` for a transaction-mode pooler (module doc)."""
        db = PostgresDatabase(url, pool_size=pool_size, poll_only=poll_only)
        await db.open()
        return await cls._migrated(db, _redacted(url), clock=clock, **options)

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
        await super().close()
