"""A Hrana 3 over HTTP (JSON) server on top of a local SQLite file, standing in for sqld.

sqld cannot be installed here, yet the libSQL store driver has to be tested against the real
network protocol (batons, streams, pipelines, error shapes), not a mock of the SDK. This module
implements the HTTP variant of tursodatabase/libsql `docs/HRANA_3_SPEC.md` with the standard
library only: `GET /v2`, `GET /v3`, `POST /v2/pipeline`, `POST /v3/pipeline` and `POST /v3/cursor`.

Every stream owns its own SQLite connection (WAL mode, busy timeout), so interactive transactions
span pipeline requests and streams from different clients block and serialize like real SQLite.

`describe` must not run the statement and the sqlite3 module cannot prepare without running, so
statements are also prepared through the C API (ctypes, on the stream's own connection) for
parameter names, declared column types and the read-only flag.

Run it as `python -m tests.hrana_server --db PATH [--listen 127.0.0.1:0] [--token TOKEN]`: it
prints `hrana listening on http://HOST:PORT` once ready and serves until SIGTERM/SIGINT. In tests:
`HranaServer(path, token="t").start()` runs it on threads (fine for urllib and other clients that
release the GIL); `HranaProcess(path, token="t").start()` runs the command above, which the
`libsql` SDK needs because it holds the GIL while waiting on the network. Both have `.url` and
`.stop()`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import ctypes
import hmac
import importlib
import json
import math
import os
import secrets
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

JsonObj = dict[str, Any]

#: Idle streams are rolled back and closed after this long, like sqld's 10 s stream expiry.
DEFAULT_IDLE_TIMEOUT = 10.0
#: How long a statement waits for another stream's lock before failing with SQLITE_BUSY.
DEFAULT_BUSY_TIMEOUT = 5.0
#: Request bodies larger than this are refused rather than buffered.
MAX_BODY_BYTES = 64 * 1024 * 1024
#: How many no-longer-valid batons are remembered, to say *why* a baton is refused.
RETIRED_BATONS_KEPT = 10_000

_SQLITE_PRIMARY_CODES = {
    1: "SQLITE_ERROR",
    2: "SQLITE_INTERNAL",
    3: "SQLITE_PERM",
    4: "SQLITE_ABORT",
    5: "SQLITE_BUSY",
    6: "SQLITE_LOCKED",
    7: "SQLITE_NOMEM",
    8: "SQLITE_READONLY",
    9: "SQLITE_INTERRUPT",
    10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT",
    12: "SQLITE_NOTFOUND",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    15: "SQLITE_PROTOCOL",
    16: "SQLITE_EMPTY",
    17: "SQLITE_SCHEMA",
    18: "SQLITE_TOOBIG",
    19: "SQLITE_CONSTRAINT",
    20: "SQLITE_MISMATCH",
    21: "SQLITE_MISUSE",
    22: "SQLITE_NOLFS",
    23: "SQLITE_AUTH",
    24: "SQLITE_FORMAT",
    25: "SQLITE_RANGE",
    26: "SQLITE_NOTADB",
}


# ---- errors --------------------------------------------------------------------------------


class HranaError(Exception):
    """A failed stream request: reported in the pipeline as `{"type": "error", "error": ...}`."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def to_json(self) -> JsonObj:
        return {"message": self.message, "code": self.code}


class HttpError(Exception):
    """Fails the whole HTTP request (bad auth, bad baton, bad body): the stream is unusable."""

    def __init__(self, status: HTTPStatus, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


def _sqlite_code_name(errorcode: int) -> str:
    return _SQLITE_PRIMARY_CODES.get(errorcode & 0xFF, "SQLITE_UNKNOWN")


def _sqlite_failure(message: str, errorcode: int | None) -> HranaError:
    """sqld's shape (`SQLite error: ...`, primary code name); busy and locked read the same."""
    code = _sqlite_code_name(errorcode) if errorcode is not None else "SQLITE_UNKNOWN"
    if code in ("SQLITE_BUSY", "SQLITE_LOCKED"):
        detail = "" if message == "database is locked" else f" ({message})"
        return HranaError(f"SQLite error: database is locked{detail}", "SQLITE_BUSY")
    return HranaError(f"SQLite error: {message}", code)


def _from_sqlite_exception(exc: sqlite3.Error) -> HranaError:
    errorcode: int | None = getattr(exc, "sqlite_errorcode", None)
    message = str(exc)
    if errorcode is not None:
        return _sqlite_failure(message, errorcode)
    # The sqlite3 module's own checks, raised before SQLite ever sees the statement.
    if "one statement at a time" in message:
        return HranaError("SQL string contains more than one statement", "SQL_MANY_STATEMENTS")
    if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return HranaError(f"Arguments do not match SQL parameters: {message}", "ARGS_INVALID")
    return HranaError(f"SQLite error: {message}", "SQLITE_UNKNOWN")


# ---- the C API, for what the sqlite3 module does not expose --------------------------------


@dataclass(frozen=True)
class _Described:
    """What preparing (never stepping) a statement tells us: the `describe` result."""

    params: list[str | None]
    cols: list[tuple[str, str | None]]
    is_explain: bool
    is_readonly: bool


class _CApi:
    """ctypes access to the very SQLite library the sqlite3 module uses.

    The sqlite3 module exposes neither parameter names, declared column types, the read-only
    flag nor `sqlite3_changes`, and `describe` must not execute the statement. We prepare it on
    the stream's own connection (so uncommitted schema changes are visible), read the metadata
    and finalize it.
    """

    def __init__(self) -> None:
        module_file = importlib.import_module("_sqlite3").__file__
        # dlsym on the extension module also searches the libsqlite3 it links against.
        lib = ctypes.CDLL(module_file)
        vp, cp, ci = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        self._sig(lib.sqlite3_libversion, [], cp)
        self._sig(lib.sqlite3_db_filename, [vp, cp], cp)
        self._sig(lib.sqlite3_prepare_v2, [vp, vp, ci, ctypes.POINTER(vp), ctypes.POINTER(vp)], ci)
        self._sig(lib.sqlite3_finalize, [vp], ci)
        self._sig(lib.sqlite3_errmsg, [vp], cp)
        self._sig(lib.sqlite3_extended_errcode, [vp], ci)
        self._sig(lib.sqlite3_bind_parameter_count, [vp], ci)
        self._sig(lib.sqlite3_bind_parameter_name, [vp, ci], cp)
        self._sig(lib.sqlite3_column_count, [vp], ci)
        self._sig(lib.sqlite3_column_name, [vp, ci], cp)
        self._sig(lib.sqlite3_column_decltype, [vp, ci], cp)
        self._sig(lib.sqlite3_stmt_readonly, [vp], ci)
        self._sig(lib.sqlite3_changes, [vp], ci)
        self._sig(lib.sqlite3_last_insert_rowid, [vp], ctypes.c_int64)
        self._has_isexplain = hasattr(lib, "sqlite3_stmt_isexplain")
        if self._has_isexplain:
            self._sig(lib.sqlite3_stmt_isexplain, [vp], ci)
        version = lib.sqlite3_libversion().decode()
        if version != sqlite3.sqlite_version:
            raise RuntimeError(f"libsqlite3 {version} is not the sqlite3 module's")
        self._lib = lib

    @staticmethod
    def _sig(fn: Any, argtypes: list[Any], restype: Any) -> None:
        fn.argtypes = argtypes
        fn.restype = restype

    def handle(self, conn: sqlite3.Connection, db_path: str) -> int | None:
        """The connection's `sqlite3 *`: CPython keeps it right after the object header.

        Checked against the database file name, so a different layout disables the C API for
        this connection rather than misbehaving.
        """
        if sys.implementation.name != "cpython":
            return None
        db = ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value
        if not db:
            return None
        name = self._lib.sqlite3_db_filename(db, b"main")
        if name is None or os.path.realpath(name.decode()) != os.path.realpath(db_path):
            return None
        return int(db)

    def describe(self, db: int, sql: str) -> _Described:
        buf = ctypes.create_string_buffer(sql.encode())
        size = len(buf.value)
        stmt, tail = self._prepare(db, ctypes.addressof(buf), size)
        try:
            if stmt.value is None:
                raise HranaError("SQL string does not contain any statement", "SQL_NO_STATEMENT")
            params = [
                _opt_str(self._lib.sqlite3_bind_parameter_name(stmt, i))
                for i in range(1, self._lib.sqlite3_bind_parameter_count(stmt) + 1)
            ]
            cols = [
                (
                    _opt_str(self._lib.sqlite3_column_name(stmt, i)) or "",
                    _opt_str(self._lib.sqlite3_column_decltype(stmt, i)),
                )
                for i in range(self._lib.sqlite3_column_count(stmt))
            ]
            is_explain = bool(self._has_isexplain and self._lib.sqlite3_stmt_isexplain(stmt))
            is_readonly = bool(self._lib.sqlite3_stmt_readonly(stmt))
        finally:
            self._lib.sqlite3_finalize(stmt)
        rest = size - (tail - ctypes.addressof(buf)) if tail else 0
        if tail and rest > 0 and self._has_statement(db, tail, rest):
            raise HranaError("SQL string contains more than one statement", "SQL_MANY_STATEMENTS")
        return _Described(params, cols, is_explain, is_readonly)

    def changes(self, db: int) -> int:
        return int(self._lib.sqlite3_changes(db))

    def last_insert_rowid(self, db: int) -> int:
        return int(self._lib.sqlite3_last_insert_rowid(db))

    def _prepare(self, db: int, address: int, size: int) -> tuple[ctypes.c_void_p, int | None]:
        """Compile the first statement at `address`; also returns where the next one starts."""
        stmt = ctypes.c_void_p()
        tail = ctypes.c_void_p()
        rc = self._lib.sqlite3_prepare_v2(db, address, size, ctypes.byref(stmt), ctypes.byref(tail))
        if rc != 0:
            message = _opt_str(self._lib.sqlite3_errmsg(db)) or "unknown error"
            raise _sqlite_failure(message, self._lib.sqlite3_extended_errcode(db))
        return stmt, tail.value

    def _has_statement(self, db: int, address: int, size: int) -> bool:
        """Whether anything but blanks, comments and semicolons is left after a statement."""
        try:
            stmt, _ = self._prepare(db, address, size)
        except HranaError:
            return True
        self._lib.sqlite3_finalize(stmt)
        return stmt.value is not None


def _opt_str(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode("utf-8", "replace")


def _load_capi() -> _CApi | None:
    try:
        return _CApi()
    except (OSError, AttributeError, RuntimeError, ImportError):
        return None


# ---- values and statements -----------------------------------------------------------------

SqlValue = None | int | float | str | bytes


def decode_value(value: Any) -> SqlValue:
    """A Hrana `Value` to a Python value bound by sqlite3."""
    if not isinstance(value, dict):
        raise HranaError(f"A value must be an object, got {value!r}", "PROTOCOL_ERROR")
    kind = value.get("type")
    try:
        if kind == "null":
            return None
        if kind == "integer":
            raw = value["value"]
            if isinstance(raw, bool) or not isinstance(raw, str | int):
                raise ValueError(raw)
            number = int(raw)
            if not -(2**63) <= number < 2**63:
                raise ValueError(raw)
            return number
        if kind == "float":
            raw = value["value"]
            if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                raise ValueError(raw)
            return float(raw)
        if kind == "text":
            text = value["value"]
            if not isinstance(text, str):
                raise ValueError(text)
            return text
        if kind == "blob":
            raw = value["base64"]
            if not isinstance(raw, str):
                raise ValueError(raw)
            raw = raw.rstrip("=")
            return base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (KeyError, ValueError, binascii.Error) as exc:
        raise HranaError(f"Invalid {kind} value: {value!r}", "PROTOCOL_ERROR") from exc
    raise HranaError(f"Unknown value type {kind!r}", "PROTOCOL_ERROR")


def encode_value(value: object) -> JsonObj:
    """A value read from SQLite to a Hrana `Value` (integers as strings, blobs as base64)."""
    if value is None:
        return {"type": "null"}
    if isinstance(value, int):
        return {"type": "integer", "value": str(value)}
    if isinstance(value, float):
        # JSON has no infinities; sqld's serde writes null there too (clients reject both).
        return {"type": "float", "value": value if math.isfinite(value) else None}
    if isinstance(value, str):
        return {"type": "text", "value": value}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"type": "blob", "base64": base64.b64encode(bytes(value)).decode().rstrip("=")}
    raise HranaError(f"Cannot encode {type(value).__name__}", "INTERNAL_ERROR")


def split_sql(sql: str) -> list[str]:
    """Split a script into statements, cutting only where SQLite says a statement is complete."""
    pieces: list[str] = []
    start = 0
    for i, char in enumerate(sql):
        if char == ";" and sqlite3.complete_statement(sql[start : i + 1]):
            pieces.append(sql[start : i + 1])
            start = i + 1
    if sql[start:].strip():
        pieces.append(sql[start:])
    return pieces


def _strip_prefix(name: str) -> str:
    return name[1:] if name[:1] in (":", "@", "$") else name


def _bind(
    stmt: JsonObj, params: list[str | None] | None
) -> Sequence[SqlValue] | dict[str, SqlValue]:
    """Bind `args` by position and `named_args` by name (prefix optional), as sqlite3 expects.

    With the statement's parameter names known, named arguments win over positional ones and a
    statement with only named parameters is bound by name (even from positional `args`).
    """
    raw_args = stmt.get("args") or []
    raw_named = stmt.get("named_args") or []
    if not isinstance(raw_args, list) or not isinstance(raw_named, list):
        raise HranaError("`args` and `named_args` must be arrays", "PROTOCOL_ERROR")
    args = [decode_value(v) for v in raw_args]
    named: dict[str, SqlValue] = {}
    for arg in raw_named:
        if not isinstance(arg, dict) or not isinstance(arg.get("name"), str):
            raise HranaError("A named argument needs a `name` and a `value`", "PROTOCOL_ERROR")
        named[_strip_prefix(arg["name"])] = decode_value(arg.get("value"))

    if params is None:  # no C API: let sqlite3 do what it can
        if args and named:
            raise HranaError(
                "Specifying both positional and named arguments is not supported",
                "ARGS_BOTH_POSITIONAL_AND_NAMED",
            )
        return named if named else args

    if len(args) > len(params):
        raise HranaError(
            f"Arguments do not match SQL parameters: {len(args)} positional arguments for "
            f"{len(params)} parameters",
            "ARGS_INVALID",
        )
    unknown = set(named) - {_strip_prefix(p) for p in params if p}
    if unknown:
        raise HranaError(
            f"Arguments do not match SQL parameters: no parameter named {sorted(unknown)}",
            "ARGS_INVALID",
        )
    values: list[SqlValue] = []
    for index, name in enumerate(params):
        key = _strip_prefix(name) if name else None
        if key is not None and key in named:
            values.append(named[key])
        elif index < len(args):
            values.append(args[index])
        else:
            raise HranaError(
                f"Arguments do not match SQL parameters: missing a value for parameter "
                f"{name or index + 1}",
                "ARGS_INVALID",
            )
    if params and all(params):
        # sqlite3 looks each parameter up by its name minus the first character (`:a` -> `a`,
        # `?2` -> `2`); binding by name also avoids Python 3.12+'s warning about sequences.
        return {p[1:]: v for p, v in zip(params, values, strict=True) if p}
    return values


# ---- streams -------------------------------------------------------------------------------


@dataclass(eq=False)
class _Stream:
    """One Hrana stream: a SQLite connection plus the SQL texts stored on it."""

    conn: sqlite3.Connection
    db: int | None
    sqls: dict[int, str] = field(default_factory=dict)
    closed: bool = False
    deadline: float = 0.0
    baton: str | None = None

    def close(self) -> None:
        """Roll back whatever the client left open, then close the connection."""
        try:
            if self.conn.in_transaction:
                self.conn.rollback()
        except sqlite3.Error:
            pass
        finally:
            self.conn.close()


class _Streams:
    """Batons to streams. A stream is either available (under its one current baton) or
    acquired by exactly one HTTP request, which is what forces clients to go one at a time."""

    def __init__(self, opener: Callable[[], _Stream], idle_timeout: float) -> None:
        self._opener = opener
        self._idle_timeout = idle_timeout
        self._lock = threading.Lock()
        self._available: dict[str, _Stream] = {}
        self._acquired: set[_Stream] = set()
        self._retired: OrderedDict[str, str] = OrderedDict()
        self._closing = False

    def acquire(self, baton: str | None) -> _Stream:
        if baton is None:
            with self._lock:
                if self._closing:
                    raise HttpError(
                        HTTPStatus.SERVICE_UNAVAILABLE, "The server is shutting down", "SHUTDOWN"
                    )
            try:
                stream = self._opener()
            except sqlite3.Error as exc:
                raise HttpError(
                    HTTPStatus.INTERNAL_SERVER_ERROR,
                    f"Could not open the database: {exc}",
                    "DATABASE_UNAVAILABLE",
                ) from exc
            with self._lock:
                self._acquired.add(stream)
            return stream
        with self._lock:
            found = self._available.pop(baton, None)
            if found is not None:
                self._retire(baton, "reused")
                self._acquired.add(found)
                return found
            why = self._retired.get(baton)
        if why == "expired":
            raise HttpError(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "The stream has expired due to inactivity",
                "STREAM_EXPIRED",
            )
        if why == "reused":
            raise HttpError(
                HTTPStatus.BAD_REQUEST,
                "The baton has already been used: requests on a stream must wait for the "
                "previous response and send the baton it returned",
                "BATON_REUSED",
            )
        if why == "closed":
            raise HttpError(HTTPStatus.BAD_REQUEST, "The stream has been closed", "STREAM_CLOSED")
        raise HttpError(HTTPStatus.BAD_REQUEST, "The baton is invalid", "BATON_INVALID")

    def release(self, stream: _Stream) -> str | None:
        """Hand the stream back under a fresh baton, or close it (`close` request, shutdown)."""
        with self._lock:
            self._acquired.discard(stream)
            keep = not stream.closed and not self._closing
            if keep:
                baton = secrets.token_urlsafe(32)
                stream.baton = baton
                stream.deadline = time.monotonic() + self._idle_timeout
                self._available[baton] = stream
                return baton
        stream.close()
        return None

    def discard(self, stream: _Stream) -> None:
        with self._lock:
            self._acquired.discard(stream)
        stream.close()

    def expire(self) -> int:
        """Close streams idle past their deadline; returns how many."""
        now = time.monotonic()
        with self._lock:
            expired = [(b, s) for b, s in self._available.items() if s.deadline <= now]
            for baton, _ in expired:
                del self._available[baton]
                self._retire(baton, "expired")
        for _, stream in expired:
            stream.close()
        return len(expired)

    def close_all(self) -> None:
        with self._lock:
            self._closing = True
            streams = list(self._available.items())
            self._available.clear()
            for baton, _ in streams:
                self._retire(baton, "closed")
        for _, stream in streams:
            stream.close()

    def counts(self) -> tuple[int, int]:
        """(available, acquired) stream counts, for tests."""
        with self._lock:
            return len(self._available), len(self._acquired)

    def _retire(self, baton: str, why: str) -> None:
        self._retired[baton] = why
        while len(self._retired) > RETIRED_BATONS_KEPT:
            self._retired.popitem(last=False)


# ---- executing requests --------------------------------------------------------------------


class _Executor:
    """Runs stream requests (`execute`, `batch`, `describe`, ...) on a stream's connection."""

    def __init__(self, capi: _CApi | None) -> None:
        self._capi = capi

    def handle(self, stream: _Stream, request: Any) -> JsonObj:
        """One entry of `requests` to one entry of `results`; failures never escape."""
        try:
            if not isinstance(request, dict):
                raise HranaError("A stream request must be an object", "PROTOCOL_ERROR")
            return {"type": "ok", "response": self._dispatch(stream, request)}
        except HranaError as exc:
            return {"type": "error", "error": exc.to_json()}
        except sqlite3.Error as exc:
            return {"type": "error", "error": _from_sqlite_exception(exc).to_json()}
        except Exception as exc:  # a server bug: say so instead of dropping the connection
            traceback.print_exc(file=sys.stderr)
            return {"type": "error", "error": {"message": repr(exc), "code": "INTERNAL_ERROR"}}

    def _dispatch(self, stream: _Stream, request: JsonObj) -> JsonObj:
        kind = request.get("type")
        if stream.closed:
            raise HranaError("The stream has been closed", "STREAM_CLOSED")
        if kind == "close":
            stream.closed = True
            return {"type": "close"}
        if kind == "execute":
            return {"type": "execute", "result": self.execute(stream, _obj(request, "stmt"))}
        if kind == "batch":
            return {"type": "batch", "result": self.batch(stream, _obj(request, "batch"))}
        if kind == "sequence":
            for piece in split_sql(self._sql(stream, request)):
                stream.conn.execute(piece).fetchall()
            return {"type": "sequence"}
        if kind == "describe":
            return {"type": "describe", "result": self.describe(stream, request)}
        if kind == "store_sql":
            sql_id, sql = request.get("sql_id"), request.get("sql")
            if not isinstance(sql_id, int) or not isinstance(sql, str):
                raise HranaError(
                    "`store_sql` needs an integer `sql_id` and `sql`", "PROTOCOL_ERROR"
                )
            if sql_id in stream.sqls:
                raise HranaError(f"SQL text {sql_id} is already stored", "SQL_EXISTS")
            stream.sqls[sql_id] = sql
            return {"type": "store_sql"}
        if kind == "close_sql":
            sql_id = request.get("sql_id")
            if not isinstance(sql_id, int):
                raise HranaError("`close_sql` needs an integer `sql_id`", "PROTOCOL_ERROR")
            stream.sqls.pop(sql_id, None)
            return {"type": "close_sql"}
        if kind == "get_autocommit":
            return {"type": "get_autocommit", "is_autocommit": not stream.conn.in_transaction}
        raise HranaError(f"Unknown stream request type {kind!r}", "PROTOCOL_ERROR")

    def _sql(self, stream: _Stream, holder: JsonObj) -> str:
        """The SQL text of a `Stmt`, `describe` or `sequence`: exactly one of `sql`/`sql_id`."""
        sql, sql_id = holder.get("sql"), holder.get("sql_id")
        if sql is not None and sql_id is not None:
            raise HranaError("Only one of `sql` and `sql_id` may be given", "SQL_ID_AND_SQL_GIVEN")
        if sql is not None:
            if not isinstance(sql, str):
                raise HranaError("`sql` must be a string", "PROTOCOL_ERROR")
            return sql
        if sql_id is None:
            raise HranaError("One of `sql` and `sql_id` must be given", "SQL_ID_OR_SQL_NOT_GIVEN")
        if not isinstance(sql_id, int) or sql_id not in stream.sqls:
            raise HranaError(f"SQL text {sql_id!r} was not stored", "SQL_NOT_FOUND")
        return stream.sqls[sql_id]

    def _described(self, stream: _Stream, sql: str) -> _Described | None:
        if self._capi is None or stream.db is None:
            return None
        return self._capi.describe(stream.db, sql)

    def describe(self, stream: _Stream, request: JsonObj) -> JsonObj:
        sql = self._sql(stream, request)
        info = self._described(stream, sql)
        if info is None:
            raise HranaError(
                "`describe` needs the SQLite C API, which this Python does not expose",
                "NOT_SUPPORTED",
            )
        return {
            "params": [{"name": name} for name in info.params],
            "cols": [{"name": name, "decltype": decltype} for name, decltype in info.cols],
            "is_explain": info.is_explain,
            "is_readonly": info.is_readonly,
        }

    def execute(self, stream: _Stream, stmt: JsonObj) -> JsonObj:
        sql = self._sql(stream, stmt)
        want_rows = stmt.get("want_rows")
        info = self._described(stream, sql)
        params = _bind(stmt, info.params if info is not None else None)
        conn = stream.conn
        changes_before = conn.total_changes
        started = time.perf_counter()
        try:
            cursor = conn.execute(sql, params)
            rows = cursor.fetchall()
        except sqlite3.Error as exc:
            raise _from_sqlite_exception(exc) from exc
        duration_ms = (time.perf_counter() - started) * 1000.0
        if info is not None:
            cols = [{"name": name, "decltype": decltype} for name, decltype in info.cols]
        else:
            cols = [{"name": d[0], "decltype": None} for d in cursor.description or ()]
        changed = conn.total_changes - changes_before
        if changed > 0 and self._capi is not None and stream.db is not None:
            affected = self._capi.changes(stream.db)  # excludes trigger and cascade changes
        else:
            affected = max(changed, 0)
        if self._capi is not None and stream.db is not None:
            rowid: int | None = self._capi.last_insert_rowid(stream.db)
        else:
            rowid = cursor.lastrowid
        return {
            "cols": cols,
            "rows": [] if want_rows is False else [[encode_value(v) for v in r] for r in rows],
            "affected_row_count": affected,
            "last_insert_rowid": None if rowid is None else str(rowid),
            "rows_read": len(rows),
            "rows_written": affected,
            "query_duration_ms": duration_ms,
        }

    def batch(self, stream: _Stream, batch: JsonObj) -> JsonObj:
        steps = batch.get("steps")
        if not isinstance(steps, list):
            raise HranaError("A batch needs a `steps` array", "PROTOCOL_ERROR")
        outcomes: list[bool | None] = []  # True: ok, False: failed, None: skipped
        results: list[JsonObj | None] = []
        errors: list[JsonObj | None] = []
        for index, step in enumerate(steps):
            if not isinstance(step, dict):
                raise HranaError("A batch step must be an object", "PROTOCOL_ERROR")
            condition = step.get("condition")
            if condition is not None and not self._holds(stream, condition, outcomes, index):
                outcomes.append(None)
                results.append(None)
                errors.append(None)
                continue
            try:
                results.append(self.execute(stream, _obj(step, "stmt")))
                errors.append(None)
                outcomes.append(True)
            except HranaError as exc:
                results.append(None)
                errors.append(exc.to_json())
                outcomes.append(False)
        return {"step_results": results, "step_errors": errors}

    def _holds(self, stream: _Stream, cond: Any, outcomes: list[bool | None], index: int) -> bool:
        """Evaluate a `BatchCond`; steps may only refer to steps before them."""
        if not isinstance(cond, dict):
            raise HranaError("A batch condition must be an object", "PROTOCOL_ERROR")
        kind = cond.get("type")
        if kind in ("ok", "error"):
            step = cond.get("step")
            if not isinstance(step, int) or not 0 <= step < index:
                raise HranaError(
                    f"Batch step {index} has a condition on step {step!r}, which is not an "
                    "earlier step",
                    "BATCH_COND_INVALID",
                )
            return outcomes[step] is (kind == "ok")
        if kind == "not":
            return not self._holds(stream, cond.get("cond"), outcomes, index)
        if kind in ("and", "or"):
            conds = cond.get("conds")
            if not isinstance(conds, list):
                raise HranaError(f"A `{kind}` condition needs `conds`", "PROTOCOL_ERROR")
            values = [self._holds(stream, c, outcomes, index) for c in conds]
            return all(values) if kind == "and" else any(values)
        if kind == "is_autocommit":
            return not stream.conn.in_transaction
        raise HranaError(f"Unknown batch condition type {kind!r}", "PROTOCOL_ERROR")

    def cursor_entries(self, stream: _Stream, batch: JsonObj) -> list[JsonObj]:
        """A batch as `v3/cursor` entries (computed whole, then sent line by line)."""
        try:
            result = self.batch(stream, batch)
        except HranaError as exc:
            return [{"type": "error", "error": exc.to_json()}]
        entries: list[JsonObj] = []
        for step, (res, err) in enumerate(
            zip(result["step_results"], result["step_errors"], strict=True)
        ):
            if err is not None:
                entries.append({"type": "step_error", "step": step, "error": err})
            elif res is not None:
                entries.append({"type": "step_begin", "step": step, "cols": res["cols"]})
                entries.extend({"type": "row", "row": row} for row in res["rows"])
                entries.append(
                    {
                        "type": "step_end",
                        "affected_row_count": res["affected_row_count"],
                        "last_insert_rowid": res["last_insert_rowid"],
                    }
                )
        return entries


def _obj(holder: JsonObj, key: str) -> JsonObj:
    value = holder.get(key)
    if not isinstance(value, dict):
        raise HranaError(f"`{key}` must be an object", "PROTOCOL_ERROR")
    return value


# ---- HTTP ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One HTTP request as the server saw it: lets tests assert what a client actually sends."""

    method: str
    path: str
    request_types: tuple[str, ...]
    had_baton: bool


class _HttpServer(ThreadingHTTPServer):
    """One thread per connection; remembers open sockets so `stop()` can cut keep-alives."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], hrana: HranaServer) -> None:
        self.hrana = hrana
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (or `stop()` cutting them off) is routine, not worth a traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Routes `/v2`, `/v3` probes and `/v2|v3/pipeline`, `/v3/cursor`; checks the bearer token."""

    protocol_version = "HTTP/1.1"
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes: without this, Nagle plus the client's
        # delayed ACK add ~40 ms to every response.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        with self.server.sockets_lock:
            self.server.open_sockets.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.hrana.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._serve(self._get)

    def do_POST(self) -> None:
        self._serve(self._post)

    def _serve(self, route: Callable[[str], tuple[HTTPStatus, bytes, str]]) -> None:
        hrana = self.server.hrana
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        try:
            hrana.check_auth(self.headers.get("Authorization"))
            status, body, content_type = route(path)
        except HttpError as exc:
            payload = {"message": exc.message, "code": exc.code}
            status, body, content_type = exc.status, _dumps(payload), "application/json"
        except Exception as exc:  # a server bug: answer rather than drop the connection
            traceback.print_exc(file=sys.stderr)
            payload = {"message": repr(exc), "code": "INTERNAL_ERROR"}
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            body, content_type = _dumps(payload), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="hrana"')
        self.end_headers()
        self.wfile.write(body)

    def _get(self, path: str) -> tuple[HTTPStatus, bytes, str]:
        self.server.hrana.record(RequestRecord("GET", path, (), False))
        if path in ("/", "/v2", "/v3", "/health"):
            return HTTPStatus.OK, b"Hello, this is Hrana over HTTP (JSON) v2/v3\n", "text/plain"
        raise HttpError(HTTPStatus.NOT_FOUND, f"No such endpoint: GET {path}", "NOT_FOUND")

    def _post(self, path: str) -> tuple[HTTPStatus, bytes, str]:
        hrana = self.server.hrana
        if path in ("/v2/pipeline", "/v3/pipeline"):
            body = self._read_json()
            response = hrana.pipeline(path, body)
            return HTTPStatus.OK, _dumps(response), "application/json"
        if path == "/v3/cursor":
            body = self._read_json()
            lines = hrana.cursor(path, body)
            return HTTPStatus.OK, b"".join(_dumps(line) + b"\n" for line in lines), "text/plain"
        raise HttpError(HTTPStatus.NOT_FOUND, f"No such endpoint: POST {path}", "NOT_FOUND")

    def _read_json(self) -> JsonObj:
        raw = self._read_body()
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise HttpError(
                HTTPStatus.BAD_REQUEST, f"The body is not valid JSON: {exc}", "PROTOCOL_ERROR"
            ) from exc
        if not isinstance(body, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "The body must be an object", "PROTOCOL_ERROR")
        return body

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    raise _too_large()
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise _too_large()
        return self.rfile.read(length)


def _too_large() -> HttpError:
    return HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "The body is too large", "TOO_LARGE")


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=False).encode()


# ---- the server ----------------------------------------------------------------------------


class HranaServer:
    """A Hrana-over-HTTP server for one SQLite file, serving from background threads.

    `start()` returns at once (the socket is bound in the constructor, so `url` is known before
    any client connects); `stop()` cuts open connections and rolls back and closes every stream.

    Not for the `libsql` SDK in the same process: it holds the GIL while it waits for the
    response, so the server thread never runs and the call hangs. Use `HranaProcess` there.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        verbose: bool = False,
        event_log: str | os.PathLike[str] | None = None,
    ) -> None:
        self.db_path = os.fspath(db_path)
        self.token = token
        self.verbose = verbose
        self._event_log = None if event_log is None else os.fspath(event_log)
        self._expired = 0
        self._busy_timeout = busy_timeout
        self._idle_timeout = idle_timeout
        self._capi = _load_capi()
        self._executor = _Executor(self._capi)
        self._streams = _Streams(self._open_stream, idle_timeout)
        self._log: deque[RequestRecord] = deque(maxlen=10_000)
        self._log_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stopped = False
        with sqlite3.connect(self.db_path, timeout=busy_timeout, isolation_level=None) as conn:
            # WAL is a property of the file: readers never wait for the one writer.
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
        conn.close()
        self._httpd = _HttpServer((host, port), self)
        bound_host, bound_port = self._httpd.server_address[:2]
        self.host = str(bound_host)
        self.port = int(bound_port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def describe_supported(self) -> bool:
        """Whether the SQLite C API was found (needed for `describe` and exact binding)."""
        return self._capi is not None

    def start(self) -> HranaServer:
        serve = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        reaper = threading.Thread(target=self._reap, daemon=True)
        self._threads = [serve, reaper]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        if self._threads:
            self._httpd.shutdown()
        with self._httpd.sockets_lock:
            sockets = list(self._httpd.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        self._streams.close_all()
        for thread in self._threads:
            thread.join(timeout=10)

    def __enter__(self) -> HranaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observability for tests --

    def requests_seen(self) -> list[RequestRecord]:
        with self._log_lock:
            return list(self._log)

    def clear_requests_seen(self) -> None:
        with self._log_lock:
            self._log.clear()

    def stream_counts(self) -> tuple[int, int]:
        """(idle, busy) open streams."""
        return self._streams.counts()

    @property
    def expired_streams(self) -> int:
        """How many streams were closed for being idle past `idle_timeout`."""
        with self._log_lock:
            return self._expired

    def record(self, record: RequestRecord) -> None:
        with self._log_lock:
            self._log.append(record)
        self._write_event(
            {
                "event": "request",
                "method": record.method,
                "path": record.path,
                "request_types": list(record.request_types),
                "had_baton": record.had_baton,
            }
        )

    def _write_event(self, event: JsonObj) -> None:
        """Append to the `--log-requests` file: how tests see into a server subprocess."""
        if self._event_log is None:
            return
        with self._log_lock, open(self._event_log, "a", encoding="utf-8") as log:
            log.write(json.dumps(event) + "\n")

    # -- protocol --

    def check_auth(self, header: str | None) -> None:
        if self.token is None:
            return
        expected = f"Bearer {self.token}"
        if header is None or not hmac.compare_digest(header.encode(), expected.encode()):
            raise HttpError(
                HTTPStatus.UNAUTHORIZED,
                "Unauthorized: a valid `Authorization: Bearer <token>` header is required",
                "UNAUTHORIZED",
            )

    def pipeline(self, path: str, body: JsonObj) -> JsonObj:
        baton = body.get("baton")
        requests = body.get("requests")
        if baton is not None and not isinstance(baton, str):
            raise HttpError(HTTPStatus.BAD_REQUEST, "`baton` must be a string", "PROTOCOL_ERROR")
        if not isinstance(requests, list):
            raise HttpError(HTTPStatus.BAD_REQUEST, "`requests` must be an array", "PROTOCOL_ERROR")
        types = tuple(str(r.get("type")) if isinstance(r, dict) else "?" for r in requests)
        self.record(RequestRecord("POST", path, types, baton is not None))
        stream = self._streams.acquire(baton)
        try:
            results = [self._executor.handle(stream, request) for request in requests]
        except BaseException:
            self._streams.discard(stream)
            raise
        return {"baton": self._streams.release(stream), "base_url": None, "results": results}

    def cursor(self, path: str, body: JsonObj) -> list[JsonObj]:
        baton = body.get("baton")
        batch = body.get("batch")
        if baton is not None and not isinstance(baton, str):
            raise HttpError(HTTPStatus.BAD_REQUEST, "`baton` must be a string", "PROTOCOL_ERROR")
        if not isinstance(batch, dict):
            raise HttpError(HTTPStatus.BAD_REQUEST, "`batch` must be an object", "PROTOCOL_ERROR")
        self.record(RequestRecord("POST", path, ("cursor",), baton is not None))
        stream = self._streams.acquire(baton)
        try:
            if stream.closed:
                entries: list[JsonObj] = [
                    {"type": "error", "error": {"message": "closed", "code": "STREAM_CLOSED"}}
                ]
            else:
                entries = self._executor.cursor_entries(stream, batch)
        except BaseException:
            self._streams.discard(stream)
            raise
        head = {"baton": self._streams.release(stream), "base_url": None}
        return [head, *entries]

    def _open_stream(self) -> _Stream:
        conn = sqlite3.connect(
            self.db_path,
            timeout=self._busy_timeout,
            isolation_level=None,  # autocommit: the client's BEGIN/COMMIT are the transactions
            check_same_thread=False,  # a stream moves between request threads
        )
        try:
            conn.execute("PRAGMA synchronous=NORMAL").fetchall()
            db = self._capi.handle(conn, self.db_path) if self._capi is not None else None
        except BaseException:
            conn.close()
            raise
        return _Stream(conn=conn, db=db)

    def _reap(self) -> None:
        interval = min(1.0, max(self._idle_timeout / 4, 0.05))
        while not self._stopping.wait(interval):
            expired = self._streams.expire()
            if expired:
                with self._log_lock:
                    self._expired += expired
                self._write_event({"event": "streams_expired", "count": expired})


class HranaProcess:
    """The server as a child process (`python -m tests.hrana_server`), as a deployment runs it.

    Needed with the `libsql` SDK, which holds the GIL during network calls (an in-process server
    could never answer). `start()` returns once the server printed its listening line.
    """

    def __init__(
        self,
        db_path: str | os.PathLike[str],
        token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        event_log: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.db_path = os.fspath(db_path)
        self.event_log = None if event_log is None else os.fspath(event_log)
        self.command = [
            sys.executable,
            "-m",
            "tests.hrana_server",
            "--db",
            self.db_path,
            "--listen",
            f"{host}:{port}",
            "--idle-timeout",
            str(idle_timeout),
            "--busy-timeout",
            str(busy_timeout),
            *(["--token", token] if token is not None else []),
            *(["--log-requests", self.event_log] if self.event_log is not None else []),
        ]
        self._startup_timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def process(self) -> subprocess.Popen[bytes]:
        if self._process is None:
            raise RuntimeError("the server was not started")
        return self._process

    def start(self) -> HranaProcess:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        process = subprocess.Popen(self.command, cwd=root, stdout=subprocess.PIPE)
        self._process = process
        try:
            line = self._read_line(process, time.monotonic() + self._startup_timeout)
        except BaseException:
            self.kill()
            raise
        prefix = "hrana listening on "
        if not line.startswith(prefix):
            self.kill()
            raise RuntimeError(f"unexpected first line from the hrana server: {line!r}")
        self.url = line[len(prefix) :]
        return self

    @staticmethod
    def _read_line(process: subprocess.Popen[bytes], deadline: float) -> str:
        assert process.stdout is not None
        fd = process.stdout.fileno()
        data = b""
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the hrana server did not start listening in time")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = process.wait()
                    raise RuntimeError(f"the hrana server exited with {code} before listening")
                data += chunk
        return data.split(b"\n", 1)[0].decode().strip()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the server and wait; kill it if it does not exit. Returns the exit code."""
        process = self.process
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        code = process.wait(timeout)
        if process.stdout is not None:
            process.stdout.close()
        return code

    def kill(self) -> None:
        """kill -9: no shutdown path runs (streams die with the process)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait(10)
        if self._process.stdout is not None:
            self._process.stdout.close()

    def events(self) -> list[JsonObj]:
        """The `--log-requests` lines written so far."""
        if self.event_log is None or not os.path.exists(self.event_log):
            return []
        with open(self.event_log, encoding="utf-8") as log:
            return [json.loads(line) for line in log if line.strip()]

    def requests(self) -> list[tuple[str, tuple[str, ...]]]:
        """(path, stream request types) of every pipeline/cursor request the server received."""
        return [
            (e["path"], tuple(e["request_types"]))
            for e in self.events()
            if e["event"] == "request" and e["method"] == "POST"
        ]

    def __enter__(self) -> HranaProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---- command line --------------------------------------------------------------------------


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.hrana_server",
        description="Serve a SQLite file over Hrana 3 (HTTP, JSON), standing in for sqld.",
    )
    parser.add_argument("--db", required=True, help="SQLite database file (created if missing)")
    parser.add_argument(
        "--listen", type=_parse_listen, default=("127.0.0.1", 0), help="HOST:PORT (port 0: any)"
    )
    parser.add_argument("--token", default=None, help="require `Authorization: Bearer TOKEN`")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        help="seconds before an idle stream is rolled back and closed",
    )
    parser.add_argument(
        "--busy-timeout",
        type=float,
        default=DEFAULT_BUSY_TIMEOUT,
        help="seconds a statement waits for a lock before SQLITE_BUSY",
    )
    parser.add_argument("--verbose", action="store_true", help="log every HTTP request")
    parser.add_argument(
        "--log-requests",
        metavar="PATH",
        default=None,
        help="append one JSON line per HTTP request and per stream expiry to PATH",
    )
    args = parser.parse_args(argv)

    host, port = args.listen
    server = HranaServer(
        args.db,
        token=args.token,
        host=host,
        port=port,
        idle_timeout=args.idle_timeout,
        busy_timeout=args.busy_timeout,
        verbose=args.verbose,
        event_log=args.log_requests,
    )
    done = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del signum, frame
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    print(f"hrana listening on {server.url}", flush=True)
    try:
        while not done.wait(1.0):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
