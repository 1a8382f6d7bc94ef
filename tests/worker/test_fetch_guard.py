"""`fetch_guard` on its own: which addresses are refused, what `--fetch-allow` accepts,
and that a connection goes to the address checked (one lookup, so a DNS answer that
changes between lookups cannot slip past)."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from jobcontrol.worker.fetch_guard import (
    ConnectionGuard,
    FetchAborted,
    FetchAllowList,
    FetchRefused,
    check_url,
    refusal,
)


@pytest.mark.parametrize(
    ("address", "said"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("fd12:3456::1", "private"),
        ("2002:a00:1::", "private"),  # 6to4 around 10.0.0.1
        ("64:ff9b::a00:1", "private"),  # NAT64 around 10.0.0.1
        ("169.254.10.10", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "cloud metadata"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("192.0.0.192", "cloud metadata"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not a public address"),  # carrier-grade NAT
    ],
)
def test_non_public_addresses_are_refused(address: str, said: str):
    reason = refusal(ipaddress.ip_address(address))
    assert reason is not None
    assert said in reason


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str):
    assert refusal(ipaddress.ip_address(address)) is None


def test_allow_list_takes_hosts_addresses_and_networks():
    allow = FetchAllowList.parse(["127.0.0.1", " 10.0.0.0/8", "[::1]", "Media.Internal.", ""])

    assert allow.allows_host("media.internal")
    assert not allow.allows_host("other.internal")
    assert allow.allows_address(ipaddress.ip_address("10.9.8.7"))
    assert allow.allows_address(ipaddress.ip_address("::ffff:127.0.0.1"))
    assert allow.allows_address(ipaddress.ip_address("::1"))
    assert not allow.allows_address(ipaddress.ip_address("127.0.0.2"))


@pytest.mark.parametrize("entry", ["not a host", "x/y", "10.0.0.0/33", "a..b", "ünïcode"])
def test_allow_list_names_an_entry_it_cannot_read(entry: str):
    with pytest.raises(ValueError, match="is neither a host name nor an address or CIDR"):
        FetchAllowList.parse([entry])


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("file:///etc/passwd", "not file://"),
        ("ftp://example.com/a", "not ftp://"),
        ("gopher://example.com/", "not gopher://"),
        ("example.com/a.mp3", "not no scheme"),
        ("http:///a.mp3", "no host"),
        ("http://example.com:port/", "not a URL"),
    ],
)
def test_check_url_takes_http_and_https_only(url: str, said: str):
    with pytest.raises(ValueError, match=said):
        check_url(url)
    assert check_url("HTTPS://Example.com/a.mp3") == "example.com"


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield server
    finally:
        server.close()


def test_a_connection_goes_to_the_address_checked_with_one_lookup(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
):
    """A rebinding resolver answers loopback (allowed here) first and a private address
    after: the guard asks once and connects where the first answer said."""
    port = listener.getsockname()[1]
    answers = iter(["127.0.0.1", "10.1.2.3"])
    lookups: list[str] = []

    def rebinding(host: str, *args: Any, **kwargs: Any) -> list[Any]:
        lookups.append(host)
        address = next(answers)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    guard = ConnectionGuard(FetchAllowList.parse(["127.0.0.1"]))
    with guard.connect(("rebind.example", port), timeout=5) as sock:
        assert sock.getpeername() == ("127.0.0.1", port)
    assert lookups == ["rebind.example"]


def test_a_name_resolving_anywhere_refused_is_refused(monkeypatch: pytest.MonkeyPatch):
    def public_and_private(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", port)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", public_and_private)
    guard = ConnectionGuard(FetchAllowList())
    with pytest.raises(FetchRefused, match=r"mixed.example \(10.0.0.1\): a private address"):
        guard.connect(("mixed.example", 80), timeout=5)
    assert guard.refused is not None


def test_abort_wakes_a_blocked_read_and_refuses_new_connections(listener: socket.socket):
    guard = ConnectionGuard(FetchAllowList.parse(["127.0.0.1"]))
    port = listener.getsockname()[1]
    sock = guard.connect(("127.0.0.1", port), timeout=30)
    accepted, _ = listener.accept()
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(sock.recv(100)))
    try:
        reader.start()
        guard.abort()
        reader.join(10)
        assert not reader.is_alive(), "the read stayed blocked"
        assert got == [b""]
        with pytest.raises(FetchAborted):
            guard.connect(("127.0.0.1", port), timeout=5)
    finally:
        sock.close()
        accepted.close()
