"""Bearer-token authentication for every RPC except health checks, on the gRPC
listener (an interceptor) and the HTTP one (`http`) alike.

Tokens come from `JOBCONTROL_AUTH_TOKEN` and/or a tokens file (one per line), never
from a flag, so they do not show in process listings. Comparison is constant-time and
checks every configured token, so timing reveals neither a token nor how many exist.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"

MethodHandler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


def load_tokens(env_token: str | None, tokens_file: str | None) -> list[str]:
    tokens = [env_token.strip()] if env_token and env_token.strip() else []
    if tokens_file:
        for line in Path(tokens_file).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                tokens.append(line)
    return tokens


DENIED = "missing or invalid token: send header 'authorization: Bearer <token>'"


class Tokens:
    """The accepted tokens; `on_denied` gets the method of each call refused."""

    def __init__(self, tokens: Sequence[str], on_denied: Callable[[str], None]) -> None:
        if not tokens:
            raise ValueError("at least one token is required")
        self._tokens = [t.encode() for t in tokens]
        self.on_denied = on_denied

    def accept(self, header: str | bytes | None) -> bool:
        """Whether an `authorization` header value carries one of the tokens."""
        header = header.encode() if isinstance(header, str) else header or b""
        scheme, _, presented = header.partition(b" ")
        if scheme.lower() != b"bearer":
            presented = b""
        ok = False
        for token in self._tokens:
            ok |= hmac.compare_digest(presented.strip(), token)
        return ok


class BearerTokenAuth(grpc.aio.ServerInterceptor):
    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens
        self._on_denied = tokens.on_denied

    def _authorized(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> bool:
        header: str | bytes | None = None
        for key, value in metadata or ():
            if key.lower() == "authorization":
                header = value
                break
        return self._tokens.accept(header)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[MethodHandler | None]],
        details: grpc.HandlerCallDetails,
    ) -> MethodHandler | None:
        method: str = details.method
        if method.startswith(HEALTH_PREFIX) or self._authorized(details.invocation_metadata):
            return await continuation(details)
        handler = await continuation(details)
        self._on_denied(method.rsplit("/", 1)[-1])
        if handler is None:  # unknown method: do not reveal that it does not exist
            return grpc.unary_unary_rpc_method_handler(_deny)
        return _denying(handler)


async def _deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, DENIED)


def _denying(handler: MethodHandler) -> MethodHandler:
    """A handler of the same shape as `handler` that refuses the call."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(_deny, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(_deny, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(_deny, **codec)
    return grpc.unary_unary_rpc_method_handler(_deny, **codec)
