"""What both client flavours share: their options, the stub over their channel, and how
each call is sent (deadline, token, retries), described once in `calls` and `watching`."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from jobcontrol.client.backoff import Attempts, Backoff
from jobcontrol.client.calls import UnaryCall
from jobcontrol.client.options import (
    DEFAULT_ADDRESS,
    DEFAULT_TIMEOUT,
    DEFAULT_WATCH_RECONNECT_TIMEOUT,
    ClientOptions,
    TlsOptions,
)
from jobcontrol.client.watching import FeedResumption, WatchResumption
from jobcontrol.store import JobFilter
from jobcontrol.v1 import job_control_pb2_grpc

ChannelT = TypeVar("ChannelT")


class BaseClient(Generic[ChannelT]):
    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        token: str | None = None,
        tls: TlsOptions | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: Backoff | None = None,
        watch_reconnect_timeout: float = DEFAULT_WATCH_RECONNECT_TIMEOUT,
    ) -> None:
        """`address` is host:port. `token` is sent as `authorization: Bearer <token>`;
        `tls` switches from plaintext to TLS. `timeout` is the deadline of each attempt
        of a unary call; `retry` paces retries on UNAVAILABLE (of calls safe to repeat)
        and watch reconnects; a broken watch gives up after `watch_reconnect_timeout`
        seconds without getting through."""
        self.options = ClientOptions(
            address=address,
            token=token,
            tls=tls,
            timeout=timeout,
            retry=retry or Backoff(),
            watch_reconnect_timeout=watch_reconnect_timeout,
        )
        self._channel = self._open_channel(self.options)
        # The generated stub is untyped; calls go through `calls.UnaryCall`, which is typed.
        self._stub: Any = job_control_pb2_grpc.JobControlStub(self._channel)  # type: ignore[no-untyped-call]

    def _open_channel(self, options: ClientOptions) -> ChannelT:
        raise NotImplementedError

    def _attempts(self, call: UnaryCall[Any]) -> Attempts:
        return Attempts(self.options.retry, method=call.method, safe=call.safe, job_id=call.job_id)

    def _send(self, call: UnaryCall[Any]) -> Any:
        """Start one attempt of `call`: a response (sync) or an awaitable one (asyncio)."""
        return getattr(self._stub, call.method)(
            call.request, timeout=self.options.timeout, metadata=self.options.metadata
        )

    def _open_watch(self, state: WatchResumption) -> Any:
        return getattr(self._stub, state.method)(state.request(), metadata=self.options.metadata)

    def _resumption(self, job_id: str, after_sequence: int | None) -> WatchResumption:
        return WatchResumption(
            job_id,
            after_sequence=after_sequence,
            backoff=self.options.retry,
            reconnect_timeout=self.options.watch_reconnect_timeout,
        )

    def _feed(self, job_filter: JobFilter, after_sequence: int | None) -> FeedResumption:
        return FeedResumption(
            job_filter,
            after_sequence=after_sequence,
            backoff=self.options.retry,
            reconnect_timeout=self.options.watch_reconnect_timeout,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options.address!r})"
