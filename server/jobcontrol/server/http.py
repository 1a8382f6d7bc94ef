"""The JobControl service for browsers and curl: the Connect protocol and gRPC-Web over
HTTP/1.1 and HTTP/2 (h2c in plaintext, ALPN h2 with TLS), with `connectrpc` under
Hypercorn, in the server's own event loop. (connectrpc also answers plain gRPC on
HTTP/2 here.) With `--tls-cert` it serves HTTPS with the same certificate, and with
`--tls-client-ca` it requires client certificates, as the gRPC listener does.

Like `registration` for gRPC, this only moves messages and statuses between the wire
and `calls.Calls`: admission, the handlers, the status table and the metrics are the
same for both listeners. The service description is built from the proto descriptor
(connectrpc's code generator is not needed); its codecs read and write the
google.protobuf messages the rest of the server uses, in binary or JSON.

Browsers on other origins are let in only from the origins given (`--http-cors-origin`);
a preflight from any other is refused. `/` serves the live dashboard (`dashboard`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import contextvars
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import hypercorn.asyncio.run
import hypercorn.config
import hypercorn.utils
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import descriptor_pb2, json_format, message_factory
from google.protobuf import message as protobuf_message
from protobuf.wkt import Any as ConnectAny

from jobcontrol.server.auth import DENIED, Tokens
from jobcontrol.server.calls import SERVICE, CallFailed, Calls
from jobcontrol.server.dashboard import Dashboard
from jobcontrol.server.listen import ListenAddress, ListenError
from jobcontrol.server.status import CallError
from jobcontrol.v1 import job_control_pb2 as api

# Hypercorn's own errors only: the server says where it listens itself.
HYPERCORN_LOG = logging.getLogger("jobcontrol.server.hypercorn")
HYPERCORN_LOG.setLevel(logging.WARNING)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # as on the gRPC listener
SHUTDOWN_GRACE_SECONDS = 5.0
# Watch streams a browser may hold open on one HTTP/2 connection (Hypercorn's default
# is 100; a dashboard watches a job per open detail view besides the job list).
MAX_STREAMS_PER_CONNECTION = 1000
# Headers a browser may send cross-origin: Connect's and gRPC-Web's own, and auth.
CORS_ALLOW_HEADERS = (
    "authorization, content-type, connect-protocol-version, connect-timeout-ms, "
    "connect-accept-encoding, connect-content-encoding, grpc-timeout, grpc-accept-encoding, "
    "x-grpc-web, x-user-agent"
)
CORS_EXPOSE_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin, content-encoding"
CORS_MAX_AGE_SECONDS = 7200

_IDEMPOTENCY = {
    descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN: IdempotencyLevel.UNKNOWN,
    descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS: IdempotencyLevel.NO_SIDE_EFFECTS,
    descriptor_pb2.MethodOptions.IDEMPOTENT: IdempotencyLevel.IDEMPOTENT,
}
_CODES = [
    (code, Code[code.name.replace("CANCELLED", "CANCELED")])
    for code in grpc.StatusCode
    if code is not grpc.StatusCode.OK
]
_CONNECT_CODES = {grpc_code.value[0]: connect for grpc_code, connect in _CODES}
_GRPC_CODES = {connect: grpc_code for grpc_code, connect in _CODES}


# ---- codecs --------------------------------------------------------------------------


class _ProtoCodec:
    """Binary protobuf. A request is handed on as bytes, for `Calls` to parse as it does
    gRPC's (with the same INVALID_ARGUMENT for bytes that are not the message); events
    already serialized for every watcher go out as they are."""

    def name(self) -> str:
        return "proto"

    def encode(self, message: protobuf_message.Message | bytes) -> bytes:
        if isinstance(message, bytes):
            return message
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> bytes:
        return bytes(data)


class _JsonCodec:
    """Protobuf's JSON mapping. An unknown field is refused, not ignored: from curl or a
    browser it is a typo (`jobId` and `job_id` are both known)."""

    def name(self) -> str:
        return "json"

    def encode(self, message: protobuf_message.Message | bytes) -> bytes:
        if isinstance(message, bytes):
            # A serialized watch event: WatchJobResponse and WatchJobsResponse are the
            # same single field, so either class reads it.
            message = api.WatchJobResponse.FromString(message)
        return json_format.MessageToJson(message, indent=None).encode()

    def decode(self, data: bytes | bytearray, message_class: type[Any]) -> Any:
        message = message_class()
        try:
            json_format.Parse(bytes(data) or b"{}", message)
        except json_format.ParseError as error:
            raise ConnectError(
                Code.INVALID_ARGUMENT,
                f"the request is not valid JSON for {message.DESCRIPTOR.full_name}: {error}",
            ) from None
        return message


# ---- the service ---------------------------------------------------------------------


def _connect_error(failed: CallFailed) -> ConnectError:
    status = failed.status
    return ConnectError(
        _CONNECT_CODES[status.code],
        status.message,
        [ErrorDetail(ConnectAny(type_url=d.type_url, value=d.value)) for d in status.details],
    )


@dataclass(slots=True)
class _UnaryCall:
    """A unary call taken into `Calls.unary` before connectrpc reads its body: admitted,
    holding a read slot, waiting for the request."""

    request: asyncio.Future[Any]
    outcome: asyncio.Task[Any]


_CALL: contextvars.ContextVar[_UnaryCall | None] = contextvars.ContextVar(
    "jobcontrol_http_call", default=None
)


class _Admit:
    """Starts each unary call in `Calls.unary` before its body is read (a leading
    metadata interceptor, which connectrpc runs first): a call past a load limit is
    refused without reading its body, and bodies are read under the same gate as gRPC
    requests (a few at once, each within a time limit)."""

    def __init__(self, calls: Calls) -> None:
        self._calls = calls

    async def on_start(self, ctx: RequestContext[Any, Any]) -> None:
        if ctx.method.stream_type is not StreamType.UNARY:
            _CALL.set(None)
            return
        loop = asyncio.get_running_loop()
        request: asyncio.Future[Any] = loop.create_future()
        reading: asyncio.Future[None] = loop.create_future()

        async def receive() -> Any:
            reading.set_result(None)
            return await request

        outcome = asyncio.create_task(self._calls.unary(ctx.method.name, receive))
        try:
            await asyncio.wait((outcome, reading), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # cancelled (the client went away) while waiting to read
            outcome.cancel()
            raise
        if outcome.done():  # refused
            await _outcome(outcome)
        _CALL.set(_UnaryCall(request, outcome))

    async def on_end(
        self, token: None, ctx: RequestContext[Any, Any], error: Exception | None, /
    ) -> None:
        call = _CALL.get()
        if call is None:
            return
        if call.outcome.done():
            if not call.outcome.cancelled():
                call.outcome.exception()  # seen: sent, or ended before its body came
            return
        # The request never reached the handler: its body could not be read or decoded
        # (the call ends with that error, counted as such), or the client went away.
        if isinstance(error, ConnectError):
            call.request.set_exception(CallError(_GRPC_CODES[error.code], error.message))
        else:
            call.outcome.cancel()
        with contextlib.suppress(asyncio.CancelledError, CallFailed):
            await call.outcome


async def _outcome(outcome: asyncio.Task[Any]) -> Any:
    try:
        return await outcome
    except CallFailed as failed:
        raise _connect_error(failed) from None


def _unary(calls: Calls, name: str) -> Callable[[Any, RequestContext[Any, Any]], Awaitable[Any]]:
    async def handle(request: Any, ctx: RequestContext[Any, Any]) -> Any:
        call = _CALL.get()
        assert call is not None, "_Admit runs before every unary call"
        call.request.set_result(request)
        return await _outcome(call.outcome)

    return handle


def _streaming(
    calls: Calls, name: str
) -> Callable[[Any, RequestContext[Any, Any]], AsyncIterator[Any]]:
    async def handle(request: Any, ctx: RequestContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async with contextlib.aclosing(calls.stream(name, request)) as responses:
                async for response in responses:
                    yield response
        except CallFailed as failed:
            raise _connect_error(failed) from None

    return handle


def endpoints(calls: Calls) -> dict[str, Any]:
    """Every JobControl method at `/jobcontrol.v1.JobControl/<Method>`, from the proto
    descriptor. (The values are connectrpc's endpoint classes, which it does not export.)"""
    found: dict[str, Any] = {}
    for method in SERVICE.methods:
        info: MethodInfo[Any, Any] = MethodInfo(
            name=method.name,
            service_name=SERVICE.full_name,
            input=message_factory.GetMessageClass(method.input_type),
            output=message_factory.GetMessageClass(method.output_type),
            idempotency_level=_IDEMPOTENCY[method.GetOptions().idempotency_level],
            stream_type=StreamType.SERVER_STREAM if method.server_streaming else StreamType.UNARY,
        )
        path = f"/{SERVICE.full_name}/{method.name}"
        if method.server_streaming:
            found[path] = Endpoint.server_stream(info, _streaming(calls, method.name))
        else:
            found[path] = Endpoint.unary(info, _unary(calls, method.name))
    return found


class _BearerToken:
    """Checks the token before the request body is read (a leading metadata
    interceptor), as the gRPC listener's interceptor does."""

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens

    async def on_start(self, ctx: RequestContext[Any, Any]) -> None:
        if not self._tokens.accept(ctx.request_headers.get("authorization")):
            self._tokens.on_denied(ctx.method.name)
            raise ConnectError(Code.UNAUTHENTICATED, DENIED)

    async def on_end(
        self, token: None, ctx: RequestContext[Any, Any], error: Exception | None, /
    ) -> None:
        return None


class JobControlApp(ConnectASGIApplication[Calls]):
    def __init__(self, calls: Calls, tokens: Tokens | None) -> None:
        super().__init__(
            service=calls,
            endpoints=endpoints,
            # Both before the body is read: the token first, then admission.
            interceptors=[*([_BearerToken(tokens)] if tokens else []), _Admit(calls)],
            read_max_bytes=MAX_MESSAGE_BYTES,
            codecs=[_ProtoCodec(), _JsonCodec()],
        )

    @property
    def path(self) -> str:
        return f"/{SERVICE.full_name}"


# ---- CORS ----------------------------------------------------------------------------

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class Cors:
    """Lets pages from `origins` call the API: answers their preflights and marks the
    responses they may read. A preflight from any other origin gets 403, and its
    responses no CORS headers, so the browser keeps them from the page."""

    def __init__(self, app: App, origins: Iterable[str]) -> None:
        self._app = app
        self._origins = frozenset(origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v for k, v in scope["headers"]}
        origin = headers.get("origin", b"").decode("latin-1")
        allowed = origin in self._origins
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in (
            k.lower() for k, _ in scope["headers"]
        ):
            await self._preflight(send, origin if allowed else None)
            return
        if not allowed:
            await self._app(scope, receive, send)
            return

        async def send_with_cors(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [
                        *message.get("headers", []),
                        (b"access-control-allow-origin", origin.encode("latin-1")),
                        (b"access-control-expose-headers", CORS_EXPOSE_HEADERS.encode()),
                        (b"vary", b"Origin"),
                    ],
                }
            await send(message)

        await self._app(scope, receive, send_with_cors)

    async def _preflight(self, send: Send, origin: str | None) -> None:
        headers: list[tuple[bytes, bytes]] = [(b"vary", b"Origin"), (b"content-length", b"0")]
        if origin is not None:
            headers += [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", b"POST, GET"),
                (b"access-control-allow-headers", CORS_ALLOW_HEADERS.encode()),
                (b"access-control-max-age", str(CORS_MAX_AGE_SECONDS).encode()),
            ]
        await send(
            {
                "type": "http.response.start",
                "status": 204 if origin is not None else 403,
                "headers": headers,
            }
        )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


# ---- gRPC-Web's text mode --------------------------------------------------------------

GRPC_WEB_TEXT = "application/grpc-web-text"


class GrpcWebText:
    """gRPC-Web's base64 "text" mode (`application/grpc-web-text`), which connectrpc does
    not speak and Google's grpc-web client needs for server streams: the request is
    decoded to the binary mode for the app, and each chunk of the response encoded on
    its way out, padded on its own (the mode's readers decode 4 characters at a time,
    so a stream's messages go out as they come instead of waiting for the next)."""

    def __init__(self, app: App) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = _header(scope, b"content-type") if scope["type"] == "http" else b""
        if not content_type.startswith(GRPC_WEB_TEXT.encode()):
            await self._app(scope, receive, send)
            return
        codec = content_type[len(GRPC_WEB_TEXT) :] or b"+proto"
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name.lower() not in (b"content-type", b"content-length")
        ]
        binary_scope = {
            **scope,
            "headers": [*headers, (b"content-type", b"application/grpc-web" + codec)],
        }
        text = bytearray()

        async def receive_binary() -> Any:
            """The whole request, decoded (one message: a few bytes of JSON or protobuf
            for these methods)."""
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                text.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    try:
                        body = base64.b64decode(bytes(text).translate(None, b" \r\n\t"))
                    except binascii.Error as error:
                        raise ConnectError(
                            Code.INVALID_ARGUMENT, f"the request is not valid base64: {error}"
                        ) from None
                    return {"type": "http.request", "body": body, "more_body": False}

        async def send_text(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": [
                        (name, GRPC_WEB_TEXT.encode() + codec)
                        if name.lower() == b"content-type"
                        else (name, value)
                        for name, value in message.get("headers", [])
                        if name.lower() != b"content-length"
                    ],
                }
            elif message["type"] == "http.response.body" and message.get("body"):
                message = {**message, "body": base64.b64encode(message["body"])}
            await send(message)

        await self._app(binary_scope, receive_binary, send_text)


def _header(scope: Scope, name: bytes) -> bytes:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).lower()
    return b""


_STREAMS = frozenset(
    f"/{SERVICE.full_name}/{method.name}" for method in SERVICE.methods if method.server_streaming
)


class PlainRefusals:
    """Two requests that connectrpc refuses without saying why (or with a traceback in
    the log) get a 415 that says what to send instead: gRPC itself over HTTP/1.1 (it
    needs HTTP/2's trailers), and a server stream called with a unary content type
    (as `curl -H 'Content-Type: application/json'` does)."""

    def __init__(self, app: App) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            reason = _refusal(scope)
            if reason is not None:
                await send(
                    {
                        "type": "http.response.start",
                        "status": 415,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                    }
                )
                await send({"type": "http.response.body", "body": reason.encode() + b"\n"})
                return
        await self._app(scope, receive, send)


def _refusal(scope: Scope) -> str | None:
    content_type = _header(scope, b"content-type").partition(b";")[0].strip()
    if (
        content_type.startswith(b"application/grpc")
        and not content_type.startswith(b"application/grpc-web")
        and scope.get("http_version") not in ("2", "3")
    ):
        return "gRPC needs HTTP/2; over HTTP/1.1 use gRPC-Web or Connect"
    if scope["path"] in _STREAMS and content_type in (b"application/json", b"application/proto"):
        kind = content_type.removeprefix(b"application/").decode()
        return (
            f"{scope['path'].rsplit('/', 1)[-1]} is a server stream: send Content-Type "
            f"application/connect+{kind}, the request in a Connect envelope (a flags byte 0, "
            "its length in 4 bytes big-endian, then the message)"
        )
    return None


# ---- the listener --------------------------------------------------------------------


class TlsFiles(Protocol):
    """The gRPC listener's `app.TlsConfig`."""

    @property
    def cert(self) -> Path: ...
    @property
    def key(self) -> Path: ...
    @property
    def client_ca(self) -> Path | None: ...


class HttpListener:
    """Hypercorn serving `app` on a socket bound at construction (so a taken port is
    refused before the store is opened), in the running event loop. It runs Hypercorn's
    `worker_serve`, which its public `serve` wraps, to hand it that socket."""

    def __init__(self, address: ListenAddress) -> None:
        self.address = address
        self._socket = _bind(address)
        self.port: int = self._socket.getsockname()[1]
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, app: App, tls: TlsFiles | None = None) -> None:
        """`tls`: serve HTTPS (HTTP/2 by ALPN) with the gRPC listener's certificate, and
        require client certificates when it does."""
        config = hypercorn.config.Config()
        config.errorlog = HYPERCORN_LOG
        config.accesslog = None
        config.graceful_timeout = SHUTDOWN_GRACE_SECONDS
        config.h2_max_concurrent_streams = MAX_STREAMS_PER_CONNECTION
        if tls is not None:
            config.certfile, config.keyfile = str(tls.cert), str(tls.key)
            if tls.client_ca is not None:
                config.ca_certs = str(tls.client_ca)
                config.verify_mode = ssl.CERT_REQUIRED
            sockets = hypercorn.config.Sockets([self._socket], [], [])
        else:
            sockets = hypercorn.config.Sockets([], [self._socket], [])
        wrapped = hypercorn.utils.wrap_app(app, config.wsgi_max_body_size, "asgi")
        self._task = asyncio.create_task(
            hypercorn.asyncio.run.worker_serve(
                wrapped, config, sockets=sockets, shutdown_trigger=self._stop.wait
            ),
            name="http-listener",
        )
        self._task.add_done_callback(_report_failure)

    async def stop(self) -> None:
        """Stops taking connections; calls in flight get SHUTDOWN_GRACE_SECONDS."""
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)  # failures: reported
        self.close()

    def close(self) -> None:
        self._socket.close()


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        HYPERCORN_LOG.error("the HTTP listener stopped", exc_info=task.exception())


def _bind(address: ListenAddress) -> socket.socket:
    try:
        address.check_free()
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            address.host or None, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (ListenError, OSError) as error:
        raise ListenError(f"--http-listen: {error}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # No Nagle delay for the small messages of watch streams (as Hypercorn sets on
        # the sockets it binds itself); accepted connections inherit it.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(sockaddr)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError as error:
        sock.close()
        raise ListenError(f"--http-listen: cannot listen on {address}: {error}") from None
    return sock


def http_app(calls: Calls, tokens: Tokens | None, cors_origins: Sequence[str]) -> App:
    app: App = JobControlApp(calls, tokens)
    return Cors(Dashboard(PlainRefusals(GrpcWebText(app))), cors_origins)
