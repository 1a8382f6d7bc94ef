"""The test infrastructure for the remote store (tests/sqld.py) checked against sqld
itself: if these fail, a failing remote-store test says nothing about the driver."""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.sqld
from tests.conftest import StartDelayProxy, StartSqld
from tests.polling import wait_until
from tests.sqld import (
    JwtKey,
    ProxyProcess,
    SqldMissing,
    SqldProcess,
    _RequestCounter,
    hrana_pipeline,
)


def pipeline(url: str, statements: list[dict[str, Any]], token: str | None) -> dict[str, Any]:
    """Run `statements` on a new stream and close it, in one request."""
    requests = [{"type": "execute", "stmt": stmt} for stmt in statements] + [{"type": "close"}]
    return hrana_pipeline(url, requests, token=token)


def status_of(url: str, token: str | None) -> int:
    try:
        pipeline(url, [{"sql": "SELECT 1"}], token)
    except urllib.error.HTTPError as error:
        error.close()
        return error.code
    return 200


def health(url: str, timeout: float = 10.0) -> int:
    with urllib.request.urlopen(f"{url}/health", timeout=timeout) as reply:
        return int(reply.status)


def insert(value: int) -> dict[str, Any]:
    """An INSERT with a named argument, the kind the old driver could not send."""
    return {
        "sql": "INSERT INTO t (v) VALUES (:v)",
        "named_args": [{"name": ":v", "value": {"type": "integer", "value": str(value)}}],
    }


def values(url: str, token: str | None) -> list[int]:
    result = pipeline(url, [{"sql": "SELECT v FROM t ORDER BY v"}], token)["results"][0]
    assert result["type"] == "ok", result
    return [int(row[0]["value"]) for row in result["response"]["result"]["rows"]]


def read_stopped(sqld: SqldProcess) -> list[int]:
    """The table as sqlite3 reads it from the data file of a sqld no longer running."""
    assert not sqld.running
    with sqlite3.connect(f"file:{sqld.data_file}?mode=ro", uri=True) as db:
        return [v for (v,) in db.execute("SELECT v FROM t ORDER BY v")]


# ---- sqld ---------------------------------------------------------------------------


def test_sqld_serves_hrana_and_keeps_the_database_in_one_sqlite_file(sqld: SqldProcess) -> None:
    assert sqld.url == f"http://127.0.0.1:{sqld.port}"
    assert health(sqld.url) == 200
    results = pipeline(sqld.url, [{"sql": "CREATE TABLE t (v INTEGER)"}, insert(7)], sqld.token)
    assert [r["type"] for r in results["results"]] == ["ok", "ok", "ok"], results
    assert values(sqld.url, sqld.token) == [7]
    assert sqld.stop() == 0
    assert sqld.data_file == sqld.directory / "db" / "dbs" / "default" / "data"
    assert read_stopped(sqld) == [7]


def test_every_sqld_we_start_serves_one_connection_at_a_time(sqld: SqldProcess) -> None:
    """sqld 0.24 can stop accepting writes for good when connections queue to write
    (docs/ops.md): the tests' sqld and `make cluster`'s both run one at a time."""
    import scripts.cluster

    arguments = Path(f"/proc/{sqld.pid}/cmdline").read_bytes().decode().split("\0")
    at = arguments.index("--max-concurrent-connections")
    assert arguments[at + 1] == "1"
    assert scripts.cluster.SQLD_OPTIONS == tests.sqld.SQLD_OPTIONS


def test_sqld_refuses_a_request_without_a_valid_token(sqld: SqldProcess, tmp_path: Path) -> None:
    assert sqld.token is not None
    assert sqld.jwt_key is not None
    header, payload, signature = sqld.token.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    stranger = JwtKey.create(tmp_path / "stranger").token()
    assert status_of(sqld.url, None) == 401
    assert status_of(sqld.url, "not-a-jwt") == 401
    assert status_of(sqld.url, tampered) == 401
    assert status_of(sqld.url, stranger) == 401
    assert status_of(sqld.url, sqld.jwt_key.token({"exp": 1})) == 401  # expired in 1970
    assert status_of(sqld.url, sqld.token) == 200
    # A read-only token reads but may not write.
    read_only = sqld.jwt_key.token({"a": "ro"})
    assert status_of(sqld.url, read_only) == 200
    with pytest.raises(urllib.error.HTTPError) as refused:
        pipeline(sqld.url, [{"sql": "CREATE TABLE t (v INTEGER)"}], read_only)
    refused.value.close()
    assert refused.value.code == 403


def test_without_auth_sqld_takes_any_request(start_sqld: StartSqld) -> None:
    open_sqld = start_sqld(auth=False)
    assert open_sqld.token is None
    assert status_of(open_sqld.url, None) == 200


def test_restart_comes_back_on_the_same_port_with_the_data(start_sqld: StartSqld) -> None:
    sqld = start_sqld()
    url = sqld.url
    pipeline(url, [{"sql": "CREATE TABLE t (v INTEGER)"}, insert(1)], sqld.token)
    first_pid = sqld.pid
    sqld.restart()
    assert sqld.url == url
    assert sqld.pid != first_pid
    assert values(url, sqld.token) == [1]

    pipeline(url, [insert(2)], sqld.token)
    sqld.kill()  # kill -9: what was acknowledged must survive
    assert not sqld.running
    with pytest.raises(urllib.error.URLError):
        health(url)
    assert read_stopped(sqld) == [1, 2]
    sqld.restart()
    assert sqld.url == url
    assert values(url, sqld.token) == [1, 2]


def test_a_paused_sqld_accepts_connections_but_answers_nothing_until_resumed(
    sqld: SqldProcess,
) -> None:
    sqld.pause()
    try:
        with pytest.raises((TimeoutError, urllib.error.URLError)) as silent:
            health(sqld.url, timeout=0.5)
        if isinstance(silent.value, urllib.error.URLError):
            assert isinstance(silent.value.reason, TimeoutError), silent.value
    finally:
        sqld.resume()
    assert health(sqld.url) == 200


def test_a_paused_sqld_still_stops(sqld: SqldProcess) -> None:
    sqld.pause()
    assert sqld.stop(timeout=10) == 0  # SIGTERM is acted on once SIGCONT follows it


def test_a_missing_sqld_says_to_run_make_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tests.sqld, "SQLD", tmp_path / "no-sqld")
    with pytest.raises(SqldMissing, match=r"run `make install`"):
        SqldProcess(tmp_path).start()


# ---- the delay proxy ----------------------------------------------------------------


def test_the_proxy_passes_hrana_requests_and_counts_them_on_a_kept_alive_connection(
    sqld: SqldProcess, delay_proxy: StartDelayProxy
) -> None:
    proxy = delay_proxy(sqld.url, rtt=0.005)
    assert health(proxy.url) == 200
    pipeline(proxy.url, [{"sql": "CREATE TABLE t (v INTEGER)"}, insert(3)], sqld.token)
    assert values(proxy.url, sqld.token) == [3]
    assert proxy.requests == 3
    assert proxy.connections == 3  # urllib opens a connection per request

    connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=30)
    try:
        for n in range(5):
            requests = [{"type": "execute", "stmt": insert(10 + n)}, {"type": "close"}]
            body = json.dumps({"requests": requests}).encode()
            headers = {"Authorization": f"Bearer {sqld.token}"}
            if n % 2:  # chunked bodies have no Content-Length: the framing must be followed
                connection.request(
                    "POST", "/v3/pipeline", body=iter([body[:7], body[7:]]), headers=headers
                )
            else:
                connection.request("POST", "/v3/pipeline", body=body, headers=headers)
            reply = connection.getresponse()
            assert reply.status == 200, reply.read()
            assert json.load(reply)["results"][0]["type"] == "ok"
        connection.request("GET", "/health")
        assert connection.getresponse().read() == b""
    finally:
        connection.close()
    assert proxy.requests == 9
    assert proxy.connections == 4
    assert proxy.stats()["by_request"] == {"GET /health": 2, "POST /v3/pipeline": 7}
    assert values(sqld.url, sqld.token) == [3, 10, 11, 12, 13, 14]


def test_the_request_counter_finds_request_starts_however_the_bytes_are_split() -> None:
    requests = (
        b"POST /v3/pipeline HTTP/1.1\r\nHost: x\r\nContent-Length: 19\r\n\r\n"
        b"GET / HTTP/1.1\r\n\r\nx"  # a body that looks like a request is not one
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /v2/pipeline HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nPOST \r\n1a;ext=1\r\n/ HTTP/1.1\r\n\r\nabcdefghijkl\r\n0\r\nTrailer: y\r\n\r\n"
        b"\r\nPOST /v3/cursor HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}"
    )
    expected = ["POST /v3/pipeline", "GET /health", "POST /v2/pipeline", "POST /v3/cursor"]
    rng = random.Random(7)
    for _ in range(200):
        seen: list[str] = []
        counter = _RequestCounter(seen.append)
        cuts = sorted(rng.sample(range(1, len(requests)), rng.randint(0, 30)))
        for start, end in zip([0, *cuts], [*cuts, len(requests)], strict=True):
            counter.feed(requests[start:end])
        assert seen == expected, cuts


class Listener:
    """A plain TCP server on loopback that records what it receives and, when asked,
    echoes it back: a target whose side of the proxy the test can see."""

    def __init__(self, echo: bool) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = bytearray()
        self._echo = echo
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with self.sock, self.sock.accept()[0] as conn:
            while data := conn.recv(1 << 16):
                self.received += data
                if self._echo:
                    conn.sendall(data)

    def close(self) -> None:
        self.sock.close()  # unblocks accept() if nobody connected
        self._thread.join(10)


@pytest.fixture
def echo() -> Iterator[Listener]:
    listener = Listener(echo=True)
    try:
        yield listener
    finally:
        listener.close()


def test_the_proxy_keeps_every_byte_in_order_both_ways(
    echo: Listener, delay_proxy: StartDelayProxy
) -> None:
    proxy = delay_proxy(echo.address, rtt=0.010)
    rng = random.Random(1)
    data = rng.randbytes(4 << 20)
    received = bytearray()
    with socket.create_connection((proxy.host, proxy.port), timeout=30) as conn:

        def read_back() -> None:
            while len(received) < len(data) and (chunk := conn.recv(1 << 16)):
                received.extend(chunk)

        reader = threading.Thread(target=read_back)
        reader.start()
        sent = 0
        while sent < len(data):
            size = rng.choice([1, 100, 4096, 70_000, 300_000])
            conn.sendall(data[sent : sent + size])
            sent += size
        reader.join(60)
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(1) == b""  # the end of the stream is passed on too
    assert bytes(received) == data
    assert bytes(echo.received) == data
    wait_until(lambda: proxy.in_flight == 0, what="nothing left in flight")


def test_the_proxy_reads_on_while_earlier_bytes_wait_to_be_delivered(
    delay_proxy: StartDelayProxy,
) -> None:
    """With an hour of delay nothing arrives, yet the proxy takes each new write while
    the ones before are still waiting: bytes are held, not the connection. (A proxy
    that slept before each write would stop reading after the first chunk.)"""
    target = Listener(echo=False)
    try:
        proxy = delay_proxy(target.address, rtt=3600.0, handshake=False)
        with socket.create_connection((proxy.host, proxy.port), timeout=30) as conn:
            total = 0
            for n in range(1, 6):
                conn.sendall(b"x" * n * 1000)
                total += n * 1000

                def all_read(total: int = total) -> bool:
                    return proxy.in_flight == total

                wait_until(all_read, what=f"{total} bytes in flight")
            assert target.received == b""
            conn.setblocking(False)
            with pytest.raises(BlockingIOError):
                conn.recv(1)
        proxy.stop()  # with bytes still in flight: the connection is closed, not delivered
        assert proxy.in_flight == 0
    finally:
        target.close()
    assert target.received == b""


def test_the_proxy_adds_at_least_its_round_trip(
    sqld: SqldProcess, delay_proxy: StartDelayProxy
) -> None:
    """Lower bounds only, which the proxy guarantees whatever the machine's speed: a
    request waits one round trip, and a new connection one more (TCP's handshake)."""
    rtt = 0.050
    proxy = delay_proxy(sqld.url, rtt=rtt)
    connection = http.client.HTTPConnection(proxy.host, proxy.port, timeout=30)
    try:
        took = []
        for _ in range(3):
            started = time.monotonic()
            connection.request("GET", "/health")
            assert connection.getresponse().read() == b""
            took.append(time.monotonic() - started)
    finally:
        connection.close()
    assert took[0] >= 2 * rtt, took
    assert min(took[1:]) >= rtt, took
    assert proxy.connections == 1


def test_a_client_of_a_proxy_whose_target_is_down_sees_the_connection_closed(
    delay_proxy: StartDelayProxy,
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as placeholder:
        port = placeholder.getsockname()[1]
    proxy = delay_proxy(f"127.0.0.1:{port}", rtt=0.0)
    with pytest.raises((urllib.error.URLError, http.client.RemoteDisconnected, OSError)):
        health(proxy.url)
    assert proxy.connections == 1


def test_the_proxy_runs_as_its_own_process(sqld: SqldProcess, tmp_path: Path) -> None:
    proxy = ProxyProcess(sqld.url, rtt=0.002, log_path=tmp_path / "proxy.log").start()
    try:
        assert health(proxy.url) == 200
        pipeline(proxy.url, [{"sql": "CREATE TABLE t (v INTEGER)"}, insert(5)], sqld.token)
        counts = proxy.stats()
        assert counts["requests"] == 2
        assert counts["by_request"] == {"GET /health": 1, "POST /v3/pipeline": 1}
        assert values(proxy.url, sqld.token) == [5]
    finally:
        final = proxy.stop()
    assert final is not None
    assert final["requests"] == 3
    assert proxy.returncode == 0
    assert "proxy listening on http://127.0.0.1:" in proxy.log


def test_sqld_is_not_left_running_by_a_test_that_forgot_it(tmp_path: Path) -> None:
    forgotten = SqldProcess(tmp_path).start()
    pid = forgotten.pid
    tests.sqld.stop_all()  # what the session's _no_process_left_behind runs at the end
    assert not forgotten.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
