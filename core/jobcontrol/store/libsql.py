"""The libSQL store (`JOB_STORE_BACKEND=turso`): remote sqld/Turso over Hrana, or the
embedded libSQL engine for a `file:` URL.

The embedded engine runs on the official `libsql` SDK. The SQL core runs unchanged: this
module only connects, adapts parameters (the SDK binds positional parameters only, and
SQLite numbers `:name` parameters by first appearance, so a tuple in that order binds
them) and holds transactions. Remote URLs go to `hrana.HranaDatabase`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import libsql

from jobcontrol.errors import StoreUnavailable
from jobcontrol.store.config import REMOTE_SCHEMES
from jobcontrol.store.core import Clock, SqlJobStore, utc_now
from jobcontrol.store.database import Database, Operation, Params, Row, run_blocking
from jobcontrol.store.hrana import HranaDatabase
from jobcontrol.store.sql import sqlite as sqlite_sql

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
    sql = sqlite_sql

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> list[Row]:
        cursor = _sdk(self._conn, sql, _positional(sql, params))
        rows = _fetchall(cursor)
        if not rows:
            return []
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in rows]


def _classify(error: Exception) -> str:
    text = str(error).lower()
    if any(marker in text for marker in _BUSY):
        return "busy"
    if any(marker in text for marker in _SQL_ERRORS):
        return "sql"
    return "unavailable"


class LibsqlFileDatabase:
    """Connection and transaction plumbing for an embedded libSQL file: every operation
    is a transaction on the one driver thread, as with SQLite."""

    def __init__(self, path: str, *, lock_wait: float = 30.0, retry_for: float = 5.0) -> None:
        self._path = path
        self._lock_wait = lock_wait
        self._retry_for = retry_for
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobcontrol-libsql")
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            try:
                conn = libsql.connect(self._path, isolation_level=None)
            except ValueError as error:
                raise _SdkError(str(error)) from error
            _sdk(conn, "PRAGMA journal_mode = WAL")
            # The SDK keeps the GIL while SQLite's busy handler waits, which would stall
            # the lock holder in this same process: fail fast and wait in Python instead.
            _sdk(conn, "PRAGMA busy_timeout = 0")
            self._conn = conn
        return self._conn

    def _discard_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # the connection is broken anyway
                log.debug("closing a failed libSQL connection", exc_info=True)

    def _run_sync(self, fn: Operation[T], write: bool) -> T:
        started = time.monotonic()
        delay = 0.002
        while True:
            try:
                conn = self._connection()
                _sdk(conn, "BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = run_blocking(fn(_LibsqlTx(conn)))
                    _sdk(conn, "COMMIT")
                except BaseException:
                    self._rollback_quietly(conn)
                    raise
                return result
            except _SdkError as error:
                kind = _classify(error)
                if kind == "sql":
                    raise LibsqlError(str(error)) from error
                if kind == "unavailable":
                    self._discard_connection()
                budget = self._lock_wait if kind == "busy" else self._retry_for
                if time.monotonic() - started >= budget:
                    raise StoreUnavailable(
                        f"libSQL store {self._path} is unavailable: {error}"
                    ) from error
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.05 if kind == "busy" else 0.5)

    def _rollback_quietly(self, conn: Any) -> None:
        try:
            if conn.in_transaction:
                _sdk(conn, "ROLLBACK")
        except _SdkError:
            self._discard_connection()

    async def _run(self, fn: Operation[T], *, write: bool) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_sync, fn, write)

    async def read(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, write=False)

    async def write(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, write=True)

    async def change(self, fn: Operation[T], *, small: bool = False) -> T:
        """In a transaction that holds the write lock from its first read: no Conflict."""
        return await self._run(fn, write=True)

    async def transaction(self, fn: Operation[T]) -> T:
        return await self._run(fn, write=True)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._discard_connection)
        self._executor.shutdown(wait=True)


class LibsqlJobStore(SqlJobStore):
    """The JobStore on libSQL: remote sqld/Turso, or an embedded (`file:`) database."""

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
        db: Database
        if url.startswith(REMOTE_SCHEMES):
            remote = HranaDatabase(
                url, auth_token=auth_token, lock_wait=lock_wait, retry_for=retry_for
            )
            db, where = remote, remote.where
        else:
            path = url.removeprefix("file:")
            db, where = LibsqlFileDatabase(path, lock_wait=lock_wait, retry_for=retry_for), path
        return await cls._migrated(db, where, clock=clock, **options)
