"""`jobcontrol-server --processes N`: N server processes on one port, so that streams
spread over every core.

One Python process serves one core. This supervisor starts N children (multiprocessing,
spawn: a fresh interpreter, no forked gRPC state), each a whole server with its own
EventHub and tailer, bound to one port with SO_REUSEPORT: the kernel spreads
connections over them, and the store sees N tailers, not one per watcher.

Choices, as gunicorn and uvicorn users expect them:
- The port: the supervisor checks that it is free as a lone server would (so a second
  server on a port already served, with or without --processes, fails in one line),
  then holds it with a bound SO_REUSEPORT socket (a port 0 is chosen there) until every
  child listens; only then does it log "listening on HOST:PORT".
- Start-up: the first child starts (and migrates the store) alone, then the others.
  Any child that cannot start stops them all: one line on stderr, exit 1.
- A child that dies later is restarted (after a pause if it had just started); a
  restart that cannot start stops them all, as above.
- SIGTERM/SIGINT go to every child, which shuts down as a lone server does; a second
  signal is forwarded too. The supervisor exits 0 when all exited cleanly. Children run
  in their own process group, so a terminal's Ctrl-C reaches them once, through here;
  a child whose supervisor vanishes (kill -9) sees its pipe close and stops.
- The first child alone runs the reaper, retention, --metrics-listen (so /metrics
  counts that child's calls and streams, and the store's counts) and --with-worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import FrameType

from jobcontrol.errors import JobControlError
from jobcontrol.logs import configure_logging
from jobcontrol.server.app import Replica, ServerConfig, describe, serve
from jobcontrol.server.listen import ListenAddress, ListenError
from jobcontrol.startup import StartupError

log = logging.getLogger(__name__)

# A restarted child that dies sooner than this after listening waits this long before
# the next restart, so a crash loop does not spin.
RESTART_PAUSE = 1.0
START_TIMEOUT = 120.0


class SupervisorError(Exception):
    """The server cannot (go on) serving; the message is one line for stderr."""


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str
    format: str


def reserve(address: ListenAddress) -> socket.socket:
    """Check `address` is free as a lone server would, then hold it with a socket that
    lets only SO_REUSEPORT binders (the children) join; port 0 picks the port here."""
    address.check_free()
    infos = socket.getaddrinfo(
        address.host or None, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(sockaddr)
    except OSError as error:
        sock.close()
        reason = "the port is already in use" if error.errno == errno.EADDRINUSE else error
        raise ListenError(f"cannot listen on {address}: {reason}") from None
    return sock


def _run_child(config: ServerConfig, logs: LogSettings, pipe: Connection) -> None:
    """A child's whole life: serve until signalled or orphaned; tell the supervisor
    ("ready", port) or ("failed", one line)."""
    os.setpgid(0, 0)
    configure_logging(logs.level, logs.format)
    try:
        asyncio.run(_serve_child(config, pipe))
    except (ListenError, StartupError) as error:
        pipe.send(("failed", str(error)))
        raise SystemExit(1) from None
    except JobControlError as error:
        pipe.send(("failed", error.message))
        raise SystemExit(1) from None


async def _serve_child(config: ServerConfig, pipe: Connection) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_supervisor_gone() -> None:
        """The supervisor never writes: the pipe turns readable when it closes."""
        loop.remove_reader(pipe.fileno())
        log.warning("the supervisor is gone; stopping")
        stop.set()

    loop.add_reader(pipe.fileno(), on_supervisor_gone)
    await serve(config, stop, on_listening=lambda port: pipe.send(("ready", port)))


class _Child:
    def __init__(self, index: int, config: ServerConfig, logs: LogSettings) -> None:
        self.index = index
        self.pipe, child_end = multiprocessing.Pipe()
        self.process: BaseProcess = multiprocessing.get_context("spawn").Process(
            target=_run_child,
            args=(config, logs, child_end),
            name=f"jobcontrol-server-{index + 1}",
        )
        self.process.start()
        child_end.close()
        self.ready_at = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid or 0


class Supervisor:
    def __init__(self, config: ServerConfig, count: int, logs: LogSettings) -> None:
        self._config = config
        self._count = count
        self._logs = logs
        self._children: dict[int, _Child] = {}
        self._signals = 0

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status. Raises SupervisorError or
        ListenError if the server cannot start or a restarted child cannot."""
        held = reserve(self._config.listen)
        address = self._config.listen.with_port(held.getsockname()[1])
        self._config = replace(self._config, listen=address)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        try:
            try:
                self._start(0)
                if not self._stopping():
                    for index in range(1, self._count):
                        self._start(index, wait_ready=False)
                    for index in range(1, self._count):
                        self._wait_ready(self._children[index])
            finally:
                held.close()
            if not self._stopping():
                log.info(
                    "listening on %s (%s; %d processes, pids %s)",
                    address,
                    describe(self._config),
                    self._count,
                    " ".join(str(child.pid) for child in self._children.values()),
                )
            return self._watch()
        except BaseException:
            self._stop_all()
            raise

    def _stopping(self) -> bool:
        """Read through a call: the signal handler changes it between any two lines."""
        return self._signals > 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: stopping %d processes", signal.Signals(signum).name, self._count)
        self._signal_children(signum)

    def _child_config(self, index: int) -> ServerConfig:
        config = replace(self._config, replica=Replica(index, self._count))
        if index == 0:
            return config
        return replace(config, metrics_listen=None, http_listen=None, with_worker=False)

    def _start(self, index: int, *, wait_ready: bool = True) -> None:
        child = _Child(index, self._child_config(index), self._logs)
        self._children[index] = child
        if wait_ready:
            self._wait_ready(child)

    def _wait_ready(self, child: _Child) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not child.ready_at:
            if self._stopping():
                return
            ready = wait([child.pipe, child.process.sentinel], timeout=1.0)
            if child.pipe in ready:
                try:
                    kind, detail = child.pipe.recv()
                except EOFError:
                    kind, detail = "exited", None
                if kind == "ready":
                    child.ready_at = time.monotonic()
                    return
                if kind == "failed":
                    raise SupervisorError(str(detail))
            if child.process.sentinel in ready or not child.process.is_alive():
                child.process.join()
                raise SupervisorError(
                    f"process {child.index + 1} of {self._count} exited with code "
                    f"{child.process.exitcode} before listening"
                )
            if time.monotonic() > deadline:
                raise SupervisorError(
                    f"process {child.index + 1} of {self._count} did not listen within "
                    f"{START_TIMEOUT:.0f}s"
                )

    def _watch(self) -> int:
        """Restart children that die until a signal comes; then wait for them all."""
        while not self._stopping():
            sentinels = {child.process.sentinel: child for child in self._children.values()}
            for sentinel in wait(list(sentinels), timeout=1.0):
                child = sentinels[sentinel]  # type: ignore[index]
                child.process.join()
                if self._stopping():
                    break
                self._restart(child)
        return self._wait_all()

    def _restart(self, child: _Child) -> None:
        code = child.process.exitcode
        lived = time.monotonic() - child.ready_at
        log.warning(
            "process %d of %d (pid %d) exited with code %s; restarting it",
            child.index + 1,
            self._count,
            child.pid,
            code,
        )
        if lived < RESTART_PAUSE:
            time.sleep(RESTART_PAUSE)
        if not self._stopping():
            self._start(child.index)

    def _wait_all(self) -> int:
        failed = 0
        for child in self._children.values():
            child.process.join()
            if child.process.exitcode != 0:
                failed += 1
                log.warning(
                    "process %d of %d (pid %d) exited with code %s",
                    child.index + 1,
                    self._count,
                    child.pid,
                    child.process.exitcode,
                )
        log.info("stopped")
        return 1 if failed else 0

    def _signal_children(self, signum: int) -> None:
        for child in self._children.values():
            if child.process.is_alive():
                with contextlib.suppress(ProcessLookupError):  # it exited just now
                    os.kill(child.pid, signum)

    def _stop_all(self) -> None:
        self._signal_children(signal.SIGTERM)
        for child in self._children.values():
            child.process.join()
