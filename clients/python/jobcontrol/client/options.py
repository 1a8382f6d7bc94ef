"""How a client reaches the server: address, credentials, deadlines and retry budgets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jobcontrol.client.backoff import Backoff

DEFAULT_ADDRESS = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0
DEFAULT_WATCH_RECONNECT_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """TLS to the server. Without `root_certificates` the system's CA bundle is used;
    a client certificate and key (both or neither) are for servers that require mTLS."""

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.certificate_chain is None) != (self.private_key is None):
            raise ValueError("a client certificate and its private key go together")

    @classmethod
    def from_files(
        cls,
        *,
        ca: str | Path | None = None,
        cert: str | Path | None = None,
        key: str | Path | None = None,
    ) -> TlsOptions:
        """PEM files, read once now, so a missing file fails here and not on first use."""

        def read(path: str | Path | None) -> bytes | None:
            return Path(path).read_bytes() if path is not None else None

        return cls(root_certificates=read(ca), certificate_chain=read(cert), private_key=read(key))


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Everything both client flavours are configured with.

    `timeout` is the deadline of each attempt of a unary call (None: no deadline); a
    watch has none, as it lasts as long as the job. `retry` governs UNAVAILABLE retries
    of calls that are safe to repeat, and the pace of watch reconnects;
    `watch_reconnect_timeout` is how long a watch keeps reconnecting after its stream
    broke before it gives up with `Unavailable`.
    """

    address: str = DEFAULT_ADDRESS
    token: str | None = field(default=None, repr=False)
    tls: TlsOptions | None = None
    timeout: float | None = DEFAULT_TIMEOUT
    retry: Backoff = field(default_factory=Backoff)
    watch_reconnect_timeout: float = DEFAULT_WATCH_RECONNECT_TIMEOUT

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Sent with every call. The token goes as metadata rather than call credentials
        because gRPC only attaches call credentials to TLS channels, and a token on a
        plaintext loopback channel is a supported setup."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()
