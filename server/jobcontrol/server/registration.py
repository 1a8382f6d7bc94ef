"""The JobControl service on grpc.aio: moves requests, responses and statuses between
gRPC and `calls.Calls`, which does everything else.

grpcio turns an exception in a request deserializer into UNKNOWN. Requests here arrive
as bytes and are parsed in `Calls` instead, so bytes that are not a valid message
(corrupt wire format, nesting past protobuf's limit) get INVALID_ARGUMENT with a
message saying which message type was expected.

Streaming handlers may yield bytes already serialized (an event encoded once for every
watcher); their serializer sends those as they are.

Unary methods are registered as client-streaming ones (the same on the wire: one
request message), because grpcio reads a unary request whole before the handler runs;
this way a call is admitted before its request is read, and only a few requests are
read at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import message_factory
from grpc_status import rpc_status

from jobcontrol.server.calls import SERVICE, CallFailed, Calls
from jobcontrol.server.status import CallError, end_call

Context = grpc.aio.ServicerContext[Any, Any]


def register(server: grpc.aio.Server, calls: Calls) -> None:
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _streaming(calls, method.name),
                response_serializer=_serialize_unless_bytes,
            )
        else:
            response_type = message_factory.GetMessageClass(method.output_type)
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                _unary(calls, method.name),
                response_serializer=response_type.SerializeToString,
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )


def _serialize_unless_bytes(response: protobuf_message.Message | bytes) -> bytes:
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


def _fail(context: Context, failed: CallFailed) -> None:
    status = rpc_status.to_status(failed.status)
    end_call(context, status.code, status.details, status.trailing_metadata)


def _unary(calls: Calls, name: str) -> Callable[[AsyncIterator[bytes], Context], Awaitable[Any]]:
    async def handle(requests: AsyncIterator[bytes], context: Context) -> Any:
        try:
            return await calls.unary(name, lambda: _one_message(requests, name))
        except CallFailed as failed:
            _fail(context, failed)
            return None

    return handle


async def _one_message(requests: AsyncIterator[bytes], name: str) -> bytes:
    """The call's one request message.

    It reads on to the end of the request stream, which a unary client has already
    closed: grpcio's reader otherwise keeps the last message in a suspended generator,
    in a reference cycle that outlives the call until the next full garbage collection.
    """
    raw = await anext(requests, None)
    extra = None if raw is None else await anext(requests, None)
    if raw is None or extra is not None:
        raise CallError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name} takes exactly one request message, got "
            f"{'none' if raw is None else 'more than one'}",
        )
    return raw


def _streaming(calls: Calls, name: str) -> Callable[[bytes, Context], AsyncIterator[Any]]:
    async def handle(raw: bytes, context: Context) -> AsyncIterator[Any]:
        try:
            async with contextlib.aclosing(calls.stream(name, raw)) as responses:
                async for response in responses:
                    yield response
        except CallFailed as failed:
            _fail(context, failed)

    return handle
