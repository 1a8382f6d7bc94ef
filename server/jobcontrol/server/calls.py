"""The one layer every JobControl call passes through, whichever listener it came in
on: admission (`admission`), parsing, the service's handler, the status it ends with
(`status`), and its metrics, each recorded exactly once.

The protocol adapters (`registration` for gRPC, `http` for Connect and gRPC-Web) only
move messages and statuses between the wire and here; a call that does not succeed
raises `CallFailed` with the google.rpc.Status to send. The service's handlers take a
request message and return (or yield) responses: they do not know which protocol
called them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import message as protobuf_message
from google.protobuf import message_factory
from google.rpc import status_pb2

from jobcontrol.server.admission import Admission
from jobcontrol.server.metrics import Metrics
from jobcontrol.server.status import CallError, failure_status, grpc_code
from jobcontrol.v1 import job_control_pb2

SERVICE = job_control_pb2.DESCRIPTOR.services_by_name["JobControl"]
REQUEST_TYPES: dict[str, type[protobuf_message.Message]] = {
    method.name: message_factory.GetMessageClass(method.input_type) for method in SERVICE.methods
}

# What a protocol adapter hands over: the request's bytes, or the message its library
# has already parsed. Awaited inside the read gate of `Admission.reading`.
Receive = Callable[[], Awaitable[bytes | protobuf_message.Message]]


class CallFailed(Exception):
    """The call ends with `status` (never OK)."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status

    @property
    def code(self) -> grpc.StatusCode:
        return grpc_code(self.status)


class Calls:
    def __init__(self, service: Any, metrics: Metrics, admission: Admission) -> None:
        self._service = service
        self._metrics = metrics
        self._admission = admission

    async def unary(self, name: str, receive: Receive) -> Any:
        """The response of unary method `name`; raises CallFailed."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return await self._unary(name, receive)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:
            status = failure_status(name, error)
            code = grpc_code(status)
        finally:
            self._metrics.observe_rpc(name, code, time.perf_counter() - started)
        # Raised here, not in the handler: the error's traceback holds every frame of
        # the call, the request included, and must not live on as this one's context.
        raise CallFailed(status)

    async def _unary(self, name: str, receive: Receive) -> Any:
        admission = self._admission
        admission.enter_unary(name)
        try:
            async with admission.reading(name):
                received = await receive()
            size = _size(received)
            admission.take_bytes(name, size)
            try:
                return await getattr(self._service, name)(_parse(name, received))
            finally:
                admission.release_bytes(size)
        finally:
            admission.leave_unary()

    async def stream(
        self, name: str, received: bytes | protobuf_message.Message
    ) -> AsyncGenerator[Any, None]:
        """The responses of server-streaming method `name` (messages, or events already
        serialized once for every watcher); raises CallFailed."""
        admission = self._admission
        metrics = self._metrics
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            admission.enter_stream(name)
            metrics.open_streams.labels(name).inc()
            try:
                # Closed here, not by the garbage collector, when the client goes away:
                # the handler's own cleanup (its hub subscription) runs at once.
                handler = getattr(self._service, name)
                async with contextlib.aclosing(handler(_parse(name, received))) as responses:
                    async for response in responses:
                        yield response
            finally:
                metrics.open_streams.labels(name).dec()
                admission.leave_stream()
        except (asyncio.CancelledError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:
            status = failure_status(name, error)
            code = grpc_code(status)
        finally:
            metrics.observe_rpc(name, code, time.perf_counter() - started)
        if code is not grpc.StatusCode.OK:
            raise CallFailed(status)


def _size(received: bytes | protobuf_message.Message) -> int:
    return len(received) if isinstance(received, bytes) else received.ByteSize()


def _parse(name: str, received: bytes | protobuf_message.Message) -> Any:
    """The request message; bytes that are not one are the client's error
    (INVALID_ARGUMENT naming the type expected), not the server's."""
    if not isinstance(received, bytes):
        return received
    request_type = REQUEST_TYPES[name]
    try:
        return request_type.FromString(received)
    except protobuf_message.DecodeError as error:
        raise CallError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"the request is not a valid {request_type.DESCRIPTOR.full_name}: {error}",
        ) from None
