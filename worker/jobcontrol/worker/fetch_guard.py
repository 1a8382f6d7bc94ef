"""Keeping user-given URLs away from the worker's own network (server-side request forgery).

A job's payload is user input and the worker runs inside the operator's network, so a
URL in a payload must not reach loopback, private, link-local, multicast, reserved or
cloud-metadata addresses unless the operator allowed them (`--fetch-allow`). The check
happens where the connection is made, not on the URL beforehand: `ConnectionGuard.connect`
resolves the host once, refuses if any address it got is refused, and connects to the
address it checked. Redirects, retries and a DNS answer that changes between two lookups
(DNS rebinding) all go through it, since every connection does.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import urllib.parse
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

FETCH_ALLOW_ENV = "JOBCONTROL_FETCH_ALLOW"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SCHEMES = ("http", "https")
# Metadata services that sit on addresses the general rules would not refuse, or that
# deserve their own name in the error: AWS, GCP and Azure (also ECS), Alibaba, Oracle.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "100.100.100.200", "192.0.0.192", "fd00:ec2::254")
)
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")

_AddressInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


class FetchRefused(OSError):
    """A connection the guard would not make; the message says to what and why."""


class FetchAborted(OSError):
    """The guard was aborted (the job was stopped): no more connections."""


class HostNotFound(OSError):
    """The host name does not resolve at all."""


@dataclass(frozen=True, slots=True)
class FetchAllowList:
    """Hosts and networks the operator allows despite the rules: a host name allows that
    name whatever it resolves to; an address or CIDR network allows addresses in it."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> FetchAllowList:
        """Raises ValueError naming the entry that is neither a host name nor a network."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = _host_name(entry)
            if name is None:
                raise ValueError(f"{entry!r} is neither a host name nor an address or CIDR network")
            hosts.add(name)
        return cls(frozenset(hosts), tuple(networks))

    @classmethod
    def from_flags_or_env(
        cls, flags: Iterable[str] | None, env: Mapping[str, str]
    ) -> FetchAllowList:
        """What `--fetch-allow` gave, else `JOBCONTROL_FETCH_ALLOW` (comma-separated): the
        one reading for the worker and the server's in-process worker. Raises ValueError
        naming the bad entry."""
        if flags:
            return cls.parse(flags)
        return cls.parse(env.get(FETCH_ALLOW_ENV, "").split(","))

    def allows_host(self, host: str) -> bool:
        return _normalized(host) in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        candidates = [address]
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            candidates.append(embedded)
        return any(a in network for a in candidates for network in self.networks)

    def __str__(self) -> str:
        entries = sorted(self.hosts) + [str(n) for n in self.networks]
        return ", ".join(entries) or "nothing"


def refusal(address: IPAddress) -> str | None:
    """Why a connection to `address` is refused by default, or None if it is public.
    An IPv6 address that carries an IPv4 one (IPv4-mapped, NAT64, 6to4) is judged by it."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return refusal(embedded)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for refused, kind in (
        (address.is_loopback, "a loopback address"),
        (address.is_unspecified, "the unspecified address"),
        (address.is_link_local, "a link-local address"),
        (address.is_multicast, "a multicast address"),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a public address"),
    ):
        if refused:
            return kind
    return None


def check_url(url: str) -> str:
    """The URL's host, once the URL is http(s) with a host; ValueError otherwise."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError as error:
        raise ValueError(f"not a URL: {error}") from None
    if parts.scheme.lower() not in SCHEMES:
        shown = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ValueError(f"only http and https URLs can be fetched, not {shown}")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    return parts.hostname


class ConnectionGuard:
    """Makes the connections of one fetch: each checked, each abortable.

    `connect` has the signature of `socket.create_connection`, so an HTTP client can use
    it in its place. `refused` keeps the first refusal, so the caller can report it
    whatever the HTTP library wrapped it in; `abort()` (from any thread) shuts every
    open connection down, which wakes a read blocked on a stalled server, and refuses
    new ones.
    """

    def __init__(self, allow: FetchAllowList) -> None:
        self.allow = allow
        self.refused: FetchRefused | None = None
        self.host_not_found: HostNotFound | None = None
        self._aborted = False
        self._lock = threading.Lock()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    @property
    def aborted(self) -> bool:
        return self._aborted

    def abort(self) -> None:
        with self._lock:
            self._aborted = True
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):  # closed already
                sock.shutdown(socket.SHUT_RDWR)

    def connect(
        self,
        address: tuple[str, int],
        timeout: float | None = None,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        host, port = address
        if self._aborted:
            raise FetchAborted("the fetch was stopped")
        candidates = self._resolve(host, port)
        last_error: OSError | None = None
        for family, kind, proto, _, sockaddr in candidates:
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not None and timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                    sock.settimeout(timeout)
                if source_address is not None:
                    sock.bind(source_address)
                with self._lock:
                    if self._aborted:
                        raise FetchAborted("the fetch was stopped")
                    self._sockets.add(sock)
                sock.connect(sockaddr)
                return sock
            except OSError as error:
                sock.close()
                if isinstance(error, FetchAborted):
                    raise
                last_error = error
        assert last_error is not None
        raise last_error

    def _resolve(self, host: str, port: int) -> list[_AddressInfo]:
        """Every address `host` resolves to, all of them allowed, or FetchRefused."""
        try:
            found: list[_AddressInfo] = list(
                socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            )
        except socket.gaierror as error:
            if error.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", None)):
                self.host_not_found = HostNotFound(f"host {host!r} not found")
                raise self.host_not_found from None
            raise
        if not found:
            raise HostNotFound(f"host {host!r} has no addresses")
        if self.allow.allows_host(host):
            return found
        for *_, sockaddr in found:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            reason = refusal(address)
            if reason is not None and not self.allow.allows_address(address):
                shown = host if str(address) == _normalized(host) else f"{host} ({address})"
                refused = FetchRefused(
                    f"refused to connect to {shown}: {reason}; the worker's --fetch-allow "
                    "can allow it"
                )
                if self.refused is None:
                    self.refused = refused
                raise refused
        return found


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _normalized(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _host_name(entry: str) -> str | None:
    name = _normalized(entry)
    labels = name.split(".")
    if not name or len(name) > 253:
        return None
    if all(label and len(label) <= 63 and _is_label(label) for label in labels):
        return name
    return None


def _is_label(label: str) -> bool:
    return label.replace("-", "").replace("_", "").isalnum() and label.isascii()
