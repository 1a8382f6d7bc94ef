"""A real PostgreSQL 15 for tests, and PgBouncer in transaction mode in front of it.

`PostgresCluster` is a throwaway cluster: initdb into a fresh directory under /tmp, one
postmaster on a loopback port (its unix socket inside the data directory), trust auth
for the `postgres` role. PostgreSQL and PgBouncer both refuse to run as root, so when
the tests run as root (as CI does) their processes run as the `postgres` user, in a
directory chowned to it: pytest's tmp_path may sit under directories that user cannot
enter.

Everything started here is stopped and its directory removed by `stop_all_clusters()`
(the test session's end) and, whatever the caller forgot, at interpreter exit.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import psycopg
from psycopg import sql

from tests.leftovers import Leftovers
from tests.polling import wait_until
from tests.sqld import _listening_ports

BINDIR = Path("/usr/lib/postgresql/15/bin")
MISSING = (
    f"PostgreSQL 15 is not installed ({BINDIR}/postgres is missing): "
    "run `make system-deps` (apt-get install postgresql-15)"
)
PGBOUNCER_MISSING = (
    "pgbouncer is not installed (not on PATH nor in /usr/sbin): "
    "run `make system-deps` (apt-get install pgbouncer)"
)
# The user PostgreSQL and PgBouncer run as when we are root; their superuser role.
SERVICE_USER = "postgres"


class PostgresMissing(RuntimeError):
    """PostgreSQL 15 or PgBouncer is not installed: `make system-deps` installs them."""


def postgres_bindir() -> Path:
    """The directory of PostgreSQL 15's initdb and postgres: Debian's versioned one, else
    whatever `pg_config --bindir` names if that is a 15."""
    candidates = [BINDIR]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["pg_config", "--bindir", "--version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        reported, version = done.stdout.splitlines()[:2]
        if version.startswith("PostgreSQL 15."):
            candidates.append(Path(reported))
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in ("initdb", "postgres")):
            return bindir
    raise PostgresMissing(MISSING)


def pgbouncer_binary() -> Path:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if found is None:
        raise PostgresMissing(PGBOUNCER_MISSING)
    return Path(found)


# ---- running as the postgres user -------------------------------------------------------


@dataclass(frozen=True)
class _RunAs:
    """Who the server processes run as: the `postgres` user when we are root (both
    servers refuse root), else ourselves."""

    uid: int | None = None
    gid: int | None = None

    @classmethod
    def for_servers(cls) -> _RunAs:
        if os.geteuid() != 0:
            return cls()
        try:
            user = pwd.getpwnam(SERVICE_USER)
        except KeyError:
            raise PostgresMissing(
                f"running as root and there is no `{SERVICE_USER}` user to run PostgreSQL as: "
                "apt-get install postgresql-15 creates it"
            ) from None
        return cls(user.pw_uid, user.pw_gid)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run as that user. setpriv drops root and then execs, so the child's pid is
        the server's own (signals and wait() reach it directly). Not Popen's `user=`: that
        makes Python fork() rather than vfork(), which runs gRPC's at-fork handlers in the
        child, and with channels open in this process they can crash it before the exec."""
        if self.uid is None:
            return argv
        ids = [f"--reuid={self.uid}", f"--regid={self.gid}", "--clear-groups"]
        return ["setpriv", *ids, "--", *argv]

    def own(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def make_directory(self, prefix: str) -> Path:
        """A fresh directory under /tmp (which every user can enter) that the servers own."""
        directory = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp")).resolve()
        directory.chmod(0o700)
        self.own(directory)
        return directory


def _environment() -> dict[str, str]:
    """Ours without libpq's PG* variables, which would otherwise steer the tools."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _processes_in(directory: Path) -> list[int]:
    """Live processes whose working directory is `directory`: every PostgreSQL process
    chdirs into its data directory, so this finds a killed postmaster's orphaned children
    (and no other cluster's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(entry / "cwd") != str(directory):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                found.append(int(entry.name))
    return found


# ---- cleanup ----------------------------------------------------------------------------


class _Removable(Protocol):
    def remove(self) -> None: ...

    def kill(self) -> None: ...


def _kill_and_remove(item: _Removable) -> None:
    item.kill()
    item.remove()


_running: Leftovers[_Removable] = Leftovers(end=lambda item: item.remove(), kill=_kill_and_remove)
_track = _running.track
_untrack = _running.untrack


def stop_all_clusters() -> None:
    """Stop every cluster and PgBouncer this process started and remove their directories."""
    _running.end_all()


# ---- PostgreSQL -------------------------------------------------------------------------


class PostgresCluster:
    """A PostgreSQL 15 cluster of its own: `start()` runs initdb the first time, then the
    postmaster on a free loopback port; `stop()`, `kill()` and `restart()` keep the data
    and the port, so a test can crash the server and bring it back; `remove()` stops it
    and deletes everything."""

    def __init__(self, *, max_connections: int = 200) -> None:
        self.bindir = postgres_bindir()
        self.max_connections = max_connections
        self._run_as = _RunAs.for_servers()
        self.directory = self._run_as.make_directory("jobcontrol-pg-")
        self.data_dir = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        _track(self)

    # -- where it is

    def url(self, dbname: str = "postgres") -> str:
        if self.port is None:
            raise RuntimeError("the cluster has not been started")
        return f"postgresql://{SERVICE_USER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        """The postmaster's pid."""
        if self._process is None:
            raise RuntimeError("the cluster has not been started")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- life cycle

    def start(self, timeout: float = 60.0) -> PostgresCluster:
        if self.running:
            raise RuntimeError(f"the postmaster {self.pid} is already running")
        if not self.directory.exists():
            raise RuntimeError(f"the cluster in {self.directory} was removed")
        if not self.data_dir.exists():
            self._initdb()
        if self.port is not None:
            self._start_on(self.port, timeout)
            return self
        # A port free a moment ago may be taken by the time the postmaster binds it: try
        # another one then (only the first start picks; later ones keep the port).
        attempts = 5
        while True:
            attempts -= 1
            port = _free_port()
            try:
                self._start_on(port, timeout)
            except _PortTaken:
                if not attempts:
                    raise
            else:
                self.port = port
                return self

    def _initdb(self) -> None:
        command = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-A",
            "trust",
            "-U",
            SERVICE_USER,
            "-E",
            "UTF8",
            "--locale=C",  # byte order for text, as SQLite compares it
            "--no-sync",
        ]
        done = subprocess.run(
            self._run_as.command(command),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.directory,
            env=_environment(),
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _start_on(self, port: int, timeout: float) -> None:
        command = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.data_dir}",
            "-c",
            f"max_connections={self.max_connections}",
        ]
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._run_as.command(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=_environment(),
            )

        def ready() -> bool:
            assert self._process is not None
            if self._process.poll() is not None:
                self._process.wait()
                text = self.log[log_start:]
                if "could not bind" in text or "Address already in use" in text:
                    raise _PortTaken(text)
                raise RuntimeError(f"postgres exited with {self._process.returncode}:\n{text}")
            return self._postmaster_status() == (self._process.pid, "ready")

        try:
            wait_until(
                ready, timeout=timeout, interval=0.01, what=f"postgres on port {port} to be ready"
            )
        except BaseException:
            self.kill()
            raise

    def _postmaster_status(self) -> tuple[int, str] | None:
        """postmaster.pid's pid and status ("starting", "ready", "stopping"), if written."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return None
        if len(lines) < 8 or not lines[0].strip().isdigit():
            return None
        return int(lines[0]), lines[7].strip()

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: sessions are ended, a checkpoint is written), SIGKILL if
        it does not end in time."""
        process = self._process
        if process is None or process.poll() is not None:
            self._reap()
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap()

    def kill(self) -> None:
        """SIGKILL of the postmaster, as a crash: no checkpoint, no shutdown; the next
        start() runs crash recovery. Returns once its orphaned backends have noticed and
        exited too (a new postmaster refuses to start while they hold shared memory)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
        self._reap()

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait(30)
        if not self.data_dir.exists():
            return
        try:
            wait_until(
                lambda: not _processes_in(self.data_dir),
                timeout=15,
                what="the killed postmaster's backends to exit",
            )
        except AssertionError:
            for pid in _processes_in(self.data_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _processes_in(self.data_dir), timeout=15, what="SIGKILL")

    def restart(self, timeout: float = 60.0) -> PostgresCluster:
        """Stop it if it still runs, then start again on the same port and data."""
        self.stop()
        return self.start(timeout)

    def remove(self) -> None:
        """Stop it and delete its directory: the cluster cannot start again."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
        _untrack(self)

    # -- inside it

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit superuser connection (CREATE DATABASE refuses a transaction)."""
        return psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=10)

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        with self.connect() as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop it, ending its sessions first; nothing if it does not exist."""
        self.terminate_backends(name)
        with self.connect() as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def terminate_backends(self, dbname: str, *, application_name: str | None = None) -> int:
        """End the sessions connected to `dbname` (only those with `application_name`, if
        given), as an administrator or a failover would; how many. Returns once they have
        exited: their clients get an OperationalError on their next query."""
        # The CTE is evaluated first, so no session outside it can be terminated by a
        # planner that tests pg_terminate_backend before the filters.
        query = (
            "WITH targets AS MATERIALIZED ("
            " SELECT pid FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()"
            " AND (%s::text IS NULL OR application_name = %s))"
            " SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM targets"
        )
        with self.connect() as connection:
            row = connection.execute(query, (dbname, application_name, application_name)).fetchone()
        assert row is not None
        return int(row[0])

    def psql(self, query: str, dbname: str = "postgres") -> str:
        """Run `query` with the psql CLI, a client that shares nothing with psycopg; its
        unaligned, tuples-only output."""
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.url(dbname),
                "-c",
                query,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=_environment(),
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def __enter__(self) -> PostgresCluster:
        return self if self.running else self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.running else "stopped"
        return f"<PostgresCluster {self.port} {state} {self.directory}>"


class _PortTaken(RuntimeError):
    """The postmaster could not bind its port: another program took it first."""


# ---- PgBouncer ---------------------------------------------------------------------------


class PgBouncer:
    """PgBouncer in transaction mode in front of a cluster: every database name is passed
    through to it, trust auth for `postgres`. A server connection is lent to a client for
    one transaction only, so session state (LISTEN, prepared statements, SET) does not
    survive between transactions: what a driver behind it must cope with."""

    def __init__(
        self, cluster: PostgresCluster, *, default_pool_size: int = 20, max_client_conn: int = 500
    ) -> None:
        if cluster.port is None:
            raise RuntimeError("start the cluster before its PgBouncer")
        self.binary = pgbouncer_binary()
        self.cluster_port = cluster.port
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self._run_as = _RunAs.for_servers()
        self.directory = self._run_as.make_directory("jobcontrol-pgbouncer-")
        self.log_path = self.directory / "pgbouncer.log"
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        _track(self)

    def url(self, dbname: str) -> str:
        if self.port is None:
            raise RuntimeError("pgbouncer has not been started")
        return f"postgresql://{SERVICE_USER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _write_config(self, port: int) -> Path:
        userlist = self.directory / "userlist.txt"
        userlist.write_text(f'"{SERVICE_USER}" ""\n')
        ini = self.directory / "pgbouncer.ini"
        ini.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.cluster_port}\n"
            "\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {userlist}\n"
            "pool_mode = transaction\n"
            f"max_client_conn = {self.max_client_conn}\n"
            f"default_pool_size = {self.default_pool_size}\n"
        )
        for path in (userlist, ini):
            self._run_as.own(path)
        return ini

    def start(self, timeout: float = 30.0) -> PgBouncer:
        if self.running:
            raise RuntimeError("pgbouncer is already running")
        if self.port is not None:
            self._start_on(self.port, timeout)
            return self
        attempts = 5  # as for the cluster: another program may take a free port first
        while True:
            attempts -= 1
            port = _free_port()
            try:
                self._start_on(port, timeout)
            except _PortTaken:
                if not attempts:
                    raise
            else:
                self.port = port
                return self

    def _start_on(self, port: int, timeout: float) -> None:
        ini = self._write_config(port)
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._run_as.command([str(self.binary), str(ini)]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                env=_environment(),
            )
        try:
            wait_until(
                lambda: self._listening(port, log_start),
                timeout=timeout,
                what=f"pgbouncer to listen on {port}",
            )
        except BaseException:
            self.kill()
            raise

    def _listening(self, port: int, log_start: int) -> bool:
        assert self._process is not None
        if self._process.poll() is not None:
            self._process.wait()
            text = self.log[log_start:]
            if "Address already in use" in text:
                raise _PortTaken(text)
            raise RuntimeError(f"pgbouncer exited with {self._process.returncode}:\n{text}")
        return port in _listening_ports(self._process.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (immediate shutdown: clients are disconnected), SIGKILL if it lingers."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        self.kill()

    def kill(self) -> None:
        process = self._process
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait(10)

    def remove(self) -> None:
        """Stop it and delete its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
        _untrack(self)

    def __repr__(self) -> str:
        state = f"pid {self._process.pid}" if self.running and self._process else "stopped"
        return f"<PgBouncer {self.port} -> {self.cluster_port} {state}>"
