"""Registers the JobControl service so that a malformed request is a client error.

grpcio turns an exception in a request deserializer into UNKNOWN. Requests here arrive
as bytes and are parsed inside the handler instead, so bytes that are not a valid
message (corrupt wire format, nesting past protobuf's limit) get INVALID_ARGUMENT with a
message saying which message type was expected.

Streaming handlers may yield bytes already serialized (an event encoded once for every
watcher); their serializer sends those as they are.

Each call is admitted here first (`admission`): past a load limit it ends with
RESOURCE_EXHAUSTED before its request is parsed. Unary methods are registered as
client-streaming ones (the same on the wire: one request message), because grpcio reads
a unary request whole before the handler runs; this way a call is admitted before its
request is read, and only a few requests are read at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import message_factory

from jobcontrol.server.admission import Admission, LoadLimits, Refused
from jobcontrol.server.metrics import Metrics
from jobcontrol.server.status import end_call
from jobcontrol.v1 import job_control_pb2

SERVICE = job_control_pb2.DESCRIPTOR.services_by_name["JobControl"]

Context = grpc.aio.ServicerContext[Any, Any]


def register(
    server: grpc.aio.Server, servicer: Any, metrics: Metrics, admission: Admission | None = None
) -> None:
    """Add the service; `admission` defaults to the default load limits."""
    admission = admission or Admission(LoadLimits(), metrics)
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _streaming(behaviour, request_type, metrics, admission, method.name),
                response_serializer=_serialize_unless_bytes,
            )
        else:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                _unary(behaviour, request_type, metrics, admission, method.name),
                response_serializer=response_type.SerializeToString,
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )


def _serialize_unless_bytes(response: protobuf_message.Message | bytes) -> bytes:
    if isinstance(response, bytes):
        return response
    return response.SerializeToString()


def _parse(
    raw: bytes,
    request_type: type[protobuf_message.Message],
    context: Context,
    metrics: Metrics,
    name: str,
) -> Any:
    """The request, or None with the call's status set to INVALID_ARGUMENT."""
    try:
        return request_type.FromString(raw)
    except protobuf_message.DecodeError as error:
        metrics.observe_rpc(name, grpc.StatusCode.INVALID_ARGUMENT, 0.0)
        end_call(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {request_type.DESCRIPTOR.full_name}: {error}",
        )
        return None


def _unary(
    behaviour: Callable[[Any, Context], Awaitable[Any]],
    request_type: type[protobuf_message.Message],
    metrics: Metrics,
    admission: Admission,
    name: str,
) -> Callable[[AsyncIterator[bytes], Context], Awaitable[Any]]:
    async def handle(requests: AsyncIterator[bytes], context: Context) -> Any:
        try:
            admission.enter_unary(name)
        except Refused as refused:
            end_call(context, refused.code, str(refused))
            return None
        try:
            raw = await _read(requests, context, metrics, admission, name)
            if raw is None:
                return None
            try:
                request = _parse(raw, request_type, context, metrics, name)
                return None if request is None else await behaviour(request, context)
            finally:
                admission.release_bytes(len(raw))
        finally:
            admission.leave_unary()

    return handle


async def _read(
    requests: AsyncIterator[bytes],
    context: Context,
    metrics: Metrics,
    admission: Admission,
    name: str,
) -> bytes | None:
    """The call's one request message, counted in the bytes in flight; None with the
    call's status set if it cannot be taken.

    It reads on to the end of the request stream, which a unary client has already
    closed: grpcio's reader otherwise keeps the last message in a suspended generator,
    in a reference cycle that outlives the call until the next full garbage collection.
    """
    try:
        async with admission.reading(name):
            raw = await anext(requests, None)
            extra = None if raw is None else await anext(requests, None)
        if raw is not None and extra is None:
            admission.take_bytes(name, len(raw))
    except Refused as refused:
        end_call(context, refused.code, str(refused))
        return None
    if raw is None or extra is not None:
        metrics.observe_rpc(name, grpc.StatusCode.INVALID_ARGUMENT, 0.0)
        end_call(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{name} takes exactly one request message, got "
            f"{'none' if raw is None else 'more than one'}",
        )
        return None
    return raw


def _streaming(
    behaviour: Callable[[Any, Context], AsyncIterator[Any]],
    request_type: type[protobuf_message.Message],
    metrics: Metrics,
    admission: Admission,
    name: str,
) -> Callable[[bytes, Context], AsyncIterator[Any]]:
    async def handle(raw: bytes, context: Context) -> AsyncIterator[Any]:
        try:
            admission.enter_stream(name)
        except Refused as refused:
            end_call(context, refused.code, str(refused))
            return
        try:
            request = _parse(raw, request_type, context, metrics, name)
            if request is not None:
                async for response in behaviour(request, context):
                    yield response
        finally:
            admission.leave_stream()

    return handle
