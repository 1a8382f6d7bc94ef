"""The libSQL driver (`JOB_STORE_BACKEND=turso`) on the official `libsql` SDK.

`file:` URLs open the embedded libSQL engine; `libsql://`, `https://` and `http://` go
to a remote sqld/Turso over Hrana. The SQL core runs unchanged: this module only
connects, adapts parameters (the SDK binds positional parameters only, and SQLite
numbers `:name` parameters by first appearance, so a tuple in that order binds them) and
holds transactions.

A write is retried after a transient failure only if COMMIT was never sent: until then
the server rolls the transaction back with its stream, so running it again is safe.
Reads are always safe to retry. After a transport failure the connection is replaced,
so the store recovers when the database comes back without restarting the process.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import libsql

from jobcontrol.errors import StoreUnavailable
from jobcontrol.store.config import REMOTE_SCHEMES
from jobcontrol.store.core import Clock, SqlJobStore, utc_now
from jobcontrol.store.database import Params, Row

log = logging.getLogger(__name__)

T = TypeVar("T")

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")
# SQL mistakes are bugs and surface as they are; anything else from the SDK is the
# database being unreachable, busy, or refusing us.
_SQL_ERRORS = (
    "no such ",
    "syntax error",
    "constraint failed",
    "sqlite_constraint",
    "datatype mismatch",
    "misuse",
)
_BUSY = ("database is locked", "sqlite_busy", "database table is locked")


class LibsqlError(Exception):
    """A statement failed for a reason retrying will not fix."""


class _SdkError(Exception):
    """An error raised by the SDK (which raises plain ValueError for everything)."""


def _sdk(conn: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
    try:
        return conn.execute(sql, params)
    except ValueError as error:
        raise _SdkError(str(error)) from error


def _fetchall(cursor: Any) -> Any:
    try:
        return cursor.fetchall()
    except ValueError as error:
        raise _SdkError(str(error)) from error


@functools.lru_cache(maxsize=256)
def _parameter_names(sql: str) -> tuple[str, ...]:
    names: dict[str, None] = {}
    for match in _NAMED.finditer(sql):
        names.setdefault(match.group(1), None)
    return tuple(names)


def _positional(sql: str, params: Params) -> tuple[Any, ...]:
    if isinstance(params, Mapping):
        return tuple(params[name] for name in _parameter_names(sql))
    return tuple(params)


class _LibsqlTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.landed = False  # a write may have been applied: running again may not be safe

    def execute(self, sql: str, params: Params = ()) -> list[Row]:
        write = not sql.lstrip().upper().startswith("SELECT")
        try:
            cursor = _sdk(self._conn, sql, _positional(sql, params))
            rows = _fetchall(cursor)
        except _SdkError as error:
            # SQLITE_BUSY means the statement did not run (a failed statement is rolled
            # back whole); any other failure may have come after the server applied it.
            if write and _classify(error) != "busy":
                self.landed = True
            raise
        if write:
            self.landed = True
        if not rows:
            return []
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in rows]

    def executemany(self, sql: str, params: Sequence[Params]) -> None:
        for one in params:
            self.execute(sql, one)


def _classify(error: Exception) -> str:
    text = str(error).lower()
    if any(marker in text for marker in _BUSY):
        return "busy"
    if any(marker in text for marker in _SQL_ERRORS):
        return "sql"
    return "unavailable"


class LibsqlDatabase:
    """Connection and transaction plumbing for one libSQL database."""

    def __init__(
        self,
        url: str,
        *,
        auth_token: str | None = None,
        lock_wait: float = 30.0,
        retry_for: float = 5.0,
        operation_timeout: float = 30.0,
    ) -> None:
        self._url = url
        self._auth_token = auth_token
        self._lock_wait = lock_wait
        self._retry_for = retry_for
        self._operation_timeout = operation_timeout
        self.remote = url.startswith(REMOTE_SCHEMES)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobcontrol-libsql")
        self._conn: Any = None

    @property
    def where(self) -> str:
        """The database's address without credentials, for messages."""
        return re.sub(r"//[^@/]*@", "//", self._url)

    def _connection(self) -> Any:
        if self._conn is None:
            try:
                self._conn = self._connect()
            except ValueError as error:
                raise _SdkError(str(error)) from error
        return self._conn

    def _connect(self) -> Any:
        if self.remote:
            return libsql.connect(
                self._url, auth_token=self._auth_token or "", isolation_level=None
            )
        conn = libsql.connect(self._url.removeprefix("file:"), isolation_level=None)
        _sdk(conn, "PRAGMA journal_mode = WAL")
        # The SDK keeps the GIL while SQLite's busy handler waits, which would stall the
        # lock holder in this same process: fail fast and wait in Python instead.
        _sdk(conn, "PRAGMA busy_timeout = 0")
        return conn

    def _discard_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # the connection is broken anyway
                log.debug("closing a failed libSQL connection", exc_info=True)

    def _run_sync(
        self, fn: Callable[[_LibsqlTx], T], write: bool, atomic: bool, started: float
    ) -> T:
        """`started` is when the call was made: time spent queued behind other calls on
        the store's one thread counts against the retry budget, so during an outage a
        caller hears StoreUnavailable after `retry_for`, not after every call queued
        ahead of it has used up a budget of its own."""
        delay = 0.002
        # Remotely, reads and non-atomic writes skip BEGIN/COMMIT: each costs a round
        # trip, and those functions are correct statement by statement.
        transactional = not self.remote or (write and atomic)
        while True:
            commit_sent = False
            tx: _LibsqlTx | None = None
            try:
                conn = self._connection()
                if transactional:
                    _sdk(conn, "BEGIN IMMEDIATE" if write else "BEGIN")
                tx = _LibsqlTx(conn)
                try:
                    result = fn(tx)
                    if transactional:
                        commit_sent = True
                        _sdk(conn, "COMMIT")
                except BaseException:
                    if transactional and not commit_sent:
                        self._rollback_quietly(conn)
                    raise
                return result
            except _SdkError as error:
                kind = _classify(error)
                if kind == "sql":
                    raise LibsqlError(str(error)) from error
                if kind == "unavailable":
                    self._discard_connection()
                elapsed = time.monotonic() - started
                budget = self._lock_wait if kind == "busy" else self._retry_for
                # Once a write may have landed (COMMIT sent, or an autocommit write that
                # ran or failed other than busy) running it again could apply it twice.
                landed = commit_sent or (not transactional and tx is not None and tx.landed)
                if (write and landed) or elapsed >= budget:
                    raise StoreUnavailable(
                        f"libSQL store {self.where} is unavailable: {error}"
                    ) from error
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.05 if kind == "busy" else 0.5)

    def _rollback_quietly(self, conn: Any) -> None:
        try:
            if conn.in_transaction:
                _sdk(conn, "ROLLBACK")
        except _SdkError:
            self._discard_connection()

    async def run(
        self, fn: Callable[[Any], T], *, write: bool, atomic: bool = True, quick: bool = False
    ) -> T:
        """Always on the driver thread (`quick` is ignored): remotely every statement is a
        round trip, and the SDK holds the GIL while it waits for one."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(
            self._executor, self._run_sync, fn, write, atomic, time.monotonic()
        )
        try:
            return await asyncio.wait_for(future, self._operation_timeout)
        except TimeoutError:
            # The SDK has no request timeout: leave the stuck thread behind and start over
            # with a fresh connection on a fresh thread.
            self._executor.shutdown(wait=False)
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="jobcontrol-libsql"
            )
            self._conn = None
            raise StoreUnavailable(
                f"libSQL store {self.where} did not answer within {self._operation_timeout:g}s"
            ) from None

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._discard_connection)
        self._executor.shutdown(wait=True)


class LibsqlJobStore(SqlJobStore):
    """The JobStore on libSQL: embedded (`file:`) or remote sqld/Turso."""

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        auth_token: str | None = None,
        clock: Clock = utc_now,
        lock_wait: float = 30.0,
        retry_for: float = 5.0,
        **options: Any,
    ) -> LibsqlJobStore:
        db = LibsqlDatabase(url, auth_token=auth_token, lock_wait=lock_wait, retry_for=retry_for)
        return await cls._migrated(db, db.where, clock=clock, **options)
