"""The remote libSQL driver: sqld or Turso over Hrana 3 on HTTP, with `turso-serverless`.

Why this SDK: it is Turso's own pure-Python client, so a thread waiting for the network
releases the GIL. The `libsql` SDK holds the GIL for each round trip, which stops every
stream and RPC in the process for as long as the database takes to answer.

Round trips are what a remote store costs, so each operation kind runs in as few as the
protocol allows (see database.py): each statement of a read, a write or a change is one
HTTP request that opens a stream, runs the statement and closes the stream; a
transaction sends BEGIN with its first statement and COMMIT as the last request. A few
kept-alive connections, one per driver thread, serve a process's concurrent calls.

Retries: a request that never reached the server, a statement refused because the
database is busy (or sqld had no connection free for it), and a transaction rolled back
before COMMIT are run again, within a budget. A write whose answer was lost may have
been applied: it is reported as StoreUnavailable, never sent twice.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import random
import re
import select
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

from turso_serverless.protocol import ProtocolError, ServerError, decode_value, encode_value
from turso_serverless.session import Session

from jobcontrol.errors import StoreUnavailable
from jobcontrol.store.database import Conflict, Operation, Params, Row, run_blocking
from jobcontrol.store.sql import sqlite as sqlite_sql

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_CONFLICT_RETRIES = 5
# SQLite result codes that mean the database cannot serve us now, not that the
# statement is wrong (https://sqlite.org/rescode.html).
_UNAVAILABLE_CODES = ("READONLY", "IOERR", "FULL", "CANTOPEN", "CORRUPT", "NOTADB", "PERM")
_BUSY_CODES = ("BUSY", "LOCKED")
# A transaction that sqld rolled back (it holds one for at most a few seconds).
_ROLLED_BACK_CODES = ("TRANSACTION_TIMEOUT", "STREAM_EXPIRED")


class HranaError(Exception):
    """A statement failed for a reason retrying will not fix (a bug in the SQL)."""


class _Busy(Exception):
    """The statement did not run: the database is locked, or our transaction was rolled
    back under us. Running it again is safe."""


class _Unreachable(Exception):
    """The request failed in transit. `maybe_applied` when it may have reached the
    server: then a write in it may have been applied."""

    def __init__(self, message: str, *, maybe_applied: bool, refused: bool = False) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied
        self.refused = refused


class _Session(Session):  # type: ignore[misc]
    """The SDK's Hrana session on one kept-alive HTTP connection with a timeout. (The
    SDK's own transport opens a TCP connection per request, which costs a round trip
    each and runs out of ports at thousands of requests a second, and it waits forever
    for a server that stopped answering.) Pinned to turso-serverless 0.1.0: `_post` is
    the one method replaced."""

    def __init__(self, url: str, auth_token: str | None, timeout: float) -> None:
        super().__init__(url, auth_token)
        self._timeout = timeout
        self._http: http.client.HTTPConnection | None = None
        self._http_origin = ""
        self.reached_server = False

    def _post(self, path: str, body: dict[str, Any]) -> bytes:
        self.reached_server = False
        url = urlsplit(self._base_url + path)
        data = json.dumps(body, allow_nan=False).encode()
        try:
            conn = self._connection(url.scheme, url.netloc)
            conn.request("POST", url.path, body=data, headers=self._headers())
            self.reached_server = True
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as error:
            self._disconnect()
            self._reset_stream()
            raise _Unreachable(
                f"{error!r}" if not str(error) else str(error),
                maybe_applied=self.reached_server,
            ) from None
        if response.status != 200:
            # The server answered without running the request.
            self._reset_stream()
            message = raw.decode(errors="replace").strip()[:500]
            if response.status == 429:
                # sqld had no connection free for us within its wait (1 s by default):
                # busy, like a locked database, and run again on the same budget.
                raise _Busy(f"HTTP 429: {message}")
            raise _Unreachable(
                f"HTTP {response.status}: {message}",
                maybe_applied=False,
                refused=response.status in (401, 403),
            )
        return raw

    def _connection(self, scheme: str, origin: str) -> http.client.HTTPConnection:
        if self._http is not None and _closed_by_server(self._http):
            self._disconnect()
        if self._http is None or origin != self._http_origin:
            self._disconnect()
            secure = scheme in ("https", "wss")
            connection_class = http.client.HTTPSConnection if secure else http.client.HTTPConnection
            self._http = connection_class(origin, timeout=self._timeout)
            self._http.connect()
            self._http_origin = origin
        return self._http

    def _disconnect(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def close(self) -> None:
        super().close()
        self._disconnect()


def _closed_by_server(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection has been closed from the other end (the
    server restarted, say): it would swallow the next request and answer nothing, which
    looks like a write that may have been applied. An idle connection has nothing to
    read unless the peer closed it."""
    if conn.sock is None:
        return True
    readable, _, _ = select.select([conn.sock], [], [], 0)
    return bool(readable)


def _stmt(sql: str, params: Params) -> dict[str, Any]:
    stmt: dict[str, Any] = {"sql": sql, "want_rows": True}
    if isinstance(params, Mapping):
        stmt["named_args"] = [
            {"name": f":{name}", "value": encode_value(value)} for name, value in params.items()
        ]
    else:
        stmt["args"] = [encode_value(value) for value in params]
    return stmt


def _rows(result: Mapping[str, Any]) -> list[Row]:
    names = [column.get("name") or "" for column in result.get("cols") or ()]
    return [
        dict(zip(names, map(decode_value, row), strict=True)) for row in result.get("rows") or ()
    ]


def _raise_for(error: Mapping[str, Any] | None) -> None:
    """Turn a statement's error into the exception that says what to do about it."""
    error = error or {}
    code = str(error.get("code") or "")
    message = f"{error.get('message') or 'unknown error'} ({code or 'no code'})"
    bare = code.removeprefix("SQLITE_")
    if bare.startswith(_BUSY_CODES) or code in _ROLLED_BACK_CODES:
        raise _Busy(message)
    if bare.startswith(_UNAVAILABLE_CODES):
        raise _Unreachable(message, maybe_applied=False)
    raise HranaError(message)


def _is_read(sql: str) -> bool:
    return sql.lstrip()[:6].upper() == "SELECT"


class _Tx:
    """Statements on one session: each alone in a stream of its own, or, for a
    transaction, on one stream from BEGIN (sent with the first statement) to COMMIT."""

    sql = sqlite_sql

    def __init__(self, session: _Session, *, transaction: bool) -> None:
        self._session = session
        self._transaction = transaction
        self.begun = False
        self.committing = False

    async def execute(self, sql: str, params: Params = ()) -> list[Row]:
        stmt = _stmt(sql, params)
        if not self._transaction:
            results = self._pipeline([{"type": "execute", "stmt": stmt}, {"type": "close"}], sql)
            return self._result(results[0])
        if self.begun:
            return self._result(self._pipeline([{"type": "execute", "stmt": stmt}], sql)[0])
        steps = [
            {"stmt": {"sql": "BEGIN IMMEDIATE"}},
            {"stmt": stmt, "condition": {"type": "ok", "step": 0}},
        ]
        (result,) = self._pipeline([{"type": "batch", "batch": {"steps": steps}}], sql)
        self._check(result)
        batch = result["response"]["result"]
        errors = batch.get("step_errors") or [None, None]
        if errors[0] is not None:
            _raise_for(errors[0])
        self.begun = True
        if errors[1] is not None:
            _raise_for(errors[1])
        return _rows(batch["step_results"][1])

    def commit(self) -> None:
        if not self.begun:
            return
        self.committing = True
        results = self._pipeline(
            [{"type": "execute", "stmt": {"sql": "COMMIT"}}, {"type": "close"}], "COMMIT"
        )
        self.begun = False
        self._result(results[0])

    def abandon(self) -> None:
        """Roll back by closing the stream; if that fails the server rolls back when the
        stream expires."""
        if self.begun:
            self.begun = False
            try:
                self._session.execute_pipeline([{"type": "close"}], track_autocommit=False)
            except (_Unreachable, ProtocolError, ServerError):
                self._session._reset_stream()

    def _pipeline(self, requests: list[dict[str, Any]], sql: str) -> list[dict[str, Any]]:
        try:
            results: list[dict[str, Any]] = self._session.execute_pipeline(
                requests, track_autocommit=False
            )
            return results
        except _Unreachable as error:
            error.maybe_applied = error.maybe_applied and self._may_apply(sql)
            raise
        except (ProtocolError, ServerError) as error:
            self._session._reset_stream()
            raise _Unreachable(str(error), maybe_applied=self._may_apply(sql)) from None

    def _may_apply(self, sql: str) -> bool:
        """Whether this statement, once it reached the server, may have changed the
        database: in a transaction only COMMIT can."""
        return self.committing if self._transaction else not _is_read(sql)

    @staticmethod
    def _check(result: Mapping[str, Any]) -> None:
        if result.get("type") != "ok":
            _raise_for(result.get("error"))

    def _result(self, result: Mapping[str, Any]) -> list[Row]:
        self._check(result)
        return _rows(result["response"]["result"])


class HranaDatabase:
    """Connection and transaction plumbing for a remote sqld/Turso database."""

    def __init__(
        self,
        url: str,
        *,
        auth_token: str | None = None,
        lock_wait: float = 30.0,
        retry_for: float = 5.0,
        request_timeout: float = 10.0,
        connections: int = 8,
    ) -> None:
        self._url = url
        self._auth_token = auth_token or None
        self._lock_wait = lock_wait
        self._retry_for = retry_for
        self._request_timeout = request_timeout
        self._executor = ThreadPoolExecutor(
            max_workers=connections, thread_name_prefix="jobcontrol-hrana"
        )
        self._local = threading.local()
        self._sessions: list[_Session] = []
        self._sessions_lock = threading.Lock()

    @property
    def where(self) -> str:
        """The database's address without credentials, for messages."""
        return re.sub(r"//[^@/]*@", "//", self._url)

    def _session(self) -> _Session:
        session: _Session | None = getattr(self._local, "session", None)
        if session is None:
            session = _Session(self._url, self._auth_token, self._request_timeout)
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def _run_sync(self, fn: Operation[T], kind: str, queued_at: float) -> T:
        """`queued_at` is when the call was made: time spent waiting for a driver thread
        counts against the retry budget, so during an outage a caller hears
        StoreUnavailable after `retry_for`, not after every call ahead of it."""
        session = self._session()
        delay = 0.005
        conflicts = 0
        transaction = kind == "transaction"
        failure: Exception
        while True:
            tx = _Tx(session, transaction=transaction)
            try:
                result = run_blocking(fn(tx))
                tx.commit()
                return result
            except Conflict:
                conflicts += 1
                # Someone keeps changing the row between our read and write: take the
                # write lock for the whole change instead.
                transaction = conflicts >= MAX_CONFLICT_RETRIES
                continue
            except _Busy as error:
                budget, failure = self._lock_wait, error
            except _Unreachable as error:
                if error.refused or error.maybe_applied:
                    raise self._unavailable(error) from None
                budget, failure = self._retry_for, error
            finally:
                tx.abandon()
            if time.monotonic() - queued_at >= budget:
                raise self._unavailable(failure)
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 0.5)

    def _unavailable(self, error: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"libSQL store {self.where} is unavailable: {error}")

    async def _run(self, fn: Operation[T], kind: str) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, self._run_sync, fn, kind, time.monotonic()
        )

    async def read(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, "read")

    async def write(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, "write")

    async def change(self, fn: Operation[T], *, small: bool = False) -> T:
        return await self._run(fn, "change")

    async def transaction(self, fn: Operation[T]) -> T:
        return await self._run(fn, "transaction")

    def _close_sessions(self) -> None:
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._executor.shutdown, True)
        await loop.run_in_executor(None, self._close_sessions)
