"""The databases the benchmarks run against: a SQLite file, or the same file served remotely.

- sqlite: the local backend (`JOB_STORE_BACKEND=local`), a SQLite file in WAL mode.
- remote: the libSQL driver (`JOB_STORE_BACKEND=turso`) over Hrana 3 on HTTP, served by
  the test server `tests/hrana_server.py` on loopback. It stands in for sqld/Turso (none
  can be installed here), so remote figures are the cost of the protocol, the SDK and
  the server's request handling, without a real network's round-trip time: on a real
  network every request below adds its latency.

The Hrana server runs as a subprocess because the libsql SDK holds the GIL while it waits
on the network (an in-process server could never answer). It logs one JSON line per HTTP
request (`--log-requests`); the benchmarks count those lines to report how many requests
each store operation takes, which is where remote time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from jobcontrol.store import StoreConfig
from tests.hrana_server import HranaProcess

BACKENDS = ("sqlite", "remote")
TOKEN = "bench-token"


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=(*BACKENDS, "both"),
        default="both",
        help="sqlite, remote (libSQL over Hrana/HTTP on loopback) or both (default both)",
    )


def chosen(value: str) -> tuple[str, ...]:
    """The backends a `--backend` value names, in table order."""
    return BACKENDS if value == "both" else (value,)


class RequestLog:
    """Counts the HTTP requests a Hrana server has logged, reading only what is new, so
    counting at every phase boundary of a run stays cheap however long the log grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._count = 0

    def count(self) -> int:
        if not self.path.exists():
            return self._count
        with self.path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        complete = data.rfind(b"\n") + 1  # a line being written is counted next time
        for line in data[:complete].splitlines():
            if line.strip() and json.loads(line)["event"] == "request":
                self._count += 1
        self._offset += complete
        return self._count


@dataclass(frozen=True, slots=True)
class Database:
    """One database to benchmark: how to open it, and (remote only) its request log."""

    backend: str
    config: StoreConfig
    requests: RequestLog | None

    def requests_so_far(self) -> int:
        """HTTP requests served so far (0 for SQLite, which makes none)."""
        return 0 if self.requests is None else self.requests.count()


@contextlib.contextmanager
def serve(backend: str, db_path: Path) -> Iterator[Database]:
    """The database in `db_path` (created if missing), reachable as `backend` until the
    block ends; for remote, a fresh Hrana server process on that file."""
    if backend == "sqlite":
        yield Database(backend, StoreConfig(backend="local", path=str(db_path)), None)
        return
    if backend != "remote":
        raise ValueError(f"unknown backend {backend!r}")
    log_path = db_path.with_name(f"{db_path.stem}.requests.jsonl")
    hrana = HranaProcess(db_path, token=TOKEN, event_log=log_path).start()
    try:
        config = StoreConfig(backend="turso", url=hrana.url, auth_token=TOKEN)
        yield Database(backend, config, RequestLog(log_path))
    finally:
        hrana.stop()


def store_env(config: StoreConfig) -> dict[str, str]:
    """The environment a server or worker process reads its store from (every variable
    set, so none leaks in from the caller's environment)."""
    return {
        "JOB_STORE_BACKEND": config.backend,
        "JOB_STORE_PATH": config.path,
        "TURSO_DATABASE_URL": config.url,
        "TURSO_AUTH_TOKEN": config.auth_token,
    }


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API: correct even if the process that
    wrote `source` (a Hrana server, say) left pages in its WAL."""
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
