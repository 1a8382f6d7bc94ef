"""Listen addresses: parsed and checked before anything else starts.

gRPC accepts `127.0.0.1:99999` (it binds 99999 mod 65536) and reports a taken port
with a C-core log line on stderr. Parsing the address ourselves and test-binding it
with a plain socket turns both into one clear line, before the database is touched.
"""

from __future__ import annotations

import errno
import re
import socket
from dataclasses import dataclass

MAX_PORT = 65_535
_ADDRESS = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.%\w]+)\]|(?P<host>[^\s:\[\]/]*)):(?P<port>\d{1,9})"
)


class ListenError(Exception):
    """An address this process cannot listen on; the message is one line for stderr."""


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str  # without brackets; "" means every interface
    port: int  # 0 picks a free port

    @classmethod
    def parse(cls, text: str, *, flag: str = "--listen") -> ListenAddress:
        """`HOST:PORT` or `[IPV6]:PORT`, port 0 to 65535."""
        found = _ADDRESS.fullmatch(text.strip())
        if not found:
            raise ListenError(
                f"{flag} {text!r} is not HOST:PORT (e.g. 127.0.0.1:50051, 0.0.0.0:50051, "
                "[::]:50051)"
            )
        port = int(found.group("port"))
        if port > MAX_PORT:
            raise ListenError(
                f"{flag} {text!r}: port {port} is out of range (0 to {MAX_PORT}; "
                "0 picks a free one)"
            )
        return cls(found.group("ipv6") or found.group("host") or "", port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def with_port(self, port: int) -> ListenAddress:
        return ListenAddress(self.host, port)

    def check_free(self) -> None:
        """Bind and release the address with a plain socket, as gRPC will bind it
        (SO_REUSEADDR, no SO_REUSEPORT), so a taken port or a host that is not on this
        machine is refused here, in one line, rather than by gRPC's core."""
        if self.port == 0:
            return
        try:
            infos = socket.getaddrinfo(
                self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
        except socket.gaierror as error:
            raise ListenError(f"cannot listen on {self}: unknown host ({error.strerror})") from None
        family, kind, proto, _, sockaddr = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(sockaddr)
            except OSError as error:
                reason = {
                    errno.EADDRINUSE: "the port is already in use (is another server running?)",
                    errno.EADDRNOTAVAIL: "the address is not one of this machine's",
                    errno.EACCES: "permission denied (ports below 1024 need privileges)",
                }.get(error.errno or 0, error.strerror or str(error))
                raise ListenError(f"cannot listen on {self}: {reason}") from None
