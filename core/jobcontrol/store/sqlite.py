"""The SQLite driver: a local file in WAL mode, safe for many processes on one machine.

One connection per store, used by one thread at a time (the driver thread, or the event
loop's for a quick call while the driver thread is idle), and a transaction never spans
threads. Write transactions take the write lock up front (BEGIN IMMEDIATE): a deferred one that
upgrades later can fail with SQLITE_BUSY no matter how long it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from jobcontrol.errors import StoreUnavailable
from jobcontrol.store.core import Clock, SqlJobStore, utc_now
from jobcontrol.store.database import Operation, Params, Row, run_blocking
from jobcontrol.store.sql import sqlite as sqlite_sql

log = logging.getLogger(__name__)

T = TypeVar("T")

# Primary result codes (https://sqlite.org/rescode.html).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_RETRYABLE = frozenset({_SQLITE_BUSY, _SQLITE_LOCKED})
_UNAVAILABLE = frozenset(
    {
        3,  # PERM
        8,  # READONLY
        10,  # IOERR
        11,  # CORRUPT
        13,  # FULL
        14,  # CANTOPEN
        15,  # PROTOCOL
        26,  # NOTADB
    }
)


class _WouldWait(Exception):
    """A call that must not wait found the lock taken."""


class _SqliteTx:
    sql = sqlite_sql

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = ()) -> list[Row]:
        """Rows as dicts, as the libSQL drivers return them: a decode reads a job's
        columns by name, and sqlite3.Row finds a name by comparing it with each column's."""
        cursor = self._conn.execute(sql, params)
        rows = cursor.fetchall()
        if not rows:
            return []
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in rows]


class SqliteDatabase:
    """Connection and transaction plumbing for one SQLite file."""

    def __init__(
        self, path: str | Path, *, busy_timeout: float = 5.0, lock_wait: float = 30.0
    ) -> None:
        self._path = str(path)
        self._busy_timeout = busy_timeout
        self._lock_wait = lock_wait
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobcontrol-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._waits = True  # the connection's busy handler: on (busy_timeout) or off
        # Calls handed to the driver thread that it has not finished with. Counted by the
        # thread's own future, not by the awaiting task: a task cancelled meanwhile
        # stops waiting while the thread still uses the connection.
        self._in_thread = 0
        self._in_thread_lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self._path,
                timeout=self._busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
            self._waits = True
        return self._conn

    def _run_sync(self, fn: Operation[T], write: bool, *, wait: bool = True) -> T:
        """With `wait=False`, raise _WouldWait at once instead of waiting for a lock."""
        deadline = time.monotonic() + self._lock_wait
        delay = 0.002
        while True:
            try:
                return self._attempt(fn, write, wait)
            except sqlite3.Error as error:
                code = getattr(error, "sqlite_errorcode", 0) & 0xFF
                if code in _RETRYABLE and not wait:
                    raise _WouldWait from error
                if code in _RETRYABLE and time.monotonic() < deadline:
                    time.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, 0.1)
                    continue
                if code in _RETRYABLE or code in _UNAVAILABLE or self._conn is None:
                    self._discard_connection()
                    raise StoreUnavailable(
                        f"SQLite store {self._path} is unavailable: {error}"
                    ) from error
                raise

    def _attempt(self, fn: Operation[T], write: bool, wait: bool) -> T:
        conn = self._connection()
        if wait is not self._waits:
            timeout_ms = round(self._busy_timeout * 1000) if wait else 0
            conn.execute(f"PRAGMA busy_timeout = {timeout_ms}")
            self._waits = wait
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = run_blocking(fn(_SqliteTx(conn)))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _discard_connection(self) -> None:
        """Start over with a fresh connection next time: after an I/O error the old one
        may hold a stale view (a replaced or repaired file)."""
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                log.debug("closing a failed SQLite connection", exc_info=True)
            self._conn = None

    async def read(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, write=False, small=small)

    async def write(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, write=True, small=small)

    async def change(self, fn: Operation[T], *, small: bool = False) -> T:
        """In a transaction that holds the write lock from its first read, so the row
        cannot change under it (Conflict never happens here)."""
        return await self._run(fn, write=True, small=small)

    async def transaction(self, fn: Operation[T]) -> T:
        return await self._run(fn, write=True, small=False)

    async def _run(self, fn: Operation[T], *, write: bool, small: bool) -> T:
        """Always transactional: locally BEGIN/COMMIT cost nothing and serialize writers.

        A small operation runs right here on the event loop's thread when the driver
        thread is idle and the lock is free: handing it to the thread and back cost more
        than the statements (two thread switches per call, half of a claim+complete's
        time). If it would have to wait for the lock it goes to the thread, which waits;
        a statement or two on a few indexed rows holds the loop for well under a
        millisecond."""
        if small and not self._in_thread:
            with contextlib.suppress(_WouldWait):
                return self._run_sync(fn, write, wait=False)
        future = self._executor.submit(self._run_sync, fn, write)
        with self._in_thread_lock:
            self._in_thread += 1
        future.add_done_callback(self._left_thread)
        return await asyncio.wrap_future(future)

    def _left_thread(self, _: object) -> None:
        """The driver thread is done with a call (or it was cancelled before starting)."""
        with self._in_thread_lock:
            self._in_thread -= 1

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._discard_connection)
        self._executor.shutdown(wait=True)


class SqliteJobStore(SqlJobStore):
    """The JobStore on a local SQLite file (`JOB_STORE_BACKEND=local`)."""

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        clock: Clock = utc_now,
        busy_timeout: float = 5.0,
        lock_wait: float = 30.0,
        **options: Any,
    ) -> SqliteJobStore:
        """Open (creating if needed) and migrate the file. `lock_wait` bounds how long a
        transaction waits for other processes before StoreUnavailable."""
        db = SqliteDatabase(path, busy_timeout=busy_timeout, lock_wait=lock_wait)
        return await cls._migrated(db, str(path), clock=clock, **options)
