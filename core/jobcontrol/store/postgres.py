"""The PostgreSQL store (`JOB_STORE_BACKEND=postgres`), on psycopg 3's asyncio pool.

Every statement is awaited on the event loop: no thread hop per call, which on this
driver cost more than the statement itself (BENCHMARKS.md, "PostgreSQL on the event
loop"). The one LISTEN connection per store is asynchronous too (`listen.py`).
Reads, single-statement writes and changes run statement by statement in autocommit,
one round trip each, as on a remote libSQL server; a change's fenced write raises
`Conflict` when its row moved, and the change runs again. Only `transaction` pays for
BEGIN and COMMIT.

`poll_only` is for a transaction-mode pooler such as PgBouncer: no LISTEN (it needs a
session) and no server-side prepared statements (they live in one server session).
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from jobcontrol.errors import StoreUnavailable
from jobcontrol.store.core import Clock, SqlJobStore, utc_now
from jobcontrol.store.database import Conflict, Operation, Params, Row
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


class PostgresDatabase:
    """Connection and transaction plumbing for one PostgreSQL database."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        connect_timeout: float = 10.0,
        poll_only: bool = False,
    ) -> None:
        self.url = url
        self.poll_only = poll_only
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": "jobcontrol"}
        if poll_only:
            kwargs["prepare_threshold"] = None
        self._pool = psycopg_pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            timeout=connect_timeout,
            open=False,
            name="jobcontrol",
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
        except (psycopg.Error, psycopg_pool.PoolTimeout) as error:
            await self._pool.close()
            cause = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise StoreUnavailable(
                f"PostgreSQL at {_redacted(self.url)} is unavailable: {cause}"
            ) from error

    async def _run(self, fn: Operation[T], kind: str) -> T:
        conflicts = 0
        attempts = 0
        while True:
            try:
                async with self._pool.connection() as conn:
                    if kind == "transaction":
                        async with conn.transaction():
                            return await fn(_PostgresTx(conn))
                    return await fn(_PostgresTx(conn))
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
        except Exception:  # the server is down: the next call will say so
            log.debug("checking pooled PostgreSQL connections", exc_info=True)
        finally:
            self._checking = False

    async def read(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, "read")

    async def write(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, "write")

    async def change(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, "change")

    async def transaction(self, fn: Operation[T]) -> T:
        return await self._run(fn, "transaction")

    async def close(self) -> None:
        await self._pool.close()


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
